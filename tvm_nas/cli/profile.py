"""``tvm-nas profile``: arguments, and the runner that imports TVM only when it runs."""

from __future__ import annotations

import argparse

from ..io import DEFAULT_LOGS_DIR


def add_profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="search space: a name in search_space/ or a YAML path")
    p.add_argument("--target", required=True, help="hardware target: a name in targets/ or a YAML path")
    p.add_argument("--trials", type=int, default=0,
                   help="global MetaSchedule trial budget spread over the unique kernels (0: TVM's default "
                        "schedules, a fast first table)")
    p.add_argument("--logs-dir", default=str(DEFAULT_LOGS_DIR),
                   help="per-target databases and tables (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="batch size of the measured ops (default 1)")


def run_profile(args: argparse.Namespace) -> int:
    from ..profile import profile

    profile(args.space, args.target, trials=args.trials, logs_dir=args.logs_dir, seed=args.seed, batch=args.batch)
    return 0
