"""What profiling costs: dedup figures of the shipped spaces, and seconds per trial / per measured op on `tiny`.

    python bench/profile_cost.py [--trials 64] [--target host]

Writes bench/results/profile_cost-<target>-t<trials>.json. Absolute seconds depend on the (shared, noisy) machine;
compare runs of the same conditions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tvm_nas.backend import tuning
from tvm_nas.backend.target import is_gpu, to_tvm_target
from tvm_nas.io import atomic_write_json
from tvm_nas.profile.profiler import lower_op, profile
from tvm_nas.space import load_space
from tvm_nas.targets import load_target


def dedup_figures(space_name: str, target) -> dict:
    space = load_space(space_name)
    tvm_target = to_tvm_target(target)
    by_op = {}
    t0 = time.perf_counter()
    for k in space.unique_op_keys():
        by_op[k.key] = tuning.extract_tasks(lower_op(k, tvm_target, prepack=not is_gpu(target)), tvm_target)
    unique = tuning.dedup(by_op)
    n_tasks = sum(len(v) for v in by_op.values())
    return {"space": space_name, "candidate_ops": len(space.op_keys()), "unique_ops": len(space.unique_op_keys()),
            "tasks": n_tasks, "unique_tasks": len(unique), "task_dedup_ratio": n_tasks / len(unique),
            "op_dedup_ratio": len(space.op_keys()) / len(space.unique_op_keys()),
            "lowering_s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--target", default="host")
    ap.add_argument("--spaces", nargs="+", default=["proxyless-cifar", "proxyless-imagenet"])
    args = ap.parse_args()
    console = Console()
    target = load_target(args.target)

    rows = [dedup_figures(s, target) for s in args.spaces]
    t = Table(title=f"deduplication on {target.name}")
    for c in ("space", "candidate ops", "unique ops", "tasks", "unique tasks", "task dedup", "all-op dedup"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r["space"], str(r["candidate_ops"]), str(r["unique_ops"]), str(r["tasks"]), str(r["unique_tasks"]),
                  f"{r['task_dedup_ratio']:.2f}x", f"{r['candidate_ops'] / r['unique_tasks']:.2f}x")
    console.print(t)

    with tempfile.TemporaryDirectory() as logs:
        t0 = time.perf_counter()
        table = profile("tiny", target, trials=args.trials, logs_dir=logs, console=Console(stderr=True, quiet=True))
        wall = time.perf_counter() - t0
    tm = table.meta["timing"]
    cost = {"space": "tiny", "trials": tm.get("tune_trials", 0), "wall_s": wall, "lower_s": tm["lower_s"],
            "tune_s": tm.get("tune_s", 0.0), "measure_s": tm["measure_s"], "measured_ops": tm["measured_ops"],
            "s_per_trial": tm.get("tune_s", 0.0) / max(1, tm.get("tune_trials", 0)),
            "s_per_measured_op": tm["measure_s"] / tm["measured_ops"]}
    console.print(f"tiny on {target.name}, {cost['trials']} trials: {cost['s_per_trial']:.2f} s per trial "
                  f"(tuning {cost['tune_s']:.0f} s), {cost['s_per_measured_op']:.2f} s per measured op "
                  f"({cost['measured_ops']} ops), {wall:.0f} s in all")
    out = Path(__file__).parent / "results" / f"profile_cost-{target.name}-t{args.trials}.json"
    atomic_write_json(out, {"schema": 1, "dedup": rows, "tiny_cost": cost})
    console.print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
