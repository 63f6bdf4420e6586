"""``tvm-nas compile`` and ``tvm-nas compare``: arguments, and runners that import TVM only when they run."""

from __future__ import annotations

import argparse
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
    _common(p)


def run_compile(args: argparse.Namespace) -> int:
    """Entry point of ``tvm-nas compile``; prints the manifest path and predicted vs measured latency."""
    from rich.console import Console

    from ..deploy import MANIFEST, compile_arch

    console = Console(stderr=True)
    out = Path(args.out) if args.out else Path("build") / Path(args.target).stem
    compile_arch(args.arch, args.target, weights=args.weights, out=out, trials=args.trials,
                 logs_dir=args.logs_dir, frontend=args.frontend, seed=args.seed, measure=not args.no_measure,
                 verify=not args.no_verify, untuned=args.untuned, console=console)
    console.print(f"deliverables in {out}: model.so, model.onnx, {MANIFEST}")
    return 0


def add_compare_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``tvm-nas compare``."""
    p.add_argument("--arch", action="append", required=True, help="architecture file (repeat for several)")
    p.add_argument("--weights", action="append", default=None,
                   help="weights of each --arch, in order (repeat; default: seeded random weights)")
    p.add_argument("--target", action="append", required=True, help="target name or YAML path (repeat)")
    p.add_argument("--baselines", action="store_true",
                   help="on host-like targets add PyTorch eager, ONNX Runtime, TVM untuned and the reference "
                        "architecture (all mbconv_k3_e6)")
    p.add_argument("--out", default=None, help="keep the compiled modules under this folder")
    p.add_argument("--csv", default=None, help="write the table as CSV")
    p.add_argument("--json", default=None, help="write the table as JSON")
    _common(p)


def run_compare(args: argparse.Namespace) -> int:
    """Entry point of ``tvm-nas compare``: the table on stdout, CSV/JSON files when asked."""
    from rich.console import Console

    from ..deploy import compare, compare_table, write_rows

    if args.trials < 0:
        raise TvmNasError(f"--trials must be >= 0, got {args.trials}")
    console = Console(stderr=True)
    rows = compare(args.arch, args.target, baselines=args.baselines, logs_dir=args.logs_dir, trials=args.trials,
                   out=args.out, weights=args.weights, untuned=args.untuned, console=console)
    Console().print(compare_table(rows))
    meta = {"archs": args.arch, "targets": args.target, "trials": args.trials, "baselines": args.baselines}
    write_rows(rows, args.csv, args.json, meta)
    for f in (args.csv, args.json):
        if f:
            console.print(f"wrote {f}")
    return 0
