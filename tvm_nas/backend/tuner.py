"""The tuning loop: one MetaSchedule round at a time, to the task the budget allocator picks.

Each round is one `tune_tasks` call on one task with a builder, a runner, a database and a cost model that live
for the whole run, so the XGBoost cost model learns from every task of the target (it is warm-started from the
records already in the database) and nothing measured is ever thrown away. Rounds run one after another: the
runner measures while nothing else runs, so the build workers and the search never disturb a measurement.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..console import fmt_duration
from . import database as dbfile
from .budget import Allocator, TimeLedger, round_size_for
from .tuning import Settings, Task, _builder, _quiet_logging, _runner, best_run_s, default_jobs, open_database, records


@dataclass
class RoundEvent:
    """What one round did, for progress displays."""

    task: str
    name: str
    index: int  # task's position among the tuned tasks (1-based)
    n_tasks: int
    round: int
    trials: int
    best_us: float | None
    before_us: float | None
    spent_trials: int
    max_trials: int | None
    elapsed_s: float
    eta_s: float | None
    stopped: str = ""

    def describe(self) -> str:
        """One progress line: the task, its round and trials, its best kernel against before, the run's trials."""
        was = f" (was {self.before_us:.1f})" if self.before_us else ""
        eta = f", eta {fmt_duration(self.eta_s)}" if self.eta_s is not None else ""
        stop = f"; stopped: {self.stopped}" if self.stopped else ""
        best = "none valid yet" if self.best_us is None else f"{self.best_us:.1f} µs"
        return (f"[{self.index}/{self.n_tasks}] {self.name}: round {self.round}, {self.trials} trials, best "
                f"{best}{was}; {self.spent_trials}"
                f"{'/' + str(self.max_trials) if self.max_trials else ''} trials{eta}{stop}")


@dataclass
class Outcome:
    """What a tuning run did."""

    trials: int = 0
    rounds: int = 0
    seconds: float = 0.0
    why_ended: str = ""
    per_task: dict[str, dict] = field(default_factory=dict)
    expected_us_before: float = 0.0
    expected_us_after: float = 0.0
    # the budget -> latency curve: after every round, [seconds, trials, expected µs of a net, kernels measured]
    curve: list[list[float]] = field(default_factory=list)


def _say(msg: str) -> None:
    print(f"tvm-nas: {msg}", file=sys.stderr)


def _warm_start(cost_model, ctxs: dict, tasks: dict[str, Task], db, per_task: int = 32) -> int:
    """Train the shared cost model on the best records already in the database (no pickles: rebuilt from JSON)."""
    from tvm.s_tir import meta_schedule as ms

    n = 0
    for k, t in tasks.items():
        if not db.has_workload(t.mod):
            continue
        recs = [r for r in db.get_top_k(db.commit_workload(t.mod), per_task) if r.run_secs]
        if not recs:
            continue
        cands = [r.as_measure_candidate() for r in recs]
        results = [ms.runner.RunnerResult(run_secs=list(r.run_secs), error_msg=None) for r in recs]
        cost_model.update(ctxs[k], cands, results)
        n += len(recs)
    return n


def tune_budgeted(tasks: dict[str, Task], spec, work_dir: str | Path, trials: int | None = None,
                  time_budget_s: float | None = None, usage: dict[str, float] | None = None, seed: int = 0,
                  settings: Settings | None = None, on_round: Callable[[RoundEvent], None] | None = None,
                  on_trials: Callable[[int], None] | None = None, say: Callable[[str], None] = _say,
                  lock_wait_s: float = 600.0, budget_keys: list[str] | None = None) -> Outcome:
    """Tune `tasks` into the target's database within a trial and/or time budget.

    Args:
        tasks: the unique kernels (from :func:`tvm_nas.backend.tuning.dedup`).
        trials: total new trials (None: no trial limit); records already in the database count as rounds done.
        time_budget_s: seconds for tuning (None: no time limit).
        usage: kernel key -> expected executions per net (default: the kernel's extracted weight).
        settings: jobs, round size and search strategy settings.
        on_round: called after every round (per-task progress, ETA).
        on_trials: called with the number of candidates measured, as they are measured.
        lock_wait_s: how long to wait (saying so) while another process writes the target's database.
        budget_keys: what the time budget is kept under (`time_budget.json`); default: the kernels' keys. A profile
            passes its space's ops, so a run resumed with some ops already measured (fewer kernels left) still
            draws on the same budget.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    settings = settings or Settings()
    out = Outcome()
    if not tasks or (trials is not None and trials <= 0):
        return out
    jobs = settings.jobs or default_jobs()
    _quiet_logging()
    from .workers import import_tensor_intrinsics

    import_tensor_intrinsics()  # TuneContext imports them all; do it with the fast stack walk
    usage = usage or {k: float(t.weight or 1) for k, t in tasks.items()}
    work_dir = Path(work_dir)
    with dbfile.writer(work_dir, wait_s=lock_wait_s, say=say):
        db = open_database(work_dir, spec, say=say, writer_held=True)
        have = {k: records(db, t.mod) for k, t in tasks.items()}
        fresh = sum(1 for v in have.values() if v == 0)
        ledger = TimeLedger(work_dir, budget_keys or tasks) if time_budget_s is not None else None
        if ledger is not None and ledger.base > 0:
            left_s = ledger.left(time_budget_s)
            say(f"time budget: {fmt_duration(ledger.base)} of {fmt_duration(time_budget_s)} already spent on these "
                f"kernels by an earlier run; {fmt_duration(left_s)} left")
            if left_s <= 0:
                out.why_ended = "time budget already spent"
                return out
            time_budget_s = left_s
        r_size = settings.round_size or round_size_for(trials, fresh or len(tasks))
        alloc = Allocator({k: usage.get(k, 1.0) for k in tasks}, r_size, max_trials=trials,
                          time_budget_s=time_budget_s, patience=settings.patience, min_gain=settings.min_gain)
        for k, t in tasks.items():
            if have[k]:
                alloc.resume(k, have[k], best_run_s(db, t.mod))
        out.expected_us_before = alloc.expected_latency_s() * 1e6
        population = settings.population or int(min(512, max(128, 8 * r_size)))
        strategy = ms.search_strategy.EvolutionarySearch(
            population_size=population, genetic_num_iters=settings.genetic_iters,
            init_min_unmeasured=min(50, max(8, r_size)))
        keys = list(tasks)
        ctx_list, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [tasks[k].extracted for k in keys], str(work_dir), strategy=strategy, seed=seed, num_threads=jobs)
        ctxs = dict(zip(keys, ctx_list, strict=True))
        cost_model = ms.cost_model.XGBModel(num_tuning_cores=jobs)
        warm = _warm_start(cost_model, ctxs, tasks, db)
        if warm:
            say(f"cost model warm-started from {warm} records in the database")
        builder, runner = _builder(spec, jobs), _runner(spec, say)
        counted = {"n": 0}

        @derived_object
        class _Count(ms.measure_callback.PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                counted["n"] += len(runner_results)
                if on_trials:
                    on_trials(len(runner_results))

        callbacks = list(ms.measure_callback.MeasureCallback.create("default")) + [_Count()]
        t_start = time.monotonic()
        while (k := alloc.next()) is not None:
            before = alloc.state[k].best_s
            counted["n"] = 0
            t0 = time.monotonic()
            ms.tune.tune_tasks(tasks=[ctxs[k]], task_weights=[1.0], work_dir=str(work_dir),
                               max_trials_global=r_size, max_trials_per_task=r_size, num_trials_per_iter=r_size,
                               builder=builder, runner=runner, database=db, cost_model=cost_model,
                               measure_callbacks=callbacks, task_scheduler="round-robin")
            best = best_run_s(db, tasks[k].mod)
            alloc.record(k, counted["n"], best, time.monotonic() - t0)
            if ledger is not None:
                ledger.save()
            out.rounds += 1
            out.curve.append([round(time.monotonic() - t_start, 1), alloc.spent_trials,
                              float(f"{alloc.expected_latency_s() * 1e6:.5g}"),  # relative: nets of 1 µs too
                              sum(1 for st in alloc.state.values() if st.best_s is not None)])
            if on_round:
                st = alloc.state[k]
                on_round(RoundEvent(k, tasks[k].name, keys.index(k) + 1, len(keys), st.rounds, st.trials,
                                    None if best is None else best * 1e6, None if before is None else before * 1e6,
                                    alloc.spent_trials, trials, time.monotonic() - t_start, alloc.eta_s(),
                                    st.stopped))
        if ledger is not None:
            ledger.save()  # the set-up before the first round (cost model, pools) counts too
        out.why_ended = alloc.exhausted() or "every task stopped improving"
        out.trials, out.seconds = alloc.spent_trials, time.monotonic() - t_start
        out.expected_us_after = alloc.expected_latency_s() * 1e6
        out.per_task = {k: {"rounds": s.rounds, "trials": s.trials, "best_us": None if s.best_s is None
                            else s.best_s * 1e6, "usage": s.usage, "stopped": s.stopped}
                        for k, s in alloc.state.items()}
    return out
