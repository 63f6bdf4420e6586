"""Profiling a search space on a target: every unique candidate op lowered, tuned and measured with TVM."""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..console import progress
from ..errors import TvmNasError
from ..io import DEFAULT_LOGS_DIR, exclusive
from ..ops import build_op, prepare_for_deploy
from ..space import OpKey, SearchSpace, load_space
from ..targets import TargetSpec, load_target
from .table import LatencyTable, table_path


def op_module(key: OpKey):
    """The deployable torch module of one op key (eval mode, batch norm folded)."""
    return prepare_for_deploy(build_op(key.op, key.in_shape[0], key.out_channels, key.stride, where=str(key)))


def lower_op(key: OpKey, tvm_target, prepack: bool, batch: int = 1):
    """One op through the shared pipeline, with NHWC input/output as inside a network."""
    from ..backend import pipeline

    mod = pipeline.import_torch(op_module(key), (batch, *key.in_shape), nhwc_io=True)
    return pipeline.lower(mod, tvm_target, prepack)


def _settings(spec: TargetSpec, trials: int, seed: int, batch: int) -> dict:
    import tvm

    from ..backend.pipeline import PIPELINE_VERSION

    return {"trials": trials, "seed": seed, "batch_size": batch, "dtype": "float32", "pipeline": PIPELINE_VERSION,
            "tvm_version": tvm.__version__, "evaluator": spec.evaluator.model_dump(), "threads": spec.threads,
            "runner": "local" if not spec.is_rpc else f"rpc:{spec.runner.key}"}


def profile(space: SearchSpace | str, target: TargetSpec | str, trials: int = 0,
            logs_dir: str | os.PathLike = DEFAULT_LOGS_DIR, seed: int = 0, batch: int = 1,
            console: Console | None = None) -> LatencyTable:
    """Measure the latency table of a space on a target (resuming a table and database already on disk).

    Args:
        space: a `SearchSpace`, or a name in `search_space/` or a YAML path.
        target: a `TargetSpec`, or a name in `targets/` or a YAML path.
        trials: global MetaSchedule budget spread over the unique tasks; 0 compiles TVM's default schedules.
        logs_dir: root of the per-target databases and tables (`<logs_dir>/<target>/`).
        seed: tuning seed.
        batch: batch size of the measured ops.

    Returns:
        The latency table, also written to `<logs_dir>/<target>/<space>.latency.json` after every op.
    """
    from ..backend import measure, tuning
    from ..backend.target import is_gpu, to_tvm_target

    console = console or Console(stderr=True)
    space, spec = load_space(space), load_target(target)
    if trials < 0:
        raise TvmNasError(f"--trials must be >= 0, got {trials}")
    tvm_target, gpu = to_tvm_target(spec), is_gpu(spec)
    if spec.cross_compiler:
        spec.check_cross_compiler()
    if spec.is_rpc:
        from ..backend.remote import check_tracker

        check_tracker(spec)
    work_dir = Path(logs_dir) / spec.name
    path = table_path(logs_dir, spec.name, space.name)
    settings = _settings(spec, trials, seed, batch)
    with exclusive(path, "latency table"):
        table = _open_table(path, space, spec, settings, tvm_target)
        keys = space.unique_op_keys()
        todo = [k for k in keys if k.key not in table.entries]
        n_all = len(space.op_keys())
        console.print(f"[bold]{space.name}[/] on [bold]{spec.name}[/] ({tvm_target.kind.name}): {n_all} candidate "
                      f"ops ({len(space.blocks())} blocks + fixed layers), {len(keys)} unique, "
                      f"{len(keys) - len(todo)} already measured")
        if todo:
            db = tuning.open_database(work_dir, spec) if trials > 0 else None
            timing = table.meta.setdefault("timing", {})
            t0 = time.perf_counter()
            with progress(console) as prog:
                bar = prog.add_task("lowering ops", total=len(todo))
                fused, by_op = {}, {}
                for k in todo:
                    fused[k.key] = lower_op(k, tvm_target, prepack=not gpu, batch=batch)
                    by_op[k.key] = tuning.extract_tasks(fused[k.key], tvm_target)
                    prog.advance(bar)
                unique = tuning.dedup(by_op)
                n_tasks = sum(len(v) for v in by_op.values())
                console.print(f"tasks: {n_tasks} extracted from {len(todo)} ops -> {len(unique)} unique "
                              f"(dedup ratio {n_tasks / max(1, len(unique)):.2f}x)")
                table.meta["dedup"] = {"ops": len(todo), "tasks": n_tasks, "unique_tasks": len(unique)}
                timing["lower_s"] = round(time.perf_counter() - t0, 2)
                t0 = time.perf_counter()
                if trials > 0:
                    owed = tuning.split_budget(trials, unique, db)
                    if trials < len(unique):
                        console.print(f"[yellow]budget {trials} < {len(unique)} tasks: some tasks stay untuned")
                    if owed:
                        tbar = prog.add_task("tuning", total=sum(owed.values()))
                        tuning.tune(unique, owed, spec, work_dir, seed=seed,
                                    on_trials=lambda n: prog.advance(tbar, n))
                        prog.update(tbar, completed=sum(owed.values()))
                    else:
                        console.print("tuning: every task already has its share of records in the database")
                    db = tuning.open_database(work_dir, spec)  # re-read what the tuner wrote
                    timing.update(tune_s=round(time.perf_counter() - t0, 2), tune_trials=sum(owed.values()))
                    t0 = time.perf_counter()
                task_of = {u: [t for t in unique.values() if u in t.users] for u in by_op}
                mbar = prog.add_task("measuring", total=len(todo))
                rng = np.random.default_rng(seed)
                with measure.target_session(spec) as sess:
                    _measure_ops(todo, fused, task_of, table, path, db, spec, tvm_target, gpu, batch, rng, sess,
                                 lambda: prog.advance(mbar), timing)
        table.meta["updated"] = _now()
        table.save(path)
    console.print(summary_table(table, space))
    console.print(f"latency table: {path}")
    return table


def _measure_ops(todo, fused, task_of, table, path, db, spec, tvm_target, gpu, batch, rng, sess, advance, timing):
    """Compile each op with the database and time it on the target; the table is saved after every op."""
    from ..backend import measure, tuning
    from ..backend.pipeline import build

    t0 = time.perf_counter()
    for i, k in enumerate(todo):
        exe = build(fused[k.key], tvm_target, db, gpu=gpu, prepack=not gpu)
        c, h, w = k.in_shape
        x = rng.standard_normal((batch, h, w, c), dtype=np.float32)
        _, t = measure.run_and_time(exe, [x], spec, sess=sess)
        tasks = task_of[k.key]
        table.entries[k.key] = {
            "op": k.op, "in_shape": [batch, *k.in_shape], "out_channels": k.out_channels,
            "stride": k.stride, "median": t.median, "mean": t.mean, "std": t.std, "min": t.min,
            "count": t.count, "trials": sum(tuning.records(db, tk.mod) for tk in tasks),
            "tasks": [f"{tk.name}#{tk.key}" for tk in tasks], "source": "measured",
            "measured_at": t.where,
        }
        timing.update(measure_s=round(time.perf_counter() - t0, 2), measured_ops=i + 1)
        table.save(path)
        advance()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _open_table(path: Path, space: SearchSpace, spec: TargetSpec, settings: dict, tvm_target) -> LatencyTable:
    """The table on disk when it was measured under the same settings (resume), else a new one."""
    if path.exists():
        old = LatencyTable.load(path, space=space, target_name=spec.name)
        if old.meta.get("settings") == settings and old.target.get("hash") == spec.hash:
            return old
    return LatencyTable(
        space={"name": space.name, "hash": space.hash},
        target={"name": spec.name, "hash": spec.hash, "tvm": json.loads(str(tvm_target))},
        meta={"tvm_version": settings["tvm_version"], "evaluator": settings["evaluator"],
              "batch_size": settings["batch_size"], "dtype": "float32", "created": _now(), "settings": settings},
        path=path)


def summary_table(table: LatencyTable, space: SearchSpace) -> Table:
    t = Table(title=f"latency table: {table.space['name']} on {table.target['name']} (µs, median)")
    for col in ("op", "input (C×H×W)", "out", "stride", "median µs", "std µs", "trials"):
        t.add_column(col, justify="right" if col not in ("op",) else "left")
    for k in space.unique_op_keys():
        e = table.entries.get(k.key)
        if e is None:
            continue
        c, h, w = k.in_shape
        t.add_row(k.op, f"{c}×{h}×{w}", str(k.out_channels), str(k.stride), f"{e['median']:.1f}",
                  f"{e['std']:.1f}", str(e.get("trials", 0)))
    return t
