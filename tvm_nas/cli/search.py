"""``tvm-nas search`` and ``tvm-nas train``: arguments, and runners that import torch only when they run."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..config import DEVICES, PRECISIONS, SearchConfig, budget_us_from_ms
from ..console import fmt_us
from ..errors import TvmNasError
from ..io import DEFAULT_LOGS_DIR

_FIELDS = SearchConfig.model_fields
DATA_HELP = "builtin | imagefolder:PATH | cifar10:PATH (default builtin)"


def add_search_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tvm-nas search``."""
    p = parser
    p.add_argument("--space", help="search space name or YAML path (required unless --resume)")
    p.add_argument("--target", help="target name or YAML path (required unless --resume)")
    p.add_argument("--data", default="builtin", help=DATA_HELP)
    p.add_argument("--latency-ms", type=float, help="latency budget T in ms (required unless --resume)")
    p.add_argument("--logs-dir", default=str(DEFAULT_LOGS_DIR), help="latency tables' root (default %(default)s)")
    p.add_argument("--table", help="latency table path (default: <logs-dir>/<target>/<space>.latency.json)")
    p.add_argument("--out", help="run directory (default runs/search-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out with its own config")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (default: torch's choice)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="weight steps under autocast (bf16: CPU or CUDA, fp16: CUDA); α and the latency loss stay "
                        "fp32 (default fp32)")
    add_runtime_args(p)
    p.add_argument("--global-batchnorm", action="store_true",
                   help="several processes: BatchNorm statistics over the whole global batch, as one process computes "
                        "them (default: each process's share, as DDP does; faster)")
    p.add_argument("--no-enforce-budget", action="store_true",
                   help="derive the pure argmax net even if it is over budget")
    p.add_argument("--no-fill-budget", action="store_true",
                   help="keep the most probable net (fitted to the budget) even where it leaves much of the budget "
                        "unused (default: spend it on slower ops where α minds least)")
    p.add_argument("--measure-budget", action="store_true",
                   help="choose the net by its measured latency on --target (compiled with its tuning database "
                        "under --logs-dir, timed here or through its RPC runner): of the nets derived at the budget "
                        "less and plus --budget-margin, the slowest whose measured median meets the budget "
                        "(tvm-nas run does this by default)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    for name in ("epochs", "warmup_epochs", "batch_size", "seed", "val_fraction", "max_samples", "weight_lr",
                 "momentum", "weight_decay", "label_smoothing", "arch_update", "arch_lr", "arch_every",
                 "arch_steps", "loss", "mul_a", "mul_b", "add_lambda", "reinforce_w", "reinforce_nets",
                 "reinforce_baseline_decay", "weight_sampling", "derive", "derive_candidates", "budget_margin"):
        f = _FIELDS[name]
        flag = "--" + name.replace("_", "-")
        kw = {"default": f.default, "dest": name,
              "help": (f"{f.description} " if f.description else "") + f"(default {f.default})"}
        if name == "warmup_epochs":
            kw.update(default=None, help="weight-only epochs before α is trained (default a third of --epochs, at "
                                         "most 3)")
        if name == "arch_update":
            kw["choices"] = ["gradient", "reinforce"]
        elif name == "loss":
            kw["choices"] = ["mul", "add", "hinge"]
        elif name in ("weight_sampling", "derive"):
            kw["choices"] = list(f.annotation.__args__)
        else:
            kw["type"] = int if f.annotation in (int, int | None) else float
        p.add_argument(flag, **kw)


def add_runtime_args(parser: argparse.ArgumentParser, nproc: bool = True) -> None:
    """``--device``, ``--workers`` (and ``--nproc``): where and how a job runs, not what it computes."""
    parser.add_argument("--device", default="cpu", choices=DEVICES,
                        help="cpu, cuda or auto (cuda when torch sees a GPU); default cpu")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers per process for an image folder (default: the cores left, <= 8)")
    if nproc:
        parser.add_argument("--nproc", type=int, default=None,
                            help="run in N processes on this machine (starts torchrun; gloo on CPU, nccl on CUDA)")


def _config_error(e) -> TvmNasError:
    """A pydantic ValidationError of a config as one line naming the option."""
    err = e.errors()[0]
    name = str(err["loc"][0]) if err["loc"] else "warmup_epochs"  # the one check across fields
    opt = "--" + name.replace("_", "-").replace("latency-budget-us", "latency-ms")
    return TvmNasError(f"{opt}: {err['msg'].removeprefix('Value error, ')}")


def _console(quiet: bool):
    if quiet:
        return None
    from rich.console import Console

    return Console()


def _load_table(path: Path, space, target):
    """The table of `space` measured on `target` (a TargetSpec, or a name when resuming a saved run)."""
    from ..profile.model import LatencyModel

    name = target if isinstance(target, str) else target.name
    if not path.is_file():
        raise TvmNasError(f"{path}: latency table not found; run: tvm-nas profile --space {space.name} "
                          f"--target {name}")
    if isinstance(target, str):
        return LatencyModel.load(path, space=space, target_name=target)
    return LatencyModel.load(path, space=space, target=target)


def run_search(args: argparse.Namespace) -> int:
    """Run (or resume) a search; prints the architecture file's path. Returns the exit status.

    With ``--nproc N`` (N > 1) outside torchrun, starts torchrun with N copies of this command.
    """
    from ..search import distributed

    if args.nproc is not None and args.nproc < 1:
        raise TvmNasError(f"--nproc: must be at least 1, got {args.nproc}")
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        argv = getattr(args, "argv", None) or sys.argv[1:]
        return distributed.launch(args.nproc, distributed.strip_nproc(argv))
    dist = distributed.init(args.device)
    try:
        return _search(args, dist)
    finally:
        distributed.shutdown()


def _search(args: argparse.Namespace, dist) -> int:
    import torch
    from pydantic import ValidationError

    from ..data import default_workers, load_data
    from ..profile.table import table_path
    from ..search import distributed
    from ..search.loop import CONFIG, ProxylessSearch, load_run_config
    from ..space import SearchSpace, load_space
    from ..targets import load_target

    console = _console(args.quiet or not dist.main)
    if args.resume:
        if not args.out:
            raise TvmNasError("--resume needs --out RUN_DIR (the run to continue)")
        run_dir = Path(args.out)
        saved = load_run_config(run_dir)
        try:
            space = SearchSpace.model_validate(saved["space"]["definition"])
            config = SearchConfig.model_validate(saved["search"])
            table_file, target = saved["latency_table"]["path"], saved["latency_table"]["target"]
            data_spec = saved["data"]["spec"]
        except (KeyError, TypeError, ValidationError) as e:
            raise TvmNasError(f"{run_dir / CONFIG}: corrupted search run config "
                              f"({e.__class__.__name__})") from e
        # strict: each setting exactly as this version writes it (an epoch count of "2" is a hand edit, not a run)
        written = config.model_dump(mode="json")
        odd = next((k for k in saved["search"] if saved["search"][k] != written.get(k)
                    or type(saved["search"][k]) is not type(written.get(k))), None)
        if odd is not None:
            raise TvmNasError(f"{run_dir / CONFIG}: field 'search.{odd}': {saved['search'][odd]!r} is not a value "
                              f"this version writes (expected {written.get(odd)!r}); start a new run")
        before = saved.get("runtime", {})
        if console and before and before != {"device": dist.device.type, "processes": dist.world}:
            console.print(f"note: the run started on {before.get('processes')} {before.get('device')} process(es), "
                          f"it continues on {dist.world} {dist.device.type}; the result may differ slightly "
                          "from an uninterrupted run")
        table = _load_table(Path(table_file), space, target)
        if table.hash != saved["latency_table"]["hash"]:
            raise TvmNasError(f"{table_file}: the latency table changed since the run started (hash "
                              f"{table.hash}, the run used {saved['latency_table']['hash']}); "
                              "start a new run")
    else:
        missing = [f for f, v in (("--space", args.space), ("--target", args.target),
                                  ("--latency-ms", args.latency_ms)) if v is None]
        if missing:
            raise TvmNasError(f"tvm-nas search: missing {', '.join(missing)}")
        space = load_space(args.space)
        spec = load_target(args.target)
        table = _load_table(Path(args.table) if args.table else table_path(args.logs_dir, spec.name, space.name),
                            space, spec)
        budget_us = budget_us_from_ms(args.latency_ms)
        settings = {k: getattr(args, k) for k in _FIELDS  # an option left unset takes the model's default
                    if k != "latency_budget_us" and getattr(args, k, None) is not None}
        settings["enforce_budget"] = not args.no_enforce_budget
        settings["fill_budget"] = not args.no_fill_budget
        try:
            config = SearchConfig(latency_budget_us=budget_us, **settings)
        except ValidationError as e:
            raise _config_error(e) from e
        run_dir = Path(args.out or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}")
        data_spec = args.data
    distributed.check_precision(config.precision, dist.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    data = load_data(data_spec, space, max_samples=config.max_samples, seed=config.seed,
                     workers=args.workers if args.workers is not None else default_workers(dist.world))
    fast, slow = (table.predict(space, ops) for ops in table.extremes(space))
    if console:
        console.print(f"search {space.name} on {table.target.get('name')}: budget "
                      f"{fmt_us(config.latency_budget_us, 'µs')} (space range {fmt_us(fast)} – "
                      f"{fmt_us(slow, 'µs')}), data "
                      f"{data.spec} ({len(data)} samples) on {dist.world} {dist.device.type} process(es) "
                      f"-> {run_dir}")
    if config.latency_budget_us < fast and dist.main and not args.resume:  # said when the run started
        print(f"warning: the budget {config.latency_budget_us / 1000:g} ms is below the fastest net of space "
              f"'{space.name}' ({fast / 1000:g} ms): no architecture can meet it; the result is marked over budget",
              file=sys.stderr)
    search = ProxylessSearch(space, table, data, config, run_dir, console=console, dist=dist)
    search.fit(resume=args.resume)
    if not dist.main:
        return 0
    from ..search.measured import kept_row, settle_search

    if args.measure_budget and config.enforce_budget:
        settle_search(search, load_target(args.target or target) if args.resume else spec, args.logs_dir,
                      config.seed, console)
    arch = search.arch_
    measured = kept_row(arch)
    over = "" if arch["derivation"]["budget_met"] else " OVER BUDGET"
    margin = f", fitted to {fmt_us(arch['derivation']['target_us'])} with a {config.budget_margin:g}% margin" \
        if config.enforce_budget and config.budget_margin else ""
    if measured:
        n = len(arch["derivation"]["measured"])
        margin = (f"; measured {fmt_us(measured['measured_us'], 'µs')}, "
                  + (f"the slowest meeting it of {n} nets measured" if measured["meets"] else
                     f"the fastest of {n} nets measured, none meeting it"))
    line = (f"{search.arch_path_}: {' '.join(arch['ops'])} predicted {fmt_us(arch['predicted_latency_us'], 'µs')} "
            f"(budget {fmt_us(config.latency_budget_us, 'µs')}{margin}){over}")
    if data.skipped:
        line += f"; {data.skipped} unreadable images skipped (e.g. {data.bad_examples[0]})"
    if console:
        console.print(line)
        if arch["derivation"]["changed_blocks"]:
            d = arch["derivation"]
            console.print(f"note: the most probable net ({fmt_us(d['argmax_latency_us'], 'µs')}) was over "
                          f"{fmt_us(d['target_us'], 'µs')} (the budget less the margin); "
                          f"blocks {d['changed_blocks']} were swapped for faster ops")
    else:
        print(line)
    return 0


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tvm-nas train``."""
    p = parser
    p.add_argument("--arch", required=True, help="architecture file (e.g. RUN_DIR/final.arch.json)")
    p.add_argument("--data", default="builtin", help=DATA_HELP)
    p.add_argument("--test-data", help="held-out images never trained on (same spec forms as --data, same class "
                                       "folders): the accuracy the net is judged by")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=4e-5)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", help="fine-tune from a search run's supernet (RUN_DIR or checkpoint.pt)")
    p.add_argument("--out", help="output folder (default: beside the arch file, <arch>.train/)")
    p.add_argument("--force", action="store_true", help="replace the model.pt and train.json already in --out")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="train under autocast (bf16: CPU or CUDA, fp16: CUDA; default fp32)")
    add_runtime_args(p, nproc=False)
    p.add_argument("--quiet", action="store_true")


def run_train(args: argparse.Namespace) -> int:
    """Train a derived architecture and report its test (or validation) accuracy. Returns the exit status."""
    import torch
    from pydantic import ValidationError

    from ..config import TrainConfig
    from ..search.distributed import resolve_device
    from ..train import train_arch

    if args.threads < 0:
        raise TvmNasError(f"--threads: must be 0 (torch's choice) or more, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                          val_fraction=args.val_fraction, max_samples=args.max_samples, seed=args.seed,
                          precision=args.precision)
    except ValidationError as e:
        raise _config_error(e) from e
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else Path(str(args.arch).removesuffix(".json") + ".train")
    from ..io import check_output

    if out.exists() and not out.is_dir():
        raise TvmNasError(f"--out {out}: is a file; give a folder")
    for name in ("model.pt", "train.json"):
        check_output(out / name, "--out", [args.arch, args.init_from], force=args.force)
    result = train_arch(args.arch, args.data, cfg, out, init_from=args.init_from,
                        console=_console(args.quiet), device=device, workers=args.workers, test_data=args.test_data)
    start = f"fine-tuned from {args.init_from}" if args.init_from else "from scratch"
    how = f"after {cfg.epochs} epochs ({start})"
    if result["test_accuracy"] is not None:
        print(f"{out}: test accuracy {result['test_accuracy']:.4f} on {args.test_data} (held out), validation "
              f"accuracy {result['val_accuracy']:.4f} {how}")
    else:
        print(f"{out}: validation accuracy {result['val_accuracy']:.4f} {how} (the validation split of --data, "
              "the one a search trains α on; add --test-data for a held-out figure)")
    return 0
