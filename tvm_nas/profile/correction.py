"""A learned correction of the table's whole-net prediction, fitted by `tvm-nas validate` on compiled nets.

The table predicts a net as the sum of its ops, each timed alone. What that sum misses depends on the net: on the
tuned proxyless-cifar table at one thread the miss grew with the net (−1% for the fastest net, −10% for the
slowest), because a big net's weights no longer stay in cache between its ops as each op's did in its own loop.
A proportional calibration cannot follow that. The correction learns the ratio measured / table sum from the net's
op counts (how many blocks chose each candidate) and its table sum, with XGBoost (depth-2 trees, so it stays a
smooth share of the table's own figure and stays flat outside the nets it has seen).

It is used only where it beats the linear model (the plain sum, or the calibration when that qualifies) on nets it
was not trained on: leave-one-out over the validated nets, its median |error| lower and its worst no higher. It
then predicts every whole net (derive, the budget check, compile, run); the search's gradient keeps the linear
per-op table, whose expected latency stays ``fixed + Σ p_b @ v_b``.

File: ``<space>.correction.json`` beside ``<space>.latency.json`` (docs/formats.md).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SCHEMA = 1
MODEL = "xgboost-ratio"
# fewer nets than this cannot say which of a dozen features matter; validate then fits the calibration only
MIN_NETS = 10
PARAMS = {"n_estimators": 50, "max_depth": 2, "learning_rate": 0.2, "n_jobs": 1, "random_state": 0}


def correction_path(table: str | os.PathLike) -> Path:
    """`<space>.correction.json` beside `<space>.latency.json`."""
    table = Path(table)
    return table.with_name(table.name.replace(".latency.json", "") + ".correction.json")


def features(ops: Sequence[str], table_sum_us: float, names: Sequence[str]) -> list[float]:
    """A net's features: its table sum (µs) and how many of its blocks chose each candidate in `names`."""
    return [float(table_sum_us)] + [float(sum(o == n for o in ops)) for n in names]


def _regressor():
    import xgboost as xgb

    return xgb.XGBRegressor(**PARAMS)


def fit_correction(ops: Sequence[Sequence[str]], predicted, measured, baseline: dict) -> dict | None:
    """Fit measured / table sum on the nets' features and score it leave-one-out against `baseline`.

    Args:
        ops: each net's ops (one candidate name per searchable block).
        predicted: each net's plain table sum (µs).
        measured: each net's measured latency (µs).
        baseline: ``{"name", "median_abs_error_pct", "worst_abs_error_pct"}`` of the linear model it must beat
            (the plain sum, or the calibration's leave-one-out scores when the calibration qualifies).

    Returns:
        None with fewer than :data:`MIN_NETS` nets. Otherwise the fit on all nets (``booster``: XGBoost's JSON
        model), each net's leave-one-out prediction (``loo_us``), its scores and ``better``: it beat the baseline's
        median without exceeding its worst (only then is it used).
    """
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if len(p) < MIN_NETS or np.ptp(p) == 0:
        return None
    names = sorted({o for net in ops for o in net})
    x = np.array([features(net, v, names) for net, v in zip(ops, p, strict=True)])
    y = m / p
    loo = []
    for i in range(len(p)):
        keep = np.arange(len(p)) != i
        model = _regressor().fit(x[keep], y[keep])
        loo.append(float(p[i] * model.predict(x[i:i + 1])[0]))
    err = 100 * np.abs(np.array(loo) / m - 1)
    med, worst = float(np.median(err)), float(err.max())
    better = med < baseline["median_abs_error_pct"] and worst <= baseline["worst_abs_error_pct"]
    booster = _regressor().fit(x, y).get_booster().save_raw(raw_format="json").decode()
    return {"schema": SCHEMA, "model": MODEL, "features": ["table_sum_us", *names], "params": PARAMS,
            "nets": int(len(p)), "loo_us": loo, "loo_median_abs_error_pct": med, "loo_worst_abs_error_pct": worst,
            "baseline": dict(baseline), "better": bool(better), "booster": booster}


class Correction:
    """A loaded correction: :meth:`predict` turns a net's table sum into its corrected latency."""

    def __init__(self, doc: dict, booster):
        self.doc, self._booster = doc, booster
        self.names = doc["features"][1:]

    def ratio(self, ops: Sequence[str], table_sum_us: float) -> float:
        x = np.array([features(ops, table_sum_us, self.names)])
        return float(self._booster.inplace_predict(x)[0])

    def predict(self, ops: Sequence[str], table_sum_us: float) -> float:
        return table_sum_us * self.ratio(ops, table_sum_us)

    def __getitem__(self, k):
        return self.doc[k]

    def get(self, k, default=None):
        return self.doc.get(k, default)


def load_correction(path: Path, table_hash: str) -> Correction | None:
    """The correction beside a table, or None when there is none, when it was fitted to other entries (the table
    was measured again since), or when it is damaged: the table then predicts without it."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("table_hash") != table_hash or d.get("model") != MODEL \
            or not isinstance(d.get("booster"), str) or not isinstance(d.get("features"), list):
        return None
    import xgboost as xgb

    try:
        booster = xgb.Booster()
        booster.load_model(bytearray(d["booster"].encode()))
        c = Correction(d, booster)
        probe = c.ratio([], 1.0)
    except (xgb.core.XGBoostError, ValueError, TypeError):
        return None
    return c if math.isfinite(probe) and probe > 0 else None
