"""A learned correction of the table's whole-net prediction, fitted by `tvm-nas validate` on compiled nets.

The table predicts a net as the sum of its ops, each timed alone. What that sum misses depends on the net: on the
tuned proxyless-cifar table at one thread the miss grew with the net (−1% for the fastest net, −10% for the
slowest), because a big net's weights no longer stay in cache between its ops as each op's did in its own loop.
A proportional calibration cannot follow that. The correction learns the ratio measured / table sum with XGBoost
(depth-2 trees, flat outside the nets it has seen, the ratio non-decreasing in the table sum): from the table sum
alone, which keeps the table's order of the nets, or, when that cuts the error by a quarter more, from the sum and
the net's op counts (how many blocks chose each candidate); see :func:`fit_correction`.

It is used only where it beats the linear model (the plain sum, or the calibration when that qualifies) on nets it
was not trained on: leave-one-out over the validated nets, its median |error| lower and its worst no higher (the
rule, and when the file is written, kept or removed: :mod:`.model`). It then predicts every whole net (derive, the
budget check, compile, run); the search's gradient keeps the linear per-op table, whose expected latency stays
``fixed + Σ p_b @ v_b``.

File: ``<space>.correction.json`` beside ``<space>.latency.json`` (docs/formats.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ..errors import TvmNasError
from ..io import parse_json
from .fitted import FittedRecord, read_fitted, refuse

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


def _regressor(monotone: str):
    import xgboost as xgb

    return xgb.XGBRegressor(**PARAMS, monotone_constraints=monotone)


# Op counts must cut the order-keeping form's leave-one-out median by this share before they are used: with 20-odd
# nets, a dozen features fit noise that one feature cannot.
OPS_MARGIN = 0.25


def _fit_form(form: str, ops, p: np.ndarray, m: np.ndarray, baseline: dict) -> dict:
    names = sorted({o for net in ops for o in net}) if form == "ops" else []
    x = np.array([features(net, v, names) for net, v in zip(ops, p, strict=True)])
    y = m / p
    # the ratio never falls as the table sum grows (for the same op counts): a net the table puts slower is never
    # predicted faster for that reason alone
    monotone = "(" + ",".join(["1"] + ["0"] * len(names)) + ")"
    loo = []
    for i in range(len(p)):
        keep = np.arange(len(p)) != i
        model = _regressor(monotone).fit(x[keep], y[keep])
        loo.append(float(p[i] * model.predict(x[i:i + 1])[0]))
    err = 100 * np.abs(np.array(loo) / m - 1)
    med, worst = float(np.median(err)), float(err.max())
    return {"form": form, "features": ["table_sum_us", *names], "monotone_constraints": monotone, "loo_us": loo,
            "loo_median_abs_error_pct": med, "loo_worst_abs_error_pct": worst,
            "qualifies": bool(med < baseline["median_abs_error_pct"] and worst <= baseline["worst_abs_error_pct"]),
            "x": x, "y": y}


def baseline_of(calibration: dict | None, plain_median: float, plain_worst: float) -> dict:
    """The linear model a correction must beat: the calibration's leave-one-out scores when it is used (``better``),
    else the plain sum's |error| median and worst."""
    if calibration and calibration.get("better"):
        return {"name": "calibration", "median_abs_error_pct": calibration["loo_median_abs_error_pct"],
                "worst_abs_error_pct": calibration["loo_worst_abs_error_pct"]}
    return {"name": "table sum", "median_abs_error_pct": float(plain_median), "worst_abs_error_pct": float(plain_worst)}


def fit_correction(ops: Sequence[Sequence[str]], predicted, measured, baseline: dict) -> dict | None:
    """Fit measured / table sum on the nets' features and score it leave-one-out against `baseline`.

    Two forms are fitted, each with the ratio non-decreasing in the table sum:

    - ``sum``: the ratio from the table sum alone. The corrected prediction then keeps the table's order of the nets
      (sum × a non-decreasing positive ratio), so the search, which ranks nets by the linear table, and the
      whole-net figure never disagree on which net is faster.
    - ``ops``: the ratio from the table sum and each candidate's count in the net, for misses that depend on the op
      mix. Used instead only when it qualifies and cuts the ``sum`` form's median by :data:`OPS_MARGIN` or more
      (or the ``sum`` form does not qualify).

    A form qualifies when its leave-one-out median beats the baseline's and its worst does not exceed the
    baseline's worst.

    Args:
        ops: each net's ops (one candidate name per searchable block).
        predicted: each net's plain table sum (µs).
        measured: each net's measured latency (µs).
        baseline: ``{"name", "median_abs_error_pct", "worst_abs_error_pct"}`` of the linear model it must beat
            (the plain sum, or the calibration's leave-one-out scores when the calibration qualifies).

    Returns:
        None with fewer than :data:`MIN_NETS` nets. Otherwise the chosen form fitted on all nets (``booster``:
        XGBoost's JSON model), each net's leave-one-out prediction (``loo_us``), its scores, both forms' scores
        (``forms``) and ``better``: a form qualified (only then is it used).
    """
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if len(p) < MIN_NETS or np.ptp(p) == 0:
        return None
    forms = {f: _fit_form(f, ops, p, m, baseline) for f in ("sum", "ops")}
    s, o = forms["sum"], forms["ops"]
    use_ops = o["qualifies"] and (not s["qualifies"]
                                  or o["loo_median_abs_error_pct"] <= (1 - OPS_MARGIN) * s["loo_median_abs_error_pct"])
    pick = o if use_ops else s
    booster = _regressor(pick["monotone_constraints"]).fit(pick["x"], pick["y"]).get_booster()
    return {"schema": SCHEMA, "model": MODEL, "form": pick["form"], "features": pick["features"],
            "params": {**PARAMS, "monotone_constraints": pick["monotone_constraints"]}, "nets": int(len(p)),
            "loo_us": pick["loo_us"], "loo_median_abs_error_pct": pick["loo_median_abs_error_pct"],
            "loo_worst_abs_error_pct": pick["loo_worst_abs_error_pct"], "baseline": dict(baseline),
            "forms": {f: {k: v for k, v in d.items() if k in ("features", "loo_median_abs_error_pct",
                                                              "loo_worst_abs_error_pct", "qualifies")}
                      for f, d in forms.items()},
            "better": bool(s["qualifies"] or o["qualifies"]), "booster": booster.save_raw(raw_format="json").decode()}


class CorrectionFile(FittedRecord):
    """The correction beside a table (docs/formats.md), as :func:`fit_correction` and validate write it. The fields
    its readers use are required; every field is typed and bounded."""

    schema_: Literal[1] = Field(alias="schema")
    model: Literal["xgboost-ratio"]
    form: Literal["sum", "ops"]
    features: list[str] = Field(min_length=1, max_length=1000)
    params: dict[str, Any]
    booster: str = Field(min_length=2)
    table_hash: str
    nets: int = Field(ge=MIN_NETS)
    loo_median_abs_error_pct: float = Field(ge=0)
    loo_worst_abs_error_pct: float = Field(ge=0)
    baseline: dict[str, Any] = None

    @field_validator("features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        if v[0] != "table_sum_us":
            raise ValueError(f"the first feature must be 'table_sum_us', got {v[0]!r}")
        if len(set(v)) != len(v):
            raise ValueError("features are repeated")
        return v


class Correction:
    """A loaded correction: :meth:`predict` turns a net's table sum into its corrected latency."""

    def __init__(self, doc: dict, booster, path: Path | None = None):
        self.doc, self._booster, self.path = doc, booster, path
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


def load_correction(path: Path, table_hash: str, fallback: str = "plain table sum") -> Correction | None:
    """The correction beside a table, or None when there is none or when it was fitted to other entries (the table
    was measured again since). A damaged file, a field out of its schema (:class:`CorrectionFile`), a booster XGBoost
    cannot read or one whose ratio is not a finite positive number is refused in one line naming the file and the
    field: the table then predicts with its `fallback` (the calibration, else the plain sum)."""
    d = read_fitted(path, table_hash, CorrectionFile, fallback)
    if d is None:
        return None
    not_used = f"not used: predictions use the {fallback}"
    try:
        # XGBoost's own JSON parser recurses without a limit: the booster is parsed (and its depth bounded) first
        model = parse_json(d["booster"], f"{path}: field 'booster'", "XGBoost model")
        if not isinstance(model, dict) or not isinstance(model.get("learner"), dict):
            raise TvmNasError(f"{path}: field 'booster': not an XGBoost model (no 'learner')")
    except TvmNasError as e:
        refuse(path, f"{str(e).removeprefix(f'{path}: ')}; {not_used}")
        return None
    import xgboost as xgb

    try:
        booster = xgb.Booster()
        booster.load_model(bytearray(d["booster"].encode()))
        c = Correction(d, booster, path)
        probe = c.ratio([], 1.0)
    except (xgb.core.XGBoostError, ValueError, TypeError) as e:
        msg = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
        refuse(path, f"field 'booster': XGBoost cannot use it ({msg}); {not_used}")
        return None
    if not (math.isfinite(probe) and probe > 0):
        refuse(path, f"field 'booster': its ratio {probe:.4g} is not a finite positive number; {not_used}")
        return None
    return c
