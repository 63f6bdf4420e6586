"""The deploy commands' records: a build's ``manifest.json`` (compile) and a validation's ``validate.json``.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .base import (
    Correlation,
    Count,
    Finite,
    Fraction,
    NonNeg,
    Ops,
    Schema1,
    Seconds,
    Sha256,
    TimingRecord,
    Us,
    _Fixed,
    _Open,
    load_record,
)


# -- manifest.json (deploy/compile.py: _manifest, time_builds) -------------------------------------------------------
class _ManifestArch(_Fixed):
    file: str | None = None
    label: str
    sha256: Sha256 | None = None
    space: str
    space_hash: str
    ops: Ops
    budget_us: Us | None = None


class _ManifestWeights(_Fixed):
    """Trained weights (`file`, `sha256`) or the seeded random ones (`random_seed`)."""

    file: str | None = None
    sha256: Sha256 | None = None
    random_seed: int | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.file is None) == (self.random_seed is None):
            raise ValueError("either 'file' and 'sha256' (trained weights) or 'random_seed'")
        return self


class _ManifestTarget(_Fixed):
    name: str
    hash: str
    tvm: dict[str, Any]
    cross_compiler: str | None = None
    threads: Annotated[int, Field(gt=0, le=4096)] | None = None


class _Tensor(_Fixed):
    name: str | None = None
    shape: Annotated[list[Annotated[int, Field(gt=0, le=1 << 20)]], Field(max_length=8)]
    dtype: str
    layout: str | None = None


class _Library(_Fixed):
    file: str  # a name inside the build folder: backend/trust.py:inside refuses any other before loading
    sha256: Sha256
    bytes: Count
    kind: str
    load_with: str


class _Onnx(_Open):
    file: str
    sha256: Sha256
    opset: Count | None = None
    max_abs_err: NonNeg | None = None


class _TaskNames(_Fixed):
    reused: list[str]
    tuned: list[str]
    untuned: list[str]


class _Tuning(_Fixed):
    database: str | None = None
    trials: Count
    total: Count
    reused: Count
    tuned: Count
    untuned: Count
    tasks: _TaskNames
    time_budget_s: Seconds | None = None  # compile --time-budget
    tuning_seconds: Seconds | None = None


class _Verification(_Open):
    status: Literal["passed", "skipped"]
    how: str
    max_abs_err: NonNeg | None = None


class _CalibrationInUse(_Open):
    scale: Finite
    offset_us: Finite
    nets: Count
    loo_median_abs_error_pct: NonNeg


class _CorrectionInUse(_Open):
    model: str
    nets: Count
    loo_median_abs_error_pct: NonNeg
    loo_worst_abs_error_pct: NonNeg


class _TableInUse(_Open):
    """What LatencyModel.manifest records of the model that predicted the net."""

    path: str | None = None
    hash: str
    calibration: _CalibrationInUse | None = None
    correction: _CorrectionInUse | None = None


class _Measurement(_Open):
    """How the module was timed (or why not), with the timing's figures when it was."""

    how: str
    median: Us | None = None
    q1: NonNeg | None = None
    q3: NonNeg | None = None
    stable: bool | None = None
    rounds: Count | None = None

    @model_validator(mode="after")
    def _figures_together(self):
        if self.median is not None and None in (self.q1, self.q3, self.stable):
            raise ValueError("a measurement with a median has 'q1', 'q3' and 'stable'")
        return self


class ManifestFile(_Fixed):
    """A build folder's ``manifest.json`` (schema 1), as ``tvm-nas compile`` writes and ``time_builds`` updates it."""

    schema_: Schema1 = Field(alias="schema")
    architecture: _ManifestArch
    weights: _ManifestWeights
    target: _ManifestTarget
    tvm_version: str
    frontend: Literal["torch.export", "onnx"]
    input: _Tensor
    output: _Tensor
    library: _Library
    onnx: _Onnx
    tuning: _Tuning
    compile_seconds: Seconds
    verification: _Verification
    predicted_latency_us: Us | None = None
    latency_table: _TableInUse | None = None
    measured_latency_us: Us | None = None  # the measurement's median
    measurement: _Measurement
    measured_over_predicted: Annotated[float, Field(gt=0, le=1e9)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _quartiles_once(cls, data):
        """Manifests written before the timing was one object also held its quartiles as ``measured_iqr_us``."""
        if isinstance(data, dict) and "measured_iqr_us" in data:
            data = {k: v for k, v in data.items() if k != "measured_iqr_us"}
        return data

    @field_validator("measurement")
    @classmethod
    def _measured_with_its_figures(cls, v: _Measurement, info: ValidationInfo) -> _Measurement:
        if info.data.get("measured_latency_us") is not None and v.median is None:
            raise ValueError("no median, and 'measured_latency_us' is given")
        return v


def load_manifest(path: str | os.PathLike) -> dict:
    """A build's ``manifest.json``, checked as :class:`ManifestFile`; the file's object."""
    return load_record(path, ManifestFile, "build manifest")[1]


# -- validate.json (deploy/validate.py) -------------------------------------------------------------------------------
class _Statistics(_Open):
    """Agreement of predictions with measurements (profile.model.statistics)."""

    nets: Count
    median_abs_error_pct: NonNeg
    worst_abs_error_pct: NonNeg
    mean_error_pct: Finite | None = None
    within_5pct: Fraction
    within_10pct: Fraction
    kendall_tau: Correlation
    spearman_rho: Correlation


class _InUse(_Statistics):
    model: str | None = None
    fitted_on: Count | None = None
    fitted: str | None = None


class _Fit(_Open):
    """A fit of validate (calibration or correction) as its summary records it: `better` decides whether it is used."""

    better: bool
    form: str | None = None
    nets: Count | None = None
    scale: Finite | None = None
    offset_us: Finite | None = None
    loo_median_abs_error_pct: NonNeg | None = None
    loo_worst_abs_error_pct: NonNeg | None = None
    leave_one_out: _Statistics | None = None
    table_hash: str | None = None
    load_avg: list[NonNeg] | None = None
    unstable_nets: Count | None = None
    not_used: str | None = None
    removed: str | None = None


class ValidationSummary(_Statistics):
    """validate's `summary` (also recorded by the run's validate stage)."""

    unstable: list[str]
    load_avg: Annotated[list[NonNeg], Field(max_length=3)]
    in_use: _InUse | None = None
    calibration: _Fit | None = None
    correction: _Fit | None = None


class _ValidatedNet(_Open):
    net: str
    ops: Ops
    predicted_us: Us
    untuned_kernels: Count
    max_abs_err: NonNeg
    build: str | None = None
    measured_us: Us  # the timing's median: what the table's prediction is scored and fitted against
    error_pct: Finite
    measurement: TimingRecord
    calibrated_us: Finite | None = None  # leave-one-out: a fold's fit may miss a net by any amount, either way
    corrected_us: Finite | None = None
    in_use_us: Us | None = None
    aliases: list[str] | None = None  # the net's other names (given twice: measured once)


class _SpaceRef(_Fixed):
    name: str
    hash: str


class _ValidatedTarget(_Fixed):
    name: str
    hash: str
    threads: Annotated[int, Field(gt=0, le=4096)] | None = None


class _ValidatedTable(_Fixed):
    path: str | None = None
    hash: str
    trials: Count | None = None
    invocation_us: NonNeg | None = None


class _Protocol(_Open):
    number: Count
    repeat: Count
    min_repeat_ms: NonNeg
    rounds: Count
    max_rounds: Count
    tolerance: NonNeg


class ValidationFile(_Fixed):
    """``validate.json`` (schema 1), as ``tvm-nas validate`` writes it."""

    schema_: Schema1 = Field(alias="schema")
    space: _SpaceRef
    target: _ValidatedTarget
    table: _ValidatedTable
    protocol: _Protocol
    where: str | None = None
    compile_seconds: Seconds
    summary: ValidationSummary
    nets: Annotated[list[_ValidatedNet], Field(max_length=100_000)]
    figure: str | None = None  # absent from the first write, before the figure is drawn


def load_validation(path: str | os.PathLike) -> dict:
    """A validation's ``validate.json``, checked as :class:`ValidationFile`; the file's object."""
    return load_record(path, ValidationFile, "validation result")[1]
