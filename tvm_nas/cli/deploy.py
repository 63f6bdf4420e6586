"""``tvm-nas compile``, ``compare`` and ``validate``: arguments, and runners that import TVM only when they run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import TvmNasError
from ..io import DEFAULT_LOGS_DIR


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logs-dir", default=str(DEFAULT_LOGS_DIR),
                   help="root of the per-target tuning databases and latency tables (default: %(default)s)")
    p.add_argument("--trials", type=int, default=0,
                   help="MetaSchedule trials for the tasks the target's database lacks (default: 0, tune nothing)")
    p.add_argument("--untuned", action="store_true", help="ignore the database: TVM's default schedules")


def add_compile_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``tvm-nas compile``."""
    p.add_argument("--arch", required=True, help="architecture file (*.arch.json)")
    p.add_argument("--weights", default=None, help="trained weights (state dict); default: seeded random weights")
    p.add_argument("--target", required=True, help="target name (targets/) or YAML path")
    p.add_argument("--out", default=None, help="output folder (default: build/<target>)")
    p.add_argument("--frontend", choices=("torch", "onnx"), default="torch",
                   help="import into Relax from torch.export (default) or from the exported ONNX file")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights, test input and tuning")
    p.add_argument("--no-measure", action="store_true", help="do not time the module on the target")
    p.add_argument("--no-verify", action="store_true", help="do not run the exported library here")
    p.add_argument("--time-budget", metavar="DURATION", default=None,
                   help="tune this net's own kernels further for this long, e.g. 10m (rounds go where the net "
                        "spends its time; the records already in the database count; the same call again tunes "
                        "nothing more; with --trials above 0: whichever ends first)")
    _common(p)


def run_compile(args: argparse.Namespace) -> int:
    """Entry point of ``tvm-nas compile``; prints the manifest path and predicted vs measured latency."""
    from rich.console import Console

    from ..deploy import MANIFEST, compile_arch

    console = Console(stderr=True)
    out = Path(args.out) if args.out else Path("build") / Path(args.target).stem
    compile_arch(args.arch, args.target, weights=args.weights, out=out, trials=args.trials,
                 logs_dir=args.logs_dir, frontend=args.frontend, seed=args.seed, measure=not args.no_measure,
                 verify=not args.no_verify, untuned=args.untuned, console=console, time_budget=args.time_budget)
    console.print(f"deliverables in {out}: model.so, model.onnx, {MANIFEST}")
    return 0


def add_compare_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``tvm-nas compare``."""
    p.add_argument("--arch", action="append", required=True, help="architecture file (repeat for several)")
    p.add_argument("--weights", action="append", default=None,
                   help="weights of each --arch, in order (repeat; default: seeded random weights)")
    p.add_argument("--target", action="append", required=True, help="target name or YAML path (repeat)")
    p.add_argument("--baselines", action="store_true",
                   help="add the reference architecture (all mbconv_k3_e6), TVM untuned and the peers, each in its "
                        "best configuration (PyTorch eager and torch.compile, ONNX Runtime, OpenVINO, ExecuTorch; "
                        "the last two with pip install \"tvm-nas[peers]\"); timed on host-like targets, listed as "
                        "not run on the others")
    p.add_argument("--peers", default=None,
                   help="comma-separated peers to run with --baselines: pytorch, torch-compile, onnxruntime, "
                        "openvino, executorch (default: $TVM_NAS_PEERS, else all)")
    p.add_argument("--order", choices=("forward", "reverse", "alternate"), default="alternate",
                   help="order of the runtimes' blocks in each round: as listed, reversed, or alternating round "
                        "by round (default: %(default)s; recorded in the JSON)")
    p.add_argument("--per-layer", action="store_true",
                   help="also time every fused kernel of each compiled net (host-like targets) and show it per "
                        "layer beside the latency table's entry and the fastest peer's own per-node profile (ONNX "
                        "Runtime, OpenVINO), sorted by where TVM loses most; in the JSON under per_layer, and as "
                        "<csv stem>.per_layer.csv with --csv")
    p.add_argument("--out", default=None, help="keep the compiled modules under this folder")
    p.add_argument("--csv", default=None, help="write the table as CSV")
    p.add_argument("--json", default=None, help="write the table as JSON")
    p.add_argument("--trust", action="store_true", help=TRUST_HELP)
    _common(p)


def run_compare(args: argparse.Namespace) -> int:
    """Entry point of ``tvm-nas compare``: the table on stdout, CSV/JSON files when asked."""
    from rich.console import Console

    trust_libraries(args)

    from ..deploy import compare, compare_table, write_rows

    if args.trials < 0:
        raise TvmNasError(f"--trials must be >= 0, got {args.trials}")
    from ..io import check_output

    inputs = [*args.arch, *(args.weights or []), *(t for t in args.target if Path(t).suffix in (".yaml", ".yml"))]
    for flag, out in (("--csv", args.csv), ("--json", args.json)):
        check_output(out, flag, inputs)  # before the minutes of measuring whose figures it would lose
    if args.csv and args.json and os.path.realpath(args.csv) == os.path.realpath(args.json):
        raise TvmNasError(f"--json {args.json}: is also the --csv file; choose two files")
    console = Console(stderr=True)
    from ..deploy.peers import COOLDOWN_S, selected_peers

    if args.peers is not None and not (args.baselines or args.per_layer):
        raise TvmNasError(f"--peers {args.peers}: chooses the peers of --baselines or --per-layer; give one of them")
    checked = selected_peers(args.peers)  # an unknown name is refused now, before the builds
    peers = checked if args.baselines else []
    per_layer = [] if args.per_layer else None
    rows = compare(args.arch, args.target, baselines=args.baselines, logs_dir=args.logs_dir, trials=args.trials,
                   out=args.out, weights=args.weights, untuned=args.untuned, console=console,
                   peers=peers if args.baselines else args.peers, order=args.order, per_layer=per_layer)
    Console().print(compare_table(rows))
    if per_layer is not None:
        from ..deploy.perlayer_view import per_layer_table

        Console().print(per_layer_table(per_layer))
    meta = {"archs": args.arch, "targets": args.target, "trials": args.trials, "baselines": args.baselines,
            "peers": peers, "order": args.order, "cooldown_s": COOLDOWN_S}
    for f in write_rows(rows, args.csv, args.json, meta, per_layer):
        console.print(f"wrote {f}")
    return 0


def add_validate_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``tvm-nas validate``."""
    p.add_argument("--space", required=True, help="search space: a name in search_space/ or a YAML path")
    p.add_argument("--target", required=True, help="hardware target (local or RPC runner)")
    p.add_argument("--nets", type=int, default=20,
                   help="random architectures besides the fastest, slowest and reference nets (default: 20)")
    p.add_argument("--arch", action="append", default=[], help="an *.arch.json to include, e.g. a searched net "
                   "(repeatable)")
    p.add_argument("--logs-dir", default=str(DEFAULT_LOGS_DIR),
                   help="root of the per-target tuning databases and latency tables (default: %(default)s)")
    p.add_argument("--out", default="validate", help="folder for validate.json and validate.png (default: validate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random architectures and weights")


def run_validate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..deploy.validate import validate

    validate(args.space, args.target, n=args.nets, archs=args.arch, logs_dir=args.logs_dir, out=args.out,
             seed=args.seed, console=Console())
    return 0


TRUST_HELP = ("load compiled libraries in --out that this tvm-nas did not build on this machine (from a shared or "
              "copied folder: loading a library runs its code; without this they are refused)")


def trust_libraries(args: argparse.Namespace) -> None:
    """``--trust``: the user vouches for the libraries this command loads (see :mod:`tvm_nas.backend.trust`)."""
    if getattr(args, "trust", False):
        os.environ["TVM_NAS_TRUST_LIBRARIES"] = "1"
