"""MetaSchedule: task extraction, deduplication across many modules, budgeted tuning, the per-target database."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TvmNasError
from ..io import atomic_write_json
from .target import to_tvm_target


@dataclass
class Task:
    """One unique tuning task (a fused kernel), with the ops that use it."""

    key: str
    name: str
    mod: object  # tvm.IRModule of the kernel
    extracted: object  # ms.ExtractedTask
    users: list[str] = field(default_factory=list)
    weight: int = 0


def task_key(mod) -> str:
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def extract_tasks(fused, target) -> list:
    from tvm.s_tir import meta_schedule as ms

    return list(ms.relax_integration.extract_tasks(fused, target))


def dedup(tasks_by_user: dict[str, list]) -> dict[str, Task]:
    """Merge the tasks of many modules: identical kernels (structurally equal) are tuned once."""
    import tvm_ffi

    unique: dict[str, Task] = {}
    for user, tasks in tasks_by_user.items():
        for t in tasks:
            mod = t.dispatched[0]
            key = task_key(mod)
            if key in unique and not tvm_ffi.structural_equal(unique[key].mod, mod):
                key = f"{key}-{len(unique)}"  # hash collision: keep both
            task = unique.setdefault(key, Task(key, t.task_name, mod, t))
            task.users.append(user)
            task.weight += int(t.weight)
    return unique


# -- the database: one per target, never shared ----------------------------------------------------------------
def open_database(work_dir: str | Path, spec, create: bool = True):
    """The target's MetaSchedule JSON database in `work_dir`, refusing one written for another target."""
    from tvm.s_tir import meta_schedule as ms

    work_dir = Path(work_dir)
    stamp = work_dir / "target.json"
    mine = {"name": spec.name, "tvm": str(to_tvm_target(spec))}
    if stamp.is_file():
        try:
            theirs = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            theirs = {}
        if theirs.get("tvm") != mine["tvm"]:
            raise TvmNasError(f"{stamp}: field 'tvm': this tuning database was written for target "
                              f"{theirs.get('name')!r} ({theirs.get('tvm')}), not {spec.name!r} "
                              f"({mine['tvm']}); a database serves one target only: use another --logs-dir "
                              f"or delete {work_dir}")
    elif not create:
        return None
    work_dir.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file():
        atomic_write_json(stamp, mine)
    return ms.database.JSONDatabase(work_dir=str(work_dir), module_equality="structural")


def records(db, mod) -> int:
    """How many tuning records the database holds for this kernel."""
    if db is None or not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 1 << 20))


# -- tuning ------------------------------------------------------------------------------------------------------
def split_budget(trials: int, tasks: dict[str, Task], db) -> dict[str, int]:
    """Trials still owed to each task: an equal share of the budget less the records already in the database.

    The shares add up to `trials`; with fewer trials than tasks, the first `trials` tasks get one each.
    """
    if trials <= 0 or not tasks:
        return {}
    base, extra = divmod(trials, len(tasks))
    owed = {}
    for i, (k, t) in enumerate(tasks.items()):
        share = base + (1 if i < extra else 0)
        owed[k] = max(0, share - records(db, t.mod)) if share else 0
    return {k: v for k, v in owed.items() if v > 0}


def _builder(spec, target):
    from tvm.s_tir import meta_schedule as ms

    from . import workers

    f_export = None
    if spec.cross_compiler:
        spec.check_cross_compiler()
        f_export = workers.cross_exporter(spec.cross_compiler)
    return ms.builder.LocalBuilder(f_build=workers.build_kernel, f_export=f_export, max_workers=2, timeout_sec=60)


def _runner(spec):
    from tvm.s_tir import meta_schedule as ms

    ev = ms.runner.EvaluatorConfig(number=spec.evaluator.number, repeat=min(spec.evaluator.repeat, 5),
                                   min_repeat_ms=spec.evaluator.min_repeat_ms, enable_cpu_cache_flush=False)
    if spec.is_rpc:
        r = spec.runner
        from .remote import check_tracker

        check_tracker(spec)
        cfg = ms.runner.RPCConfig(tracker_host=r.tracker_host, tracker_port=r.tracker_port, tracker_key=r.key,
                                  session_timeout_sec=r.session_timeout_s)
        return ms.runner.RPCRunner(rpc_config=cfg, evaluator_config=ev, max_workers=1)
    return ms.runner.LocalRunner(evaluator_config=ev, timeout_sec=60)


def _quiet_logging() -> None:
    """MetaSchedule logs every step to stdout at the level of its logger: keep the console to warnings (the
    per-task logs in `<work_dir>/logs/` keep everything), and drop unnamed handlers, which its logging set-up
    cannot reconfigure when a process tunes a second time."""
    import logging

    log = logging.getLogger("tvm.s_tir.meta_schedule")
    for h in list(log.handlers):
        if h.get_name() is None:
            log.removeHandler(h)
    if log.level in (logging.NOTSET, logging.DEBUG, logging.INFO):
        log.setLevel(logging.WARNING)


def tune(tasks: dict[str, Task], owed: dict[str, int], spec, work_dir: str | Path, seed: int = 0,
         on_trials: Callable[[int], None] | None = None):
    """Tune the tasks that are owed trials, each up to what it is owed, into the target's database."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    if not owed:
        return
    from .workers import import_tensor_intrinsics

    import_tensor_intrinsics()  # TuneContext imports them all; do it with the fast stack walk
    _quiet_logging()
    target = to_tvm_target(spec)
    chosen = [tasks[k] for k in owed]
    per_task = max(owed.values())
    # The evolutionary search's defaults (2048 candidates evolved 4 times per round) cost ~1 min per task and
    # round on 2 cores; a population scaled to the trials per task keeps small budgets affordable.
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=int(min(2048, max(128, 32 * per_task))), genetic_num_iters=2 if per_task < 64 else 4,
        init_min_unmeasured=min(50, max(8, per_task)))
    ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        [t.extracted for t in chosen], str(work_dir), strategy=strategy, seed=seed, num_threads=2)

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            if on_trials:
                on_trials(len(runner_results))

    callbacks = list(ms.measure_callback.MeasureCallback.create("default")) + [_Progress()]
    ms.tune.tune_tasks(
        tasks=ctxs, task_weights=weights, work_dir=str(work_dir),
        max_trials_global=sum(owed.values()), max_trials_per_task=per_task,
        # a round never sends more candidates than the smallest share: otherwise the first tasks' rounds eat the
        # global budget and the last tasks get none (TVM_NOTES.md)
        num_trials_per_iter=max(1, min(64, min(owed.values()))),
        builder=_builder(spec, target), runner=_runner(spec), database=open_database(work_dir, spec),
        measure_callbacks=callbacks, cost_model="xgb", task_scheduler="gradient")

