"""The calibration: what additivity misses, learned by `tvm-nas validate` from compiled nets.

measured ≈ scale × table sum + offset. An affine map of the sum, so it applies per op too: every op's latency times
the scale, the offset once per net, and the search's expected latency stays ``fixed + Σ p_b @ v_b``
(:class:`~tvm_nas.profile.model.LatencyModel` applies it).

File: ``<space>.calibration.json`` beside ``<space>.latency.json`` (docs/formats.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from .fitted import FittedRecord, read_fitted
from .table import PLAUSIBLE_US


def calibration_path(table: str | os.PathLike) -> Path:
    """`<space>.calibration.json` beside `<space>.latency.json`."""
    table = Path(table)
    return table.with_name(table.name.replace(".latency.json", "") + ".calibration.json")


# A calibration corrects what a table misses (a share of every net, a per-net cost); a scale outside this range, or
# an offset beyond the longest plausible op, is not a correction of the table it sits beside.
SCALE_RANGE = (0.01, 100.0)


class CalibrationFile(FittedRecord):
    """The calibration beside a table (docs/formats.md). Only ``scale``, ``offset_us`` and ``table_hash`` are
    required (a calibration written by hand is used like validate's); every field is typed and bounded."""

    scale: float = Field(ge=SCALE_RANGE[0], le=SCALE_RANGE[1])
    offset_us: float = Field(ge=-PLAUSIBLE_US[1], le=PLAUSIBLE_US[1])
    table_hash: str
    form: Literal["proportional", "affine"] = None
    nets: int = Field(default=None, ge=1)
    loo_median_abs_error_pct: float = Field(default=None, ge=0)
    loo_worst_abs_error_pct: float = Field(default=None, ge=0)
    additive_median_abs_error_pct: float = Field(default=None, ge=0)
    additive_worst_abs_error_pct: float = Field(default=None, ge=0)


def load_calibration(path: Path, table_hash: str) -> dict | None:
    """The calibration beside a table, or None when there is none, when it was fitted to other entries (the table
    was measured again since), or when it is damaged or out of bounds (said in one line): the table then predicts
    its plain sum. Every field of :class:`CalibrationFile` is in the dict (None where the file has none)."""
    d = read_fitted(path, table_hash, CalibrationFile, "plain table sum")
    if d is None:
        return None
    return {**{k: None for k in CalibrationFile.model_fields}, **d}


def _fit(p: np.ndarray, m: np.ndarray, form: str) -> tuple[float, float]:
    if form == "proportional":
        return float(p @ m / (p @ p)), 0.0
    if np.ptp(p) == 0:
        return 1.0, 0.0
    a, b = np.polyfit(p, m, 1)
    return float(a), float(b)


def fit_calibration(predicted, measured) -> dict | None:
    """Fit measured ≈ scale × predicted (+ offset), and score it leave-one-out against the plain sum.

    Two forms are fitted: `proportional` (the table misses a share of every net) and `affine` (a share and a
    per-net cost). Each is scored leave-one-out: every net predicted by a fit on the others. A form qualifies when
    its scale is positive, its median |error| beats the plain sum's and its worst does not exceed the plain sum's
    worst: an affine fit over nets 900–2,500 µs put its offset at −109 µs and missed a 349 µs net by 32% where the
    plain sum was 0.9% off, and a search with a tight budget lives among exactly such nets.

    Returns None with fewer than 5 nets. Otherwise the qualifying form with the lower median (else the affine one),
    fitted on all nets: `form`, `scale`, `offset_us`, each net's leave-one-out prediction (`loo_us`), both forms'
    scores (`forms`) and `better` (a form qualified; only then is the calibration used).
    """
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if len(p) < 5 or np.ptp(p) == 0:
        return None
    add_err = 100 * np.abs(p / m - 1)
    forms = {}
    for form in ("proportional", "affine"):
        loo = []
        for i in range(len(p)):
            keep = np.arange(len(p)) != i
            a, b = _fit(p[keep], m[keep], form)
            loo.append(a * p[i] + b)
        loo_err = 100 * np.abs(np.array(loo) / m - 1)
        scale, offset = _fit(p, m, form)
        ok = scale > 0 and np.median(loo_err) < np.median(add_err) and loo_err.max() <= add_err.max()
        forms[form] = {"scale": scale, "offset_us": offset, "loo_us": [float(v) for v in loo],
                       "loo_median_abs_error_pct": float(np.median(loo_err)),
                       "loo_worst_abs_error_pct": float(loo_err.max()), "qualifies": bool(ok)}
    good = [f for f in forms if forms[f]["qualifies"]]
    form = min(good, key=lambda f: forms[f]["loo_median_abs_error_pct"]) if good else "affine"
    pick = forms[form]
    return {"form": form, "scale": pick["scale"], "offset_us": pick["offset_us"], "nets": int(len(p)),
            "loo_us": pick["loo_us"], "loo_median_abs_error_pct": pick["loo_median_abs_error_pct"],
            "loo_worst_abs_error_pct": pick["loo_worst_abs_error_pct"],
            "additive_median_abs_error_pct": float(np.median(add_err)),
            "additive_worst_abs_error_pct": float(add_err.max()),
            "forms": {f: {k: v for k, v in d.items() if k != "loo_us"} for f, d in forms.items()},
            "better": bool(good)}
