"""``tvm-nas search`` and ``tvm-nas train``: arguments, and runners that import torch only when they run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import SearchConfig
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
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-enforce-budget", action="store_true",
                   help="derive the pure argmax net even if it is over budget")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    for name in ("epochs", "warmup_epochs", "batch_size", "seed", "val_fraction", "max_samples", "weight_lr",
                 "momentum", "weight_decay", "label_smoothing", "arch_update", "arch_lr", "arch_every",
                 "arch_steps", "loss", "mul_a", "mul_b", "add_lambda", "reinforce_w", "reinforce_nets",
                 "reinforce_baseline_decay"):
        f = _FIELDS[name]
        flag = "--" + name.replace("_", "-")
        kw = {"default": f.default, "dest": name, "help": f"(default {f.default})"}
        if name == "arch_update":
            kw["choices"] = ["gradient", "reinforce"]
        elif name == "loss":
            kw["choices"] = ["mul", "add"]
        else:
            kw["type"] = int if f.annotation in (int, int | None) else float
        p.add_argument(flag, **kw)


def _console(quiet: bool):
    if quiet:
        return None
    from rich.console import Console

    return Console()


def _load_table(path: Path, space, target):
    """The table of `space` measured on `target` (a TargetSpec, or a name when resuming a saved run)."""
    from ..profile.table import LatencyTable

    name = target if isinstance(target, str) else target.name
    if not path.is_file():
        raise TvmNasError(f"{path}: latency table not found; run: tvm-nas profile --space {space.name} "
                          f"--target {name}")
    if isinstance(target, str):
        return LatencyTable.load(path, space=space, target_name=target)
    return LatencyTable.load(path, space=space, target=target)


def run_search(args: argparse.Namespace) -> int:
    """Run (or resume) a search; prints the architecture file's path. Returns the exit status."""
    import torch
    from pydantic import ValidationError

    from ..data import load_data
    from ..profile.table import table_path
    from ..search.loop import CONFIG, ProxylessSearch, load_run_config
    from ..space import SearchSpace, load_space
    from ..targets import load_target

    if args.threads:
        torch.set_num_threads(args.threads)
    console = _console(args.quiet)
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
        settings = {k: getattr(args, k) for k in _FIELDS if hasattr(args, k) and k != "latency_budget_us"}
        settings["enforce_budget"] = not args.no_enforce_budget
        try:
            config = SearchConfig(latency_budget_us=args.latency_ms * 1000.0, **settings)
        except ValidationError as e:
            err = e.errors()[0]
            opt = "--" + str(err["loc"][0]).replace("_", "-").replace("latency-budget-us", "latency-ms")
            raise TvmNasError(f"{opt}: {err['msg']}") from e
        run_dir = Path(args.out or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}")
        data_spec = args.data
    data = load_data(data_spec, space, max_samples=config.max_samples, seed=config.seed)
    fast, slow = table.extremes(space)
    if console:
        console.print(f"search {space.name} on {table.target.get('name')}: budget "
                      f"{config.latency_budget_us:.1f} µs (space range {table.predict(space, fast):.1f} – "
                      f"{table.predict(space, slow):.1f} µs), data {data.spec} ({len(data)} samples) "
                      f"-> {run_dir}")
    search = ProxylessSearch(space, table, data, config, run_dir, console=console).fit(resume=args.resume)
    arch = search.arch_
    line = (f"{search.arch_path_}: {' '.join(arch['ops'])} predicted {arch['predicted_latency_us']:.1f} µs "
            f"(budget {config.latency_budget_us:.1f} µs)")
    if console:
        console.print(line)
        if arch["derivation"]["changed_blocks"]:
            d = arch["derivation"]
            console.print(f"note: the most probable net ({d['argmax_latency_us']:.1f} µs) was over budget; "
                          f"blocks {d['changed_blocks']} were swapped for faster ops")
    else:
        print(line)
    return 0


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tvm-nas train``."""
    p = parser
    p.add_argument("--arch", required=True, help="architecture file (e.g. RUN_DIR/final.arch.json)")
    p.add_argument("--data", default="builtin", help=DATA_HELP)
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
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true")


def run_train(args: argparse.Namespace) -> int:
    """Train a derived architecture and report its validation accuracy. Returns the exit status."""
    import torch

    from ..config import TrainConfig
    from ..train import train_arch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                      val_fraction=args.val_fraction, max_samples=args.max_samples, seed=args.seed)
    out = Path(args.out) if args.out else Path(str(args.arch).removesuffix(".json") + ".train")
    result = train_arch(args.arch, args.data, cfg, out, init_from=args.init_from,
                        console=_console(args.quiet))
    print(f"{out}: validation accuracy {result['val_accuracy']:.4f} after {cfg.epochs} epochs "
          f"({'fine-tuned from ' + str(args.init_from) if args.init_from else 'from scratch'})")
    return 0
