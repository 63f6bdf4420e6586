"""The `tvm-nas` command: profile, search, train, compile, compare, run."""

from __future__ import annotations

import argparse
import sys

from .errors import TvmNasError


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="measure the latency table of a search space on a target (TVM-tuned ops)",
                       description="Lower every unique candidate op of a space with TVM, tune the deduplicated "
                                   "kernels with MetaSchedule and measure each op on the target.")
    p.add_argument("--space", required=True, help="search space: a name in search_space/ or a YAML path")
    p.add_argument("--target", required=True, help="hardware target: a name in targets/ or a YAML path")
    p.add_argument("--trials", type=int, default=0,
                   help="MetaSchedule trial budget over the unique kernels, in whole rounds given by each kernel's "
                        "share of the space's latency (0: TVM's default schedules, a fast first table)")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="tuning time, e.g. 90s, 20m, 1h (with --trials: whichever ends first)")
    p.add_argument("--jobs", type=int, default=None,
                   help="build processes and tuning threads (default: all cores)")
    p.add_argument("--force", action="store_true",
                   help="replace a table measured with tuning by an untuned one (--trials 0)")
    p.add_argument("--logs-dir", default="tuning_logs", help="per-target databases and tables (default tuning_logs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="batch size of the measured ops (default 1)")
    p.set_defaults(func=_run_profile)


def _run_profile(args) -> int:
    from .latency import profile

    profile(args.space, args.target, trials=args.trials, logs_dir=args.logs_dir, seed=args.seed, batch=args.batch,
            time_budget=args.time_budget, jobs=args.jobs, force=args.force)
    return 0


def _add_optional(sub, name: str, module: str, add: str, run: str, help: str) -> None:
    """Register a subcommand whose arguments and runner live in the module of its role."""
    import importlib

    mod = importlib.import_module(module, __package__)
    p = sub.add_parser(name, help=help)
    getattr(mod, add)(p)
    p.set_defaults(func=getattr(mod, run))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tvm-nas", description="Hardware-aware NAS whose latency comes from TVM.")
    sub = ap.add_subparsers(dest="command", required=True)
    _add_profile(sub)
    _add_optional(sub, "search", ".search.cli", "add_search_args", "run_search",
                  "ProxylessNAS search against a target's latency table")
    _add_optional(sub, "train", ".search.cli", "add_train_args", "run_train",
                  "train a derived architecture and report validation accuracy")
    for name, add, run, help in (("compile", "add_compile_args", "run_compile",
                                  "compile an architecture into a deployable module for a target"),
                                 ("compare", "add_compare_args", "run_compare",
                                  "latency of architectures x targets, against PyTorch and ONNX Runtime")):
        _add_optional(sub, name, ".deploy_cli", add, run, help)
    _add_optional(sub, "run", ".run", "add_run_args", "run_run", "the whole job: profile, search, train, "
                  "compile, measure, compare and report")
    return ap


def _quiet_third_parties() -> None:
    """Warnings of our dependencies that say nothing to a user of this tool."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch.export internals
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration"):  # "torchvision is not installed"
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet_third_parties()
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TvmNasError as e:
        print(f"tvm-nas {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"\ntvm-nas {args.command}: interrupted; finished work is kept, run the same command again "
              "(or with --resume) to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
