"""Where tuning time goes: whole rounds, allotted by each task's share of the space's expected latency.

Pure Python (no TVM): the tuner asks :class:`Allocator` which task gets the next round and tells it what the
round bought; the allocator stops tasks that have stopped improving and keeps to a trial and/or time budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..errors import TvmNasError


@dataclass
class TaskState:
    """What the allocator knows of one task."""

    key: str
    usage: float  # expected executions of this kernel per net of the space
    best_s: float | None = None  # best measured run time (seconds)
    trials: int = 0
    rounds: int = 0
    stalls: int = 0  # rounds in a row that did not improve the best by `min_gain`
    stopped: str = ""  # why it gets no more rounds ("" while active)

    @property
    def share(self) -> float:
        """Expected seconds this kernel adds to a net of the space (0 until measured)."""
        return (self.best_s or 0.0) * self.usage


@dataclass
class Allocator:
    """Picks the task that gets the next round.

    Every task first gets one round (the most used first), which measures its latency; after that each round goes
    to the active task with the largest expected-latency share per round already spent, so rounds end up roughly
    proportional to share. A task whose best has not improved by `min_gain` for `patience` rounds is stopped.

    Args:
        tasks: task key -> usage (expected executions per net of the space).
        round_size: candidates per round; rounds are never split.
        max_trials: trial budget (None: none), counting only trials spent from now on.
        time_budget_s: seconds from now (None: none); a round is not started when the average round would not
            fit in what is left.
    """

    tasks: dict[str, float]
    round_size: int
    max_trials: int | None = None
    time_budget_s: float | None = None
    patience: int = 2
    min_gain: float = 0.01
    state: dict[str, TaskState] = field(init=False)
    spent_trials: int = field(init=False, default=0)
    round_s: list[float] = field(init=False, default_factory=list)
    start: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self):
        if self.round_size < 1:
            raise ValueError("round_size must be >= 1")
        self.state = {k: TaskState(k, float(u)) for k, u in self.tasks.items()}

    def resume(self, key: str, trials: int, best_s: float | None) -> None:
        """A task's records already in the database count as rounds done."""
        st = self.state[key]
        st.trials, st.best_s = trials, best_s
        st.rounds = math.ceil(trials / self.round_size)

    # -- budget ---------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def mean_round_s(self) -> float | None:
        recent = self.round_s[-8:]
        return sum(recent) / len(recent) if recent else None

    def exhausted(self) -> str:
        """Why no further round fits, or ''."""
        if self.max_trials is not None and self.spent_trials + self.round_size > self.max_trials:
            return "trial budget spent"
        if self.time_budget_s is not None:
            left = self.time_budget_s - self.elapsed()
            if left <= 0 or (self.mean_round_s() or 0) > left:
                return "time budget spent"
        return ""

    def rounds_left(self) -> int | None:
        """Rounds the trial budget still allows (None without one)."""
        if self.max_trials is None:
            return None
        return max(0, (self.max_trials - self.spent_trials) // self.round_size)

    def eta_s(self) -> float | None:
        """Seconds until tuning ends: the time budget left, or the rounds left at the mean round time."""
        active = sum(1 for s in self.state.values() if not s.stopped)
        if self.exhausted() or not active:
            return 0.0
        eta = None
        mean = self.mean_round_s()
        if self.rounds_left() is not None and mean is not None:
            eta = self.rounds_left() * mean
        if self.time_budget_s is not None:
            left = max(0.0, self.time_budget_s - self.elapsed())
            eta = left if eta is None else min(eta, left)
        return eta

    # -- the choice -----------------------------------------------------------------------------------------
    def next(self) -> str | None:
        """The task that gets the next round, or None when the budget is spent or every task has stopped."""
        if self.exhausted():
            return None
        fresh = [s for s in self.state.values() if s.rounds == 0 and not s.stopped]
        if fresh:
            return max(fresh, key=lambda s: s.usage).key
        active = [s for s in self.state.values() if not s.stopped]
        if not active:
            return None
        return max(active, key=lambda s: (s.share / s.rounds, s.usage)).key

    def record(self, key: str, trials: int, best_s: float | None, seconds: float) -> bool:
        """What one round of `key` bought; True when it improved the task's best."""
        st = self.state[key]
        st.rounds += 1
        st.trials += trials
        self.spent_trials += trials
        self.round_s.append(seconds)
        improved = best_s is not None and (st.best_s is None or best_s < st.best_s * (1 - self.min_gain))
        if best_s is not None and (st.best_s is None or best_s < st.best_s):
            st.best_s = best_s
        if improved:
            st.stalls = 0
        else:
            st.stalls += 1
            if trials == 0:
                st.stopped = "search space exhausted"
            elif st.stalls >= self.patience:
                st.stopped = f"no gain >{self.min_gain:.0%} in {st.stalls} rounds"
        return improved

    def stop(self, key: str, why: str) -> None:
        self.state[key].stopped = why

    def expected_latency_s(self) -> float:
        """Expected seconds of a net of the space from the kernels measured so far."""
        return sum(s.share for s in self.state.values())


def op_frequency(space) -> dict[str, float]:
    """Expected occurrences of each unique op key in a net drawn uniformly from the space (`zero` costs nothing)."""
    freq: dict[str, float] = {}
    for k in space.fixed_layers():
        freq[k.key] = freq.get(k.key, 0.0) + 1.0
    for blk in space.blocks():
        for op in blk.candidates:
            if op != "zero":
                k = blk.key(op).key
                freq[k] = freq.get(k, 0.0) + 1.0 / len(blk.candidates)
    return freq


def kernel_usage(tasks: dict, op_freq: dict[str, float]) -> dict[str, float]:
    """Expected executions of each kernel per net: Σ over the ops that call it of (op frequency × calls in it)."""
    return {k: sum(op_freq.get(op, 0.0) * n for op, n in t.uses.items()) or 1e-9 for k, t in tasks.items()}


def round_size_for(trials: int | None, n_tasks: int, default: int = 32, largest: int = 64) -> int:
    """Candidates per round: a trial budget is first spread over all tasks (one round each), capped at `largest`."""
    if trials is None:
        return default
    return max(1, min(largest, trials // max(1, n_tasks)))


class TimeLedger:
    """Tuning time already spent on one set of kernels, kept beside the target's database (`time_budget.json`).

    A `--time-budget` is the total for the space's kernels, as a trial budget is (records already in the database
    count): a run stopped by a crash, a kill or Ctrl-C resumes with what is left, and a rerun of a finished command
    tunes nothing more. A larger budget tunes for the difference. The file maps a hash of the sorted keys it is
    given (the kernels', or a profile's space's ops) to the seconds spent; it is rewritten atomically after every
    round, so at most one round is lost.
    """

    FILE = "time_budget.json"

    def __init__(self, work_dir, kernel_keys):
        import hashlib
        from pathlib import Path

        self.path = Path(work_dir) / self.FILE
        self.key = hashlib.sha256("\n".join(sorted(kernel_keys)).encode()).hexdigest()[:16]
        self.base = self._read().get(self.key, {}).get("spent_s", 0.0)
        self.start = time.monotonic()

    def _read(self) -> dict:
        """The ledger's entries, checked as :class:`~tvm_nas.records.TimeLedgerFile`. A missing file is an empty
        ledger; a damaged one is said in one line and the budget starts again (the database is intact): a damaged
        ledger never stops tuning."""
        from ..io import read_json
        from ..records import TimeLedgerFile, check, reason

        if not self.path.exists() and not self.path.is_symlink():
            return {}
        try:
            data = check(self.path, read_json(self.path, "tuning time ledger"), TimeLedgerFile)
        except TvmNasError as e:
            from ..profile.fitted import refuse  # the one-line, once-per-process warning of a refused file

            refuse(self.path, f"{reason(e, self.path)}; not used: the time budget starts again "
                              "(the tuning database is intact)")
            return {}
        return {k: v.model_dump() for k, v in data.root.items()}

    def spent(self) -> float:
        """Seconds spent on these kernels, this run included."""
        return self.base + (time.monotonic() - self.start)

    def left(self, budget_s: float) -> float:
        """Seconds of `budget_s` not yet spent by earlier runs (when this ledger was opened)."""
        return max(0.0, budget_s - self.base)

    def save(self) -> None:
        from ..io import atomic_write_json

        data = self._read()
        data[self.key] = {"spent_s": round(self.spent(), 1)}
        atomic_write_json(self.path, data)
