"""``tvm-nas profile``: arguments, and the runner that imports TVM only when it runs."""

from __future__ import annotations

import argparse

from ..io import DEFAULT_LOGS_DIR


def add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="search space: a name in search_space/ or a YAML path")
    p.add_argument("--target", required=True, help="hardware target: a name in targets/ or a YAML path")
    p.add_argument("--trials", type=int, default=None,
                   help="MetaSchedule trial budget over the unique kernels, in whole rounds given by each kernel's "
                        "share of the space's latency (0, or neither this nor --time-budget: TVM's default "
                        "schedules, a fast first table)")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="tuning time, e.g. 90s, 20m, 1h (with --trials: whichever ends first)")
    p.add_argument("--jobs", type=int, default=None,
                   help="build processes and tuning threads (default: all cores)")
    p.add_argument("--force", action="store_true",
                   help="replace a table measured with tuning by an untuned one (--trials 0)")
    p.add_argument("--logs-dir", default=str(DEFAULT_LOGS_DIR),
                   help="per-target databases and tables (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="batch size of the measured ops (default 1)")


def run_profile(args: argparse.Namespace) -> int:
    from ..config import NO_TUNING_WITH_TIME
    from ..errors import TvmNasError
    from ..profile import profile

    if args.trials == 0 and args.time_budget is not None:
        raise TvmNasError(f"--time-budget: {NO_TUNING_WITH_TIME}")
    profile(args.space, args.target, trials=args.trials or 0, logs_dir=args.logs_dir, seed=args.seed, batch=args.batch,
            time_budget=args.time_budget, jobs=args.jobs, force=args.force)
    return 0
