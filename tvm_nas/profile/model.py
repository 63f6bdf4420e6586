"""The latency model: every prediction of a net's latency on a target goes through it.

A latency table (:mod:`.table`) gives each op's latency, timed alone; a net by the table is the plain sum of its ops.
`tvm-nas validate` compiles and times whole nets and may fit two models of what that sum misses: the calibration
(:mod:`.calibration`, an affine map of the sum) and the learned correction (:mod:`.correction`, the sum × a ratio
XGBoost learns). :class:`LatencyModel` is the table with the models fitted to it, and the one place that says

- which predicts: a whole net by the correction when there is one, else by the calibration, else by the plain sum
  (:data:`FITTED`, by precedence); an op by the calibration (the search's expected latency must stay
  ``fixed + Σ p_b @ v_b``, linear in the op probabilities, so the correction never applies per op);
- when a fitted model is written beside the table, kept or removed: written when, fitted on a validation's nets, it
  beats (leave-one-out) the model below it without worsening the worst net and at most a quarter of the nets were
  unstable; removed when a later validation's stable nets are predicted better without it
  (:meth:`LatencyModel.learn`). Validate measures the nets and hands its rows over; the model decides.

Load it once (:meth:`LatencyModel.load`, :meth:`LatencyModel.of`) and pass it on.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TvmNasError
from ..io import atomic_write_json
from ..space import Block, OpKey, SearchSpace
from .calibration import calibration_path, fit_calibration, load_calibration
from .correction import Correction, baseline_of, correction_path, fit_correction, load_correction
from .fitted import refuse
from .table import LatencyTable, table_path


@dataclass(frozen=True)
class Fitted:
    """One kind of model `validate` fits beside a table."""

    key: str  # its name in validate's summary, in a manifest, and the model's attribute
    name: str  # :attr:`LatencyModel.name` when it predicts whole nets
    label: str  # what the terminal and the figures call it
    row: str  # validate's per-net field of its leave-one-out prediction
    path: Callable[[str | os.PathLike], Path]  # its file beside the table's


CORRECTION = Fitted("correction", "corrected", "learned correction", "corrected_us", correction_path)
CALIBRATION = Fitted("calibration", "calibrated", "calibrated table", "calibrated_us", calibration_path)
# by precedence: the first one fitted to a table predicts its whole nets
FITTED = (CORRECTION, CALIBRATION)
PLAIN = "plain"


def chosen(fits: dict) -> Fitted | None:
    """The fitted model that predicts, among `fits` (key -> fit or None: a validation's summary, where a fit counts
    when it is ``better``, or a manifest's ``latency_table``, which lists the models in use), or None: the plain
    sum."""
    return next((f for f in FITTED if (fits.get(f.key) or {}).get("better", True) and fits.get(f.key)), None)


def statistics(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """Agreement of predictions with measurements: errors in % of the measured latency, rank correlations."""
    from scipy import stats

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    err = 100 * (p - m) / m
    a = np.abs(err)
    tau = stats.kendalltau(p, m).statistic if len(p) > 1 else float("nan")
    rho = stats.spearmanr(p, m).statistic if len(p) > 1 else float("nan")
    return {"nets": len(p), "median_abs_error_pct": float(np.median(a)), "worst_abs_error_pct": float(a.max()),
            "mean_error_pct": float(err.mean()), "within_5pct": float((a <= 5).mean()),
            "within_10pct": float((a <= 10).mean()), "kendall_tau": float(tau), "spearman_rho": float(rho)}


Say = Callable[[str], object]


class LatencyModel:
    """The latency (µs) of nets of one space on one target: a table and the models fitted to it.

    Attributes:
        table: the :class:`~tvm_nas.profile.table.LatencyTable` (entries, header, file).
        calibration: the calibration in use (its file's fields), or None.
        correction: the learned correction in use, or None.
    """

    def __init__(self, table: LatencyTable, calibration: dict | None = None, correction: Correction | None = None):
        self.table, self.calibration, self.correction = table, calibration, correction

    # -- loading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, space: SearchSpace | None = None, target_name: str | None = None,
             target=None) -> LatencyModel:
        """The table at `path` (checked as :meth:`LatencyTable.load` checks it) with the models fitted beside it.

        A fitted file that is damaged, out of its schema, or fitted to other entries (the table was measured again
        since) is not used; the first two are said in one line (:func:`~tvm_nas.profile.fitted.refuse`)."""
        return cls.fitted_to(LatencyTable.load(path, space=space, target_name=target_name, target=target))

    @classmethod
    def of(cls, space: SearchSpace, target, logs_dir: str | os.PathLike) -> LatencyModel:
        """The model of `space` on `target` (a TargetSpec) under `logs_dir`; one line saying how to make the table
        when there is none."""
        path = table_path(logs_dir, target.name, space.name)
        if not path.is_file():
            raise TvmNasError(f"{path}: no latency table of space '{space.name}' on target '{target.name}'; run: "
                              f"tvm-nas profile --space {space.name} --target {target.name} --logs-dir {logs_dir}")
        return cls.load(path, space=space, target=target)

    @classmethod
    def fitted_to(cls, table: LatencyTable) -> LatencyModel:
        """`table` with the models fitted beside its file (none for a table not saved)."""
        if table.path is None:
            return cls(table)
        calibration = load_calibration(calibration_path(table.path), table.hash)
        fallback = "calibration" if calibration else "plain table sum"
        return cls(table, calibration, load_correction(correction_path(table.path), table.hash, fallback=fallback))

    def copy_to(self, folder: str | os.PathLike) -> LatencyModel:
        """The table and the fitted files in use, copied into `folder` (a run's own copy; a fitted file there that
        is not in use here is removed); returns the model there."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / self.path.name
        shutil.copyfile(self.path, dest)
        for f in FITTED:
            if getattr(self, f.key) is not None:
                shutil.copyfile(f.path(self.path), f.path(dest))
            else:
                f.path(dest).unlink(missing_ok=True)
        return LatencyModel.load(dest)

    # -- which model predicts ------------------------------------------------------------------------
    @property
    def fitted(self) -> Fitted | None:
        """The fitted model that predicts whole nets, or None (the plain sum)."""
        return next((f for f in FITTED if getattr(self, f.key) is not None), None)

    @property
    def name(self) -> str:
        """``corrected``, ``calibrated`` or ``plain``: which model predicts whole nets."""
        return self.fitted.name if self.fitted else PLAIN

    @property
    def label(self) -> str:
        return self.fitted.label if self.fitted else "table"

    def manifest(self) -> dict:
        """What a build's manifest records of the model that predicted it (docs/formats.md)."""
        return {"path": str(self.path), "hash": self.hash,
                CALIBRATION.key: None if not self.calibration else {k: self.calibration[k] for k in (
                    "scale", "offset_us", "nets", "loo_median_abs_error_pct")},
                CORRECTION.key: None if self.correction is None else {k: self.correction[k] for k in (
                    "model", "nets", "loo_median_abs_error_pct", "loo_worst_abs_error_pct")}}

    # -- the table's header --------------------------------------------------------------------------
    @property
    def path(self) -> Path | None:
        return self.table.path

    @property
    def hash(self) -> str:
        return self.table.hash

    @property
    def space(self) -> dict:
        return self.table.space

    @property
    def target(self) -> dict:
        return self.table.target

    @property
    def meta(self) -> dict:
        return self.table.meta

    @property
    def entries(self) -> dict[str, dict]:
        return self.table.entries

    @property
    def invocation_us(self) -> float:
        return self.table.invocation_us

    def check_space(self, space: SearchSpace) -> None:
        self.table.check_space(space)

    def check_target(self, target_name: str, target_hash: str | None = None) -> None:
        self.table.check_target(target_name, target_hash)

    # -- per op: the linear view the search needs ----------------------------------------------------
    def _scale(self, calibrated: bool) -> float:
        return float(self.calibration["scale"]) if calibrated and self.calibration else 1.0

    def _offset(self, calibrated: bool) -> float:
        return float(self.calibration["offset_us"]) if calibrated and self.calibration else 0.0

    def latency(self, key: OpKey | str, calibrated: bool = True) -> float:
        """Latency (µs) one op adds to a network (:meth:`LatencyTable.op_us`), times the calibration's scale.

        The offset is added once per net, in :meth:`fixed_latency`: an affine map, so expected latency stays
        ``fixed + Σ p_b @ v_b``. The learned correction never applies per op."""
        return self._scale(calibrated) * self.table.op_us(key)

    def fixed_latency(self, space: SearchSpace, calibrated: bool = True) -> float:
        """Latency (µs) of what every net has (:meth:`LatencyTable.fixed_us`), calibrated, with the offset."""
        return self._scale(calibrated) * self.table.fixed_us(space) + self._offset(calibrated)

    def block_vector(self, block: Block) -> np.ndarray:
        """Latency (µs) of each candidate of a block, in the block's candidate order (zero -> 0)."""
        return np.array([self.latency(block.key(op)) for op in block.candidates], dtype=np.float64)

    def block_matrix(self, space: SearchSpace) -> list[np.ndarray]:
        """One latency vector per searchable block, so expected latency is ``fixed + Σ p_b @ v_b``."""
        return [self.block_vector(b) for b in space.blocks()]

    def extremes(self, space: SearchSpace) -> tuple[list[str], list[str]]:
        """The fastest and the slowest net of the space under this model (per-block argmin / argmax)."""
        fast, slow = [], []
        for b in space.blocks():
            v = self.block_vector(b)
            fast.append(b.candidates[int(np.argmin(v))])
            slow.append(b.candidates[int(np.argmax(v))])
        return fast, slow

    # -- whole nets ----------------------------------------------------------------------------------
    def predict(self, space: SearchSpace, ops: list[str], calibrated: bool = True) -> float:
        """Predicted latency (µs) of a whole net.

        The plain sum of the table when `calibrated` is False. Otherwise by the first model of :data:`FITTED`
        fitted to the table: the learned correction (the plain sum × the ratio it learned from the net's ops), else
        the calibration (an affine map of the sum), else the plain sum. A fitted model that predicts something
        other than a positive latency is refused in one line and dropped; the next one predicts.
        """
        blocks = space.blocks()
        if len(ops) != len(blocks):
            raise TvmNasError(f"{len(ops)} ops given for the {len(blocks)} blocks of space '{space.name}'")
        if calibrated and self.correction is not None:
            plain = self.predict(space, ops, calibrated=False)
            v = self.correction.predict(ops, plain)
            if math.isfinite(v) and v > 0:
                return v
            fallback = "calibration" if self.calibration else "plain table sum"
            refuse(self.correction.path, f"predicts {v:.4g} µs for a net whose table sum is {plain:.4g} µs, not a "
                   f"latency; not used: whole-net predictions use the {fallback}")
            self.correction = None
        v = self.fixed_latency(space, calibrated) + sum(self.latency(b.key(op), calibrated)
                                                        for b, op in zip(blocks, ops, strict=True))
        if calibrated and self.calibration and not (math.isfinite(v) and v > 0):
            refuse(calibration_path(self.path) if self.path else "calibration",
                   f"scale {self._scale(True):.4g} and offset_us {self._offset(True):.4g} predict {v:.4g} µs for "
                   "a net of this table, not a latency; not used: predictions use the plain table sum")
            self.calibration = None
            return self.predict(space, ops, calibrated=False)
        return v

    # -- learning from a validation ------------------------------------------------------------------
    def in_use(self, space: SearchSpace, rows: list[dict], say: Say = print) -> dict | None:
        """How the fitted model in use predicts the nets of a validation (`rows`: ``ops``, ``measured_us``) that it
        was not fitted on: the out-of-sample check a leave-one-out score stands for. None without such a model, or
        with fewer than 2 new nets (the same seed validates the same nets). Each new net's row gets that prediction
        (``in_use_us``)."""
        f = self.fitted
        model = getattr(self, f.key) if f else None
        if model is None or not isinstance(model.get("trained_on"), list):
            return None  # none, or fitted before its nets were recorded: which nets are new is unknown
        seen = {tuple(o) for o in model["trained_on"]}
        fresh = [r for r in rows if tuple(r["ops"]) not in seen]
        if len(fresh) < 2:
            return None
        for r in fresh:
            r["in_use_us"] = self.predict(space, r["ops"])
        st = statistics([r["in_use_us"] for r in fresh], [r["measured_us"] for r in fresh])
        st.update(model=f.label, fitted_on=model.get("nets"), fitted=model.get("fitted"))
        say(f"the {f.label} in use (fitted on {model.get('nets')} nets) on {len(fresh)} nets it was not fitted "
            f"on: |error| median {st['median_abs_error_pct']:.1f}%, worst {st['worst_abs_error_pct']:.1f}%; "
            f"within ±5% {100 * st['within_5pct']:.0f}%; Kendall τ {st['kendall_tau']:.2f}")
        return st

    def learn(self, rows: list[dict], summary: dict, say: Say = print) -> dict:
        """Fit the calibration, then the learned correction (which must beat it), on a validation's nets; write,
        keep or remove each beside the table (:meth:`learn_calibration`, :meth:`learn_correction`). Returns
        ``{"calibration": fit, "correction": fit}`` as validate's summary records them."""
        out = {CALIBRATION.key: self.learn_calibration(rows, summary, say)}
        out[CORRECTION.key] = self.learn_correction(rows, {**summary, **out}, say)
        return out

    def learn_calibration(self, rows: list[dict], summary: dict, say: Say = print) -> dict | None:
        """Fit measured ≈ scale × table sum (+ offset) on a validation's nets (`rows`: ``predicted_us``, the plain
        sum, and ``measured_us``; `summary`: ``unstable``, ``load_avg``); score it leave-one-out (each net predicted
        by a fit on the others). When that beats the plain sum's median without worsening its worst net, write it
        beside the table: every later prediction of the table uses it. Each row gets its leave-one-out prediction
        (``calibrated_us``). None with too few nets."""
        fit = fit_calibration([r["predicted_us"] for r in rows], [r["measured_us"] for r in rows])
        if fit is None:
            return None
        for r, v in zip(rows, fit["loo_us"], strict=True):
            r[CALIBRATION.row] = v
        return self._keep(fit, CALIBRATION, rows, summary, say,
                          f"measured ≈ {fit['scale']:.3f} × table sum {fit['offset_us']:+.1f} µs",
                          f"the plain sum's {fit['additive_median_abs_error_pct']:.1f}% median without exceeding its "
                          f"{fit['additive_worst_abs_error_pct']:.1f}% worst")

    def learn_correction(self, rows: list[dict], summary: dict, say: Say = print) -> dict | None:
        """Fit the learned correction (XGBoost on each net's op counts and table sum, see
        :mod:`~tvm_nas.profile.correction`) on a validation's nets; score it leave-one-out against the best linear
        model (`summary`'s ``calibration`` when it qualified there, else the plain sum: `summary`'s
        ``median_abs_error_pct`` and ``worst_abs_error_pct``). When it beats that model's median without exceeding
        its worst, write it beside the table: every later whole-net prediction uses it. Each row gets its
        leave-one-out prediction (``corrected_us``). None with too few nets."""
        base = baseline_of(summary.get(CALIBRATION.key), summary["median_abs_error_pct"],
                           summary["worst_abs_error_pct"])
        fit = fit_correction([r["ops"] for r in rows], [r["predicted_us"] for r in rows],
                             [r["measured_us"] for r in rows], base)
        if fit is None:
            return None
        for r, v in zip(rows, fit["loo_us"], strict=True):
            r[CORRECTION.row] = v
        of = "sum" if fit["form"] == "sum" else "sum and op counts"
        return self._keep(fit, CORRECTION, rows, summary, say,
                          f"measured ≈ table sum × an XGBoost ratio of the {of}",
                          f"the {base['name']}'s {base['median_abs_error_pct']:.1f}% median without exceeding its "
                          f"{base['worst_abs_error_pct']:.1f}% worst")

    def _keep(self, fit: dict, what: Fitted, rows: list[dict], summary: dict, say: Say, form: str,
              beat: str) -> dict:
        """Write a fitted model beside the table when it qualified on stable nets; remove an earlier one when stable
        nets are predicted better without it. This model keeps predicting as it was loaded (a validation's figures
        stay those of the model it checked); a model loaded afterwards uses what is beside the table. Returns the
        fit as recorded in the summary (no per-net lists, no model)."""
        where = what.path(self.path)
        loo = fit.pop("loo_us")
        stats = statistics(loo, [r["measured_us"] for r in rows])
        fit.update(leave_one_out=stats, table_hash=self.hash, load_avg=summary["load_avg"],
                   fitted=time.strftime("%Y-%m-%dT%H:%M:%S%z"), unstable_nets=len(summary["unstable"]),
                   trained_on=[list(r["ops"]) for r in rows])
        # A machine that changes speed mid-validation slows every net in the same rounds, so many nets turn unstable
        # (10 of 23 in the case in docs/measurement.md); a fit to that would learn the machine's state. One unstable
        # net among several is that net's own noise.
        if fit["better"] and len(summary["unstable"]) > len(rows) // 4:
            fit["better"] = False
            fit["not_used"] = f"{len(summary['unstable'])} net(s) unstable"
            say(f"{what.key} not used: {len(summary['unstable'])} of {len(rows)} nets were unstable (the machine "
                "changed speed while they were timed), and a fit to them would learn the machine's state, not "
                f"the table's error; leave-one-out it gave {fit['loo_median_abs_error_pct']:.1f}% median")
        elif fit["better"]:
            atomic_write_json(where, fit)
            say(f"{what.key}: {form}; leave-one-out |error| {fit['loo_median_abs_error_pct']:.1f}% median, "
                f"{fit['loo_worst_abs_error_pct']:.1f}% worst, beating {beat}: written to {where}, used by "
                "every later prediction of this table")
        else:
            say(f"{what.key} not used: leave-one-out |error| {fit['loo_median_abs_error_pct']:.1f}% median, "
                f"{fit['loo_worst_abs_error_pct']:.1f}% worst does not beat {beat}")
            # stable nets that are predicted better without it overrule an earlier fit of this table (a refusal for
            # unstable nets above says nothing about the table, and keeps it)
            if where.is_file():
                where.unlink()
                fit["removed"] = str(where)
                say(f"removed the earlier {what.key} {where}: these nets are predicted better without it")
        fit.pop("booster", None)
        fit.pop("trained_on")
        return fit
