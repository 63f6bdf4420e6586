"""The `tvm-nas` command: one table of subcommands, in the order of the data flow.

Each subcommand's options live beside its runner in this package; the options import nothing heavier than
pydantic, and torch/TVM are imported only when a command runs, so ``tvm-nas --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NamedTuple

from ..errors import TvmNasError
from . import deploy, profile, run, search


class Command(NamedTuple):
    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS = (
    Command("profile", "measure the latency table of a search space on a target (TVM-tuned ops)",
            profile.add_profile_args, profile.run_profile),
    Command("search", "ProxylessNAS search against a target's latency table",
            search.add_search_args, search.run_search),
    Command("train", "train a derived architecture and report validation accuracy",
            search.add_train_args, search.run_train),
    Command("compile", "compile an architecture into a deployable module for a target",
            deploy.add_compile_args, deploy.run_compile),
    Command("compare", "latency of architectures x targets, against PyTorch and ONNX Runtime",
            deploy.add_compare_args, deploy.run_compare),
    Command("validate", "does the latency table predict the compiled nets? predicted against measured, interleaved",
            deploy.add_validate_args, deploy.run_validate),
    Command("run", "the whole job: profile, search, train, compile, measure, compare and report",
            run.add_run_args, run.run_run),
)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``tvm-nas CMD: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Every numeric option's range, checked before any work starts (one line naming the option, exit 2). The ranges
# are stated in docs/robustness.md; None: no bound on that side.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "seed": (0, 2**32 - 1), "nets": (0, 10_000), "nproc": (1, 1024), "jobs": (1, 1024), "threads": (0, 1024),
    "workers": (0, 256), "trials": (0, 10_000_000), "epochs": (1, 100_000), "warmup_epochs": (0, 100_000),
    "train_epochs": (1, 100_000), "batch_size": (1, 1_000_000), "batch": (1, 4096), "max_samples": (2, 10**9),
    "arch_every": (1, 1_000_000), "arch_steps": (1, 1_000_000), "reinforce_nets": (1, 10_000),
    "latency_ms": (0.001, 1e9), "budget_margin": (0, 50),
}


def check_bounds(args: argparse.Namespace) -> None:
    """Refuse a numeric option outside its range (:data:`BOUNDS`) or not finite, in one line naming it."""
    import math

    for name, v in vars(args).items():  # every number option (--lr, --arch-lr, --mul-b, ...): inf or NaN is no rate
        if isinstance(v, float) and not math.isfinite(v) and name != "latency_ms":
            raise TvmNasError(f"--{name.replace('_', '-')}: must be a finite number, got {v}")
    for name, (lo, hi) in BOUNDS.items():
        v = getattr(args, name, None)
        if v is None or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        flag = "--" + name.replace("_", "-")
        if name == "latency_ms":
            from ..config import budget_us_from_ms

            budget_us_from_ms(v)  # the budget's own message: a finite number of ms above 0.001 (1 µs)
        if isinstance(v, float) and not math.isfinite(v):
            raise TvmNasError(f"{flag}: must be a finite number, got {v}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise TvmNasError(f"{flag}: must be between {lo} and {hi}, got {v}")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="tvm-nas", description="Hardware-aware NAS whose latency comes from TVM.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        c.add_args(p)
        p.set_defaults(func=c.run)
    return ap


def _quiet_third_parties() -> None:
    """Warnings of our dependencies that say nothing to a user of this tool."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # torch.export internals
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration"):  # "torchvision is not installed"
        logging.getLogger(name).setLevel(logging.ERROR)
    # ExecuTorch's import of torchao: "Failed to load ..._C_cutlass_90a.abi3.so" (CUDA kernels on a CPU machine), and
    # torch's "<enum 'KernelPreference'> is an Enum subclass ..." deprecation it triggers
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _fix_runtime_threads(args) -> None:
    """TVM's thread pool reads its size once: set it from the target before anything can start the pool."""
    target = getattr(args, "target", None)
    target = target[0] if isinstance(target, list) and target else target
    if isinstance(target, str):
        from ..backend.target import set_runtime_threads
        from ..targets import load_target

        set_runtime_threads(load_target(target))


# commands that build or load compiled libraries, whose digests live in the per-user cache (backend/trust.py)
BUILDS_LIBRARIES = ("compile", "compare", "validate", "run")


class _CtrlC:
    """Ctrl-C noticed even where TVM swallows it: a KeyboardInterrupt raised inside one of TVM's Python callbacks
    (a pass of its build pipeline) comes back out of the C++ side as a RuntimeError, and the command would end in a
    traceback with status 1 instead of keeping its work and saying how to continue. While a command runs, SIGINT
    also sets :attr:`seen`; an error raised after it counts as the interruption."""

    def __init__(self):
        self.seen, self.before = False, None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored
            self.before = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.before is not None:
            import signal

            signal.signal(signal.SIGINT, self.before)
        return False


def _interrupted(command: str) -> int:
    print(f"\ntvm-nas {command}: interrupted; finished work is kept, run the same command again "
          "(or with --resume) to continue", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that restart themselves (--nproc)
    _quiet_third_parties()
    with _CtrlC() as ctrl_c:
        return _run(args, ctrl_c)


def _run(args, ctrl_c: _CtrlC) -> int:
    try:
        check_bounds(args)
        from ..io import check_output_dir

        check_output_dir(getattr(args, "out", None), "--out")  # every command's --out is a folder it writes
        if args.command == "profile":
            check_output_dir(args.logs_dir, "--logs-dir")
        if args.command in BUILDS_LIBRARIES:  # their libraries are recorded in the per-user cache: check it first
            from ..backend.aarch64 import cache_dir

            cache_dir()
        _fix_runtime_threads(args)
        return int(args.func(args) or 0)
    except TvmNasError as e:
        if ctrl_c.seen:
            return _interrupted(args.command)
        print(f"tvm-nas {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return _interrupted(args.command)
    except Exception:
        if ctrl_c.seen:  # Ctrl-C came back out of TVM as another error
            return _interrupted(args.command)
        raise


if __name__ == "__main__":
    sys.exit(main())
