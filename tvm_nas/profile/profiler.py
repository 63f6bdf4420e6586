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

from ..console import NA, fmt_us, progress
from ..errors import TvmNasError
from ..io import DEFAULT_LOGS_DIR, exclusive
from ..ops import build_op, prepare_for_deploy
from ..space import OpKey, SearchSpace, load_space
from ..targets import TargetSpec, load_target
from .table import LatencyTable, check_invocation, measured_entry, table_path


def op_module(key: OpKey):
    """The deployable torch module of one op key (eval mode, batch norm folded)."""
    return prepare_for_deploy(build_op(key.op, key.in_shape[0], key.out_channels, key.stride, where=str(key)))


def lower_op(key: OpKey, tvm_target, prepack: bool, batch: int = 1):
    """One op through the shared pipeline, with the edges it has inside a network.

    NHWC input and output, except the stem, which takes the network's NCHW input (so its entry holds the input
    transpose); the classifier pools the NHWC axes. Every kernel of a compiled network is then a kernel of the table.
    """
    from ..backend import pipeline

    mod = pipeline.import_torch(op_module(key), (batch, *key.in_shape), nhwc_io=True,
                                nchw_input=key.op == "stem_conv_k3")
    return pipeline.lower(mod, tvm_target, prepack)


def _settings(spec: TargetSpec, trials: int, seed: int, batch: int) -> dict:
    import tvm

    from ..backend.pipeline import PIPELINE_VERSION

    return {"trials": trials, "seed": seed, "batch_size": batch, "dtype": "float32", "pipeline": PIPELINE_VERSION,
            "tvm_version": tvm.__version__, "evaluator": spec.evaluator.model_dump(), "threads": spec.threads,
            "runner": "local" if not spec.is_rpc else f"rpc:{spec.runner.key}"}


def profile(space: SearchSpace | str, target: TargetSpec | str, trials: int = 0,
            logs_dir: str | os.PathLike = DEFAULT_LOGS_DIR, seed: int = 0, batch: int = 1,
            console: Console | None = None, time_budget: str | float | None = None, jobs: int | None = None,
            force: bool = False, tuning_settings=None) -> LatencyTable:
    """Measure the latency table of a space on a target (resuming a table and database already on disk).

    Args:
        space: a `SearchSpace`, or a name in `search_space/` or a YAML path.
        target: a `TargetSpec`, or a name in `targets/` or a YAML path.
        trials: MetaSchedule trial budget over the unique kernels, records already in the database included;
            0 (and no `time_budget`) compiles TVM's default schedules.
        time_budget: tuning time ("90s", "20m", "1h" or seconds); with `trials`, whichever ends first.
        jobs: build processes and search threads (default: all cores).
        force: replace a table measured with tuning by an untuned one.
        tuning_settings: a :class:`tvm_nas.backend.tuning.Settings` (round size, search strategy).
        logs_dir: root of the per-target databases and tables (`<logs_dir>/<target>/`).
        seed: tuning seed.
        batch: batch size of the measured ops.

    Returns:
        The latency table, also written to `<logs_dir>/<target>/<space>.latency.json` after every op.
    """
    from ..backend import measure, tuning
    from ..backend.target import is_gpu, to_tvm_target
    from ..console import parse_duration

    console = console or Console(stderr=True)
    space, spec = load_space(space), load_target(target)
    if trials < 0:
        raise TvmNasError(f"--trials must be >= 0, got {trials}")
    if batch < 1:
        raise TvmNasError(f"--batch must be >= 1, got {batch}")
    if jobs is not None and jobs < 1:
        raise TvmNasError(f"--jobs must be >= 1, got {jobs}")
    budget_s = parse_duration(time_budget)
    tuned = trials > 0 or budget_s is not None
    tvm_target, gpu = to_tvm_target(spec), is_gpu(spec)
    if spec.cross_compiler:
        spec.check_cross_compiler()
    if spec.is_rpc:
        from ..backend.remote import check_tracker

        check_tracker(spec)
    work_dir = Path(logs_dir) / spec.name
    path = table_path(logs_dir, spec.name, space.name)
    settings = _settings(spec, trials, seed, batch)
    if budget_s is not None:  # absent otherwise: tables measured before time budgets existed still resume
        settings["time_budget_s"] = budget_s
    with exclusive(path, "latency table"):
        table = _open_table(path, space, spec, settings, tvm_target, force, say=console.print)
        keys = space.unique_op_keys()
        todo = [k for k in keys if k.key not in table.entries]
        n_all = len(space.op_keys())
        console.print(f"[bold]{space.name}[/] on [bold]{spec.name}[/] ({tvm_target.kind.name}): {n_all} candidate "
                      f"ops ({len(space.blocks())} blocks + fixed layers), {len(keys)} unique, "
                      f"{len(keys) - len(todo)} already measured")
        if todo:
            db = tuning.open_database(work_dir, spec) if tuned else None
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
                if tuned:
                    _tune(unique, space, spec, work_dir, trials, budget_s, seed, jobs, tuning_settings, db, prog,
                          console, timing)
                    db = tuning.open_database(work_dir, spec)  # re-read what the tuner wrote
                    t0 = time.perf_counter()
                task_of = {u: [t for t in unique.values() if u in t.users] for u in by_op}
                mbar = prog.add_task("measuring", total=len(todo))
                rng = np.random.default_rng(seed)
                if spec.is_rpc:
                    from .farm import measure_on_farm

                    measure_on_farm(todo, fused, task_of, table, path, db, spec, tvm_target, gpu, batch, rng,
                                    prog, mbar, timing, console)
                else:
                    with measure.target_session(spec) as sess:
                        _measure_ops(todo, fused, task_of, table, path, db, spec, tvm_target, gpu, batch, rng,
                                     sess, lambda: prog.advance(mbar), timing)
        if "invocation" not in table.meta:  # the module call's own cost, once per target (after the farm let go)
            with measure.target_session(spec) as sess:
                inv = measure.invocation_cost(spec, sess).to_json()
            check_invocation(path, inv, table.entries)  # never write a table its own loader refuses
            table.meta["invocation"] = inv
        table.meta["updated"] = _now()
        table.save(path)
    console.print(summary_table(table, space))
    console.print(f"latency table: {path}")
    return table


def _tune(unique, space, spec, work_dir, trials, budget_s, seed, jobs, settings, db, prog, console, timing):
    """Tune the space's kernels within the budget, showing each round and the ETA."""
    from ..backend import tuning
    from ..backend.budget import kernel_usage, op_frequency
    from ..backend.tuner import tune_budgeted
    from ..console import fmt_duration

    t0 = time.perf_counter()
    have = sum(tuning.records(db, t.mod) for t in unique.values())
    left = None if trials <= 0 else max(0, trials - have)  # records already in the database count
    if left == 0 and budget_s is None:
        console.print(f"tuning: the database already holds {have} records for these kernels (budget {trials})")
        return
    settings = settings or tuning.Settings()
    if jobs:
        settings.jobs = jobs
    total = left if left is not None else int(budget_s)
    tbar = prog.add_task("tuning" + (" (s)" if left is None else ""), total=total)
    t_start = time.monotonic()

    def on_round(e):
        prog.console.print("  " + e.describe())
        if left is None:
            prog.update(tbar, completed=min(total, time.monotonic() - t_start))

    usage = kernel_usage(unique, op_frequency(space))
    # the budget is the space's: a run resumed with ops already measured has fewer kernels, and the same budget
    keys = [f"space:{space.hash}:{k.key}" for k in space.unique_op_keys()]
    out = tune_budgeted(unique, spec, work_dir, trials=left, time_budget_s=budget_s, usage=usage, seed=seed,
                        settings=settings, on_round=on_round, say=lambda m: prog.console.print(m),
                        on_trials=(lambda n: prog.advance(tbar, n)) if left is not None else None, budget_keys=keys)
    prog.update(tbar, completed=total)
    before = f" (before: {out.expected_us_before:.0f} µs)" if out.expected_us_before else ""
    console.print(f"tuning: {out.trials} trials in {out.rounds} rounds, {fmt_duration(out.seconds)} "
                  f"({out.why_ended}); the tuned kernels add {out.expected_us_after:.0f} µs to an average net of "
                  f"the space{before}")
    timing.update(tune_s=round(timing.get("tune_s", 0) + time.perf_counter() - t0, 2),
                  tune_trials=timing.get("tune_trials", 0) + out.trials,
                  tune_curve=out.curve or timing.get("tune_curve", []),  # a resumed run that tuned nothing keeps it
                  tune_kernels=len(unique))


def _measure_ops(todo, fused, task_of, table, path, db, spec, tvm_target, gpu, batch, rng, sess, advance, timing):
    """Compile each op with the database and time it on the target; the table is saved after every op."""
    from ..backend import measure, tuning
    from ..backend.pipeline import build

    t0 = time.perf_counter()
    for i, k in enumerate(todo):
        exe = build(fused[k.key], tvm_target, db, gpu=gpu, prepack=not gpu)
        c, h, w = k.in_shape
        shape = (batch, c, h, w) if k.op == "stem_conv_k3" else (batch, h, w, c)
        x = rng.standard_normal(shape, dtype=np.float32)
        _, t = measure.run_and_time(exe, [x], spec, sess=sess)
        tasks = task_of[k.key]
        table.entries[k.key] = measured_entry(k, t, batch, sum(tuning.records(db, tk.mod) for tk in tasks),
                                              [f"{tk.name}#{tk.key}" for tk in tasks])
        timing.update(measure_s=round(time.perf_counter() - t0, 2), measured_ops=i + 1)
        table.save(path)
        advance()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _open_table(path: Path, space: SearchSpace, spec: TargetSpec, settings: dict, tvm_target,
                force: bool = False, say=print) -> LatencyTable:
    """The table on disk when it was measured under the same settings (resume), else a new one.

    A table measured with tuning is never silently replaced by an untuned one.
    """
    if path.exists():
        old = LatencyTable.load(path, space=space, target_name=spec.name)
        theirs = old.meta.get("settings") or {}
        if theirs == settings and old.target.get("hash") == spec.hash:
            return old
        old_tuned = (theirs.get("trials") or 0) > 0 or theirs.get("time_budget_s")
        new_tuned = settings["trials"] > 0 or settings.get("time_budget_s")
        if old_tuned and not new_tuned and not force and old.entries:
            budget = (f"--trials {theirs['trials']}" if theirs.get("trials") else
                      f"--time-budget {theirs.get('time_budget_s'):.0f}s")
            raise TvmNasError(f"{path}: field 'settings.trials': this table was measured with {budget}; "
                              "untuned timings would replace it: keep it, or add --force to replace it")
        changed = [f"{k} {theirs.get(k)!r} -> {settings.get(k)!r}"
                   for k in sorted({*theirs, *settings}) if theirs.get(k) != settings.get(k)]
        if old.target.get("hash") != spec.hash:
            changed.append("the target's definition")
        say(f"{path}: measured under other settings ({'; '.join(changed)}); measuring it again (the tuning "
            "database is kept and reused)")
    return LatencyTable(
        space={"name": space.name, "hash": space.hash},
        target={"name": spec.name, "hash": spec.hash, "tvm": json.loads(str(tvm_target))},
        meta={"tvm_version": settings["tvm_version"], "evaluator": settings["evaluator"],
              "batch_size": settings["batch_size"], "dtype": "float32", "created": _now(), "settings": settings},
        path=path)


def summary_table(table: LatencyTable, space: SearchSpace) -> Table:
    """The table as the terminal shows it; fits 80 columns (op names are never cut)."""
    t = Table(title=f"latency table: {table.space['name']} on {table.target['name']} (µs)",
              caption="IQR: interquartile range of the samples; * unstable: its rounds disagreed by more than the "
                      "protocol allows", caption_justify="left")
    for col in ("op", "in C×H×W", "out", "s", "median", "IQR", "trials"):
        t.add_column(col, justify="left" if col == "op" else "right", no_wrap=True)
    for k in space.unique_op_keys():
        e = table.entries.get(k.key)
        if e is None:
            continue
        c, h, w = k.in_shape
        iqr = f"{fmt_us(e['q1'])}–{fmt_us(e['q3'])}" if "q1" in e else NA
        flag = "" if e.get("stable", True) else " *"
        t.add_row(k.op, f"{c}×{h}×{w}", str(k.out_channels), str(k.stride), f"{fmt_us(e['median'])}{flag}", iqr,
                  str(e.get("trials", 0)))
    return t
