"""The one measurement protocol behind every latency the product reports (table ops, compiled nets, peers).

A *sampler* runs one round of one module and returns that round's samples (µs per run, each sample the mean of
several runs filling a minimum time window). :func:`interleave` warms every sampler up, runs the rounds of all
modules interleaved (A B C A B C ...), checks between rounds that each module's last `rounds` round medians agree,
re-measures the modules that disagree, and flags the ones still unstable after the last round. A module is stable
once `rounds` consecutive rounds agree; its figure is the median (with its interquartile range) of every sample of
those rounds, and the rounds before them, measured while the machine was settling (a compile or a tuning run just
ended, another job left), are kept in the record as discarded. An unstable module's figure pools every round.
Never the lowest round. :func:`blocks` is the same protocol with a cool-down after each module's round and a
chosen order (forward, reverse, alternate), for runtimes that keep their own thread pools (``compare``'s peers).
No TVM here: the TVM samplers live in :mod:`tvm_nas.backend.measure`; the peers use :func:`python_sampler`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from .console import fmt_timing

Sampler = Callable[[], "list[float] | np.ndarray"]


@dataclass(frozen=True)
class Protocol:
    """How long and how often to measure.

    Attributes:
        number: runs averaged into one sample (grown until a sample fills `min_repeat_ms`).
        repeat: samples per round.
        min_repeat_ms: the shortest time one sample may cover.
        rounds: rounds per module before the stability check.
        max_rounds: rounds after which a module that is still unstable is flagged.
        tolerance: the largest spread of round medians (relative to their median) that counts as stable.
    """

    number: int = 10
    repeat: int = 20
    min_repeat_ms: float = 50
    rounds: int = 3
    max_rounds: int = 6
    tolerance: float = 0.05

    @classmethod
    def of(cls, evaluator, **over) -> Protocol:
        """The protocol of a target's `evaluator` settings (number, repeat, min_repeat_ms; rounds if given)."""
        d = {k: getattr(evaluator, k) for k in ("number", "repeat", "min_repeat_ms", "rounds", "max_rounds",
                                                 "tolerance") if hasattr(evaluator, k)}
        return cls(**{**d, **over})

    def to_json(self) -> dict:
        return asdict(self)


TIMING = ("median", "q1", "q3", "stable", "rounds")
"""A timing's figure, wherever one is written (manifest, validate.json, compare rows, per-layer kernels, the run's
summary): one object with these keys (µs; ``stable`` as the protocol judged it; ``rounds`` measured), never its
figures spread over other keys beside a net's fields."""


def figure(timing: Timing | dict | None) -> dict | None:
    """The :data:`TIMING` object of a timing (a :class:`Timing` or its JSON), or None."""
    if timing is None:
        return None
    get = timing.get if isinstance(timing, dict) else lambda k: getattr(timing, k)
    return {k: get(k) for k in TIMING}


@dataclass
class Timing:
    """Latency of one module (µs per run) under the protocol: median and quartiles of every sample of every round.

    Attributes:
        stable: the round medians agreed within the protocol's tolerance; an unstable figure is shown flagged.
        round_medians: median of each round, in the order measured (the discarded ones first).
        discarded: rounds measured before the agreeing window; not in the figure.
    """

    median: float
    q1: float
    q3: float
    mean: float
    std: float
    min: float
    count: int
    number: int
    where: str = ""
    rounds: int = 1
    stable: bool = True
    round_medians: list[float] = field(default_factory=list)
    load: float | None = None
    discarded: int = 0

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def spread(self) -> float:
        """Relative spread of the round medians in the figure ((max - min) / median)."""
        r = self.round_medians[self.discarded:]
        return (max(r) - min(r)) / self.median if len(r) > 1 and self.median > 0 else 0.0

    def to_json(self) -> dict:
        """Every field (with the :data:`TIMING` ones among them), the IQR and the rounds' spread."""
        return {**asdict(self), "iqr": self.iqr, "round_spread": round(self.spread, 4)}

    def label(self) -> str:
        """``123.4 µs (IQR 120.1–125.0)``, with ``UNSTABLE`` appended when the rounds disagreed."""
        return fmt_timing(self.median, self.q1, self.q3, self.stable, unit="µs")

    @classmethod
    def from_samples(cls, rounds: list[np.ndarray], number: int, where: str, tolerance: float,
                     load: float | None = None, window: int | None = None) -> Timing:
        """The figure of these rounds; with `window`, of the last `window` rounds when they agree (else all)."""
        meds = [float(np.median(r)) for r in rounds]
        skip = len(rounds) - window if window and len(rounds) > window and _stable(rounds[-window:], tolerance) else 0
        a = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds[skip:]])
        q1, med, q3 = np.percentile(a, [25, 50, 75])
        t = cls(float(med), float(q1), float(q3), float(a.mean()), float(a.std()), float(a.min()), len(a), number,
                where, len(rounds), True, meds, load, skip)
        t.stable = t.spread <= tolerance
        return t


def interleave(samplers: dict[str, Sampler], protocol: Protocol = Protocol(), where: dict[str, str] | None = None,
               number: dict[str, int] | None = None, on_round: Callable[[int], None] | None = None
               ) -> dict[str, Timing]:
    """Measure several modules in interleaved rounds, re-measuring the unstable ones; see the module docstring.

    Args:
        samplers: name -> sampler (one call = one round of samples, µs per run).
        protocol: rounds, tolerance and windows.
        where: name -> where it ran (stored in each :class:`Timing`).
        number: name -> runs per sample (stored in each :class:`Timing`).
        on_round: called after every round with the number of rounds done.

    Returns:
        name -> :class:`Timing`, in the order of `samplers`.
    """
    return blocks(samplers, protocol, where, number, on_round=on_round, order="forward", cooldown_s=0.0)[0]


ORDERS = ("forward", "reverse", "alternate")


def blocks(samplers: dict[str, Sampler], protocol: Protocol = Protocol(), where: dict[str, str] | None = None,
           number: dict[str, int] | None = None, on_round: Callable[[int], None] | None = None,
           order: str = "forward", cooldown_s: float = 0.0) -> tuple[dict[str, Timing], list[list[str]]]:
    """:func:`interleave` with a cool-down between blocks and a chosen order of the blocks in each round.

    A *block* is one call of one sampler: all of one runtime's `repeat` samples, back to back. After every block
    the process sleeps `cooldown_s`, so that a runtime whose idle threads spin or whose caches and clocks are hot
    hands the cores over settled, and no runtime has to switch off its own defaults for the others' sake. Rounds
    repeat the blocks of every runtime (re-measuring the unstable ones, as the protocol does), so each figure is
    pooled over rounds spread across the whole measurement, never one block's.

    Args:
        order: ``forward`` (the order of `samplers` in every round), ``reverse`` (the opposite, every round), or
            ``alternate`` (forward, then reversed, round after round: each runtime is as often early as late).
        cooldown_s: seconds of sleep after every block (and after every warm-up call).

    Returns:
        ``(name -> Timing, the names in the order run, one list per round)``.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    names = list(samplers)

    def run(todo: list[str], i: int) -> Iterator[str]:  # round i's blocks in their order, a cool-down after each
        for n in todo[::-1] if order == "reverse" or (order == "alternate" and i % 2) else todo:
            yield n
            if cooldown_s > 0:
                time.sleep(cooldown_s)

    for n in run(names, 0):  # warm-up: caches, lazy initialisation, thread pools
        samplers[n]()
    rounds: dict[str, list[np.ndarray]] = {n: [] for n in samplers}
    sequence: list[list[str]] = []
    todo = list(names)
    while todo and len(sequence) < protocol.max_rounds:
        seq = []
        for n in run(todo, len(sequence)):
            rounds[n].append(np.asarray(samplers[n](), dtype=np.float64))
            seq.append(n)
        sequence.append(seq)
        if on_round:
            on_round(len(sequence))
        if len(sequence) >= protocol.rounds:
            todo = [n for n in todo if not _stable(rounds[n][-protocol.rounds:], protocol.tolerance)]
    load = os.getloadavg()[0]
    timings = {n: Timing.from_samples(rounds[n], (number or {}).get(n, protocol.number), (where or {}).get(n, ""),
                                      protocol.tolerance, load, window=protocol.rounds) for n in samplers}
    return timings, sequence


def _stable(rounds: list[np.ndarray], tol: float) -> bool:
    meds = [float(np.median(r)) for r in rounds]
    mid = float(np.median(np.concatenate(rounds)))
    return mid > 0 and (max(meds) - min(meds)) / mid <= tol


def measure_one(sampler: Sampler, protocol: Protocol = Protocol(), where: str = "", number: int | None = None
                ) -> Timing:
    """:func:`interleave` of a single module."""
    return interleave({"m": sampler}, protocol, {"m": where}, {"m": number or protocol.number})["m"]


def python_sampler(fn: Callable[[], object], protocol: Protocol = Protocol()) -> tuple[Sampler, int]:
    """A sampler timing a Python callable (ONNX Runtime, PyTorch) under the protocol's windows.

    Each sample runs the callable at least `number` times and until `min_repeat_ms` have passed, so a sample
    covers its window however the machine's speed changes between rounds.

    Returns:
        ``(sampler, the least runs per sample)``.
    """
    fn()
    window = protocol.min_repeat_ms / 1e3

    def sample() -> list[float]:
        out = []
        for _ in range(protocol.repeat):
            n, t0 = 0, time.perf_counter()
            while True:
                fn()
                n += 1
                dt = time.perf_counter() - t0
                if n >= protocol.number and dt >= window:
                    break
            out.append(dt / n * 1e6)
        return out

    return sample, protocol.number
