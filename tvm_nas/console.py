"""What the user reads: progress bars, and the only place numbers become text (terminal, CSV notes, report).

Every latency is printed by :func:`fmt_us`, every accuracy by :func:`fmt_pct`, so the terminal and the report
never disagree on rounding or on how a missing value reads. Durations go both ways here: :func:`fmt_duration`, and
:func:`parse_duration` for the ``--time-budget`` a user writes.
"""

from __future__ import annotations

import math
import re

from .errors import TvmNasError

NA = "n/a"


def progress(console=None, transient: bool = False):
    """The progress display of long stages: bar, done/total, elapsed time and an ETA (`transient`: erased when
    done)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=transient)


def fmt_us(v: float | None, unit: str = "", sign: bool = False) -> str:
    """A latency in µs with one decimal (``171.3``; ``171.3 µs`` with ``unit="µs"``; ``+2.1`` with `sign`), or
    ``n/a``."""
    if v is None or not math.isfinite(v):
        return NA
    return (f"{v:+,.1f}" if sign else f"{v:,.1f}") + (f" {unit}" if unit else "")


def fmt_timing(median: float | None, q1: float | None = None, q3: float | None = None, stable: bool | None = True,
               unit: str = "") -> str:
    """A measured latency with its interquartile range, as every output shows it: ``171.3 (IQR 170.1–172.9)``,
    ``UNSTABLE`` after it when the protocol's rounds disagreed; or ``n/a``."""
    if median is None or not math.isfinite(median):
        return NA
    s = fmt_us(median, unit)
    if q1 is not None and q3 is not None:
        s += f" (IQR {fmt_us(q1)}–{fmt_us(q3)})"
    return s if stable is not False else s + " UNSTABLE"


def fmt_spread(median: float | None, iqr: float | None) -> str:
    """A median with its spread, ``171.3 ±2.1`` (half the interquartile range), or the median alone."""
    if iqr is None or median is None or not math.isfinite(iqr):
        return fmt_us(median)
    return f"{fmt_us(median)} ±{iqr / 2:,.1f}"


def fmt_pct(v: float | None) -> str:
    """An accuracy (a fraction) as a percent with one decimal (``81.0%``), or ``n/a``."""
    return NA if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def fmt_accuracy(v: float | None, accuracy_set: str | None) -> str:
    """An accuracy with the set it was measured on: ``81.0% (test)``, or ``81.0% (validation split)`` when no
    held-out set was measured (the search trained α on that split, so the figure favours the searched net)."""
    if v is None or not math.isfinite(v):
        return NA
    return f"{fmt_pct(v)} ({'test' if accuracy_set == 'test' else 'validation split'})"


def fmt_ratio(num: float | None, den: float | None = 1.0) -> str:
    """``num / den`` (a ratio already taken: `num` alone) as ``1.23x``, or ``n/a`` when either is missing."""
    if num is None or den is None or not den or not math.isfinite(num) or not math.isfinite(den):
        return NA
    return f"{num / den:.2f}x"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return NA
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m // 60} h {m % 60} min" if m >= 60 else f"{m} min {sec} s"


def fmt_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def over_budget(measured: float | None, q1: float | None, budget: float | None) -> str:
    """'' unless the measured latency is over the budget beyond the protocol's spread (its lower quartile above
    the budget); then one sentence saying so."""
    if measured is None or budget is None or not (q1 if q1 is not None else measured) > budget:
        return ""
    return (f"; MEASURED OVER BUDGET: {fmt_us(measured, 'µs')} (lower quartile "
            f"{fmt_us(q1 if q1 is not None else measured)}) > budget {fmt_us(budget, 'µs')}")


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float | int | None, what: str = "--time-budget") -> float | None:
    """Seconds in "90s", "20m", "1h", "1h30m" or a plain number of seconds; None stays None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", s):
            seconds = float(s)
        else:
            parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise TvmNasError(f"{what}: {text!r} is not a duration; write e.g. 90s, 20m, 1h or 1h30m")
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0 or math.isinf(seconds):
        raise TvmNasError(f"{what}: {text!r} must be a positive duration")
    return seconds


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
