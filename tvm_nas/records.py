"""The records tvm-nas writes for itself and reads back later: a run's state (``run.json``), a build's manifest
(``manifest.json``), a validation's result (``validate.json``), a search checkpoint's plain fields, the tuning time
ledger (``time_budget.json``) and a tuning database's target stamp (``target.json``).

Each has one strict pydantic model here, validated where the file is read: a damaged, hand-edited or hostile file is
one line of :class:`~tvm_nas.errors.TvmNasError` naming the file and the field, never a KeyError, TypeError or
AttributeError in a later stage. The readers return the file's object (validated), as the callers used it before.

Records whose fields the product alone writes refuse an unknown field (``extra="forbid"``); the open ones (a
stage's result, a timing, a fitted model's summary) keep fields they do not know, unread, and type the fields the
product reads. Every latency the product computes with is a finite positive number of µs, every duration a finite
number of seconds, every path a run records relative to its folder stays inside it. No torch or TVM here.
"""

from __future__ import annotations

import math
import os
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Json,
    RootModel,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .config import STAGES, RunConfig
from .errors import TvmNasError
from .io import read_json
from .space import MAX_BLOCKS
from .specfile import validation_error

M = TypeVar("M", bound=BaseModel)


class _Fixed(BaseModel):
    """Every field declared: an unknown one is a typo or another tool's file."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class _Open(BaseModel):
    """The fields the product reads are typed; others are kept as written, unread."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


# -- field types --------------------------------------------------------------------------------------------------
Us = Annotated[float, Field(gt=0, le=1e9)]  # a latency the product computes with: positive, under 1000 s
NonNeg = Annotated[float, Field(ge=0, le=1e12)]  # a spread, an error, a quartile
Seconds = Annotated[float, Field(ge=0, le=1e9)]
Count = Annotated[int, Field(ge=0, le=10**9)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Finite = float  # allow_inf_nan=False: no NaN, no infinity
Anything = Annotated[float, Field(allow_inf_nan=True)]  # written as measured (a diverged loss is NaN), only shown
Ops = Annotated[list[str], Field(max_length=MAX_BLOCKS)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, Field(max_length=100_000)]


def _correlation(v: float) -> float:
    """Kendall's τ or Spearman's ρ: NaN when undefined (one net, no order), else within [-1, 1]."""
    if not math.isnan(v) and not -1.000001 <= v <= 1.000001:
        raise ValueError(f"{v} is not a rank correlation (within -1 and 1, or NaN)")
    return v


Correlation = Annotated[float, Field(allow_inf_nan=True), AfterValidator(_correlation)]


def _in_run(rel: str) -> str:
    """A path a run records relative to its folder: never absolute, never ``..``, so it names a file inside."""
    p = PurePosixPath(rel)
    if not rel or "\0" in rel or p.is_absolute() or ".." in p.parts or len(rel) > 4096:
        raise ValueError(f"{rel[:80]!r} is not a path inside the run folder")
    return rel


RunPath = Annotated[str, AfterValidator(_in_run)]


def _schema_1(v: int) -> int:
    if v != 1:
        raise ValueError(f"schema {v} is not supported (this tvm-nas reads schema 1)")
    return v


Schema1 = Annotated[int, AfterValidator(_schema_1)]  # strict: `true` is not 1


def _one_line(msg: str) -> str:
    """A message that stays on one line whatever a hostile file's keys hold (newlines, control characters)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in msg)


def reason(e: TvmNasError, path: str | os.PathLike) -> str:
    """What a refusal of the file at `path` says about it, without the path and the generic advice (for a message
    that gives its own)."""
    return str(e).removeprefix(f"{path}: ").removesuffix("; delete it to start over")


def check(path: str | os.PathLike, data: object, model: type[M]) -> M:
    """`data` (read from `path`) as `model`; the first problem is one line naming the file and the field."""
    try:
        return model.model_validate(data, strict=True)  # nested models of their own config too (RunConfig)
    except ValidationError as e:
        raise TvmNasError(_one_line(str(validation_error(path, e)))) from None


def load_record(path: str | os.PathLike, model: type[M], what: str) -> tuple[M, dict]:
    """Read a JSON record (:func:`~tvm_nas.io.read_json`: bounded, nesting and encoding checked) and validate it.

    Returns:
        ``(model, the file's object)``; callers that update and rewrite the record keep using the object.
    """
    raw = read_json(path, what)
    return check(path, raw, model), raw


# -- the measurement of one module (a compiled net): what timing.Timing.to_json writes -------------------------------
class TimingRecord(_Open):
    median: Us
    q1: NonNeg
    q3: NonNeg
    stable: bool
    mean: NonNeg | None = None
    std: NonNeg | None = None
    min: NonNeg | None = None
    count: Count | None = None
    number: Count | None = None
    where: str | None = None
    rounds: Count | None = None
    round_medians: list[NonNeg] | None = None
    load: NonNeg | None = None
    discarded: Count | None = None
    iqr: NonNeg | None = None
    round_spread: NonNeg | None = None


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
    measured_latency_us: Us | None = None
    measured_iqr_us: Annotated[list[NonNeg], Field(min_length=2, max_length=2)] | None = None
    measurement: _Measurement
    measured_over_predicted: Annotated[float, Field(gt=0, le=1e9)] | None = None

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
    measured_us: Us
    measured_q1: NonNeg
    measured_q3: NonNeg
    stable: bool
    error_pct: Finite
    measurement: TimingRecord
    calibrated_us: Finite | None = None  # leave-one-out: a fold's fit may miss a net by any amount, either way
    corrected_us: Finite | None = None
    in_use_us: Us | None = None


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


# -- run.json (run.py) ------------------------------------------------------------------------------------------------
class _Stage(_Open):
    """What every finished stage records: its seconds and the sha256 of each file it left for the next stages."""

    seconds: Seconds
    artifacts: dict[RunPath, Sha256] = Field(default_factory=dict)


class _Accuracies(_Open):
    accuracy: Fraction | None = None
    accuracy_set: Literal["test", "validation"] | None = None  # absent in runs written before held-out test sets
    val_accuracy: Fraction | None = None
    test_accuracy: Fraction | None = None


class _ProfileDone(_Stage):
    table: RunPath
    fastest_us: Us
    slowest_us: Us
    budget_us: Us
    fastest_ops: Ops
    slowest_ops: Ops


class _SearchDone(_Stage):
    arch: RunPath
    predicted_us: Us
    ops: Ops


class _TrainDone(_Stage, _Accuracies):
    weights: RunPath


class _BaselineNet(_Accuracies):
    kind: str
    ops: Ops
    arch: RunPath
    weights: RunPath
    predicted_us: Us


class _Supernet(_Open):
    tau: Annotated[float, Field(ge=-1, le=1)] | None = None
    nets: Count | None = None
    accuracy_set: str | None = None
    shared_accuracy: dict[str, Fraction] = Field(default_factory=dict)


class _BaselinesDone(_Stage):
    nets: dict[str, _BaselineNet]
    supernet: _Supernet | None = None


class _CompileDone(_Stage):
    measured_us: dict[str, Us | None]
    manifest: RunPath
    module: RunPath
    onnx: RunPath


class _CompareRow(_Open):
    architecture: str | None = None
    target: str | None = None
    runtime: str | None = None
    predicted_us: Us | None = None
    measured_us: Us | None = None
    measured_q1_us: NonNeg | None = None
    measured_q3_us: NonNeg | None = None
    stable: bool | None = None
    measured_over_predicted: Annotated[float, Field(gt=0, le=1e9)] | None = None
    vs_tvm: Annotated[float, Field(gt=0, le=1e9)] | None = None
    setting: str | None = None
    check: str | None = None
    max_abs_err: Annotated[float, Field(allow_inf_nan=True)] | None = None  # a peer's wrong output may be NaN


class _CompareDone(_Stage):
    rows: list[_CompareRow] = Field(default_factory=list)
    peers: list[Any] = Field(default_factory=list)


class _ValidateDone(_Stage):
    result: RunPath
    summary: ValidationSummary


class _ReportDone(_Stage):
    page: RunPath


class _Done(_Fixed):
    profile: _ProfileDone | None = None
    search: _SearchDone | None = None
    train: _TrainDone | None = None
    baselines: _BaselinesDone | None = None
    compile: _CompileDone | None = None
    compare: _CompareDone | None = None
    validate_: _ValidateDone | None = Field(None, alias="validate")  # `validate` would shadow BaseModel's
    report: _ReportDone | None = None

    @model_validator(mode="before")
    @classmethod
    def _in_order(cls, data):
        """Stages finish in order, and a redone stage takes every later one with it: what is done is a prefix."""
        if isinstance(data, dict):
            for i, stage in enumerate(STAGES):
                before = next((s for s in STAGES[:i] if s not in data), None)
                if stage in data and before is not None:
                    raise ValueError(f"stage '{stage}' is recorded as done but stage '{before}' before it is not")
        return data


class RunState(_Fixed):
    """A run folder's ``run.json`` (schema 1): the run's settings and each finished stage's result."""

    schema_: Schema1 = Field(alias="schema")
    config: RunConfig
    done: _Done
    created: str
    baselines_partial: dict[str, _BaselineNet] = Field(default_factory=dict)  # while the baselines train
    compile_partial: dict[str, Literal["built"]] = Field(default_factory=dict)  # while the baselines compile


def load_run_state(path: str | os.PathLike) -> dict:
    """A run's ``run.json``, checked as :class:`RunState` (its `config` as a :class:`~tvm_nas.config.RunConfig`);
    the file's object."""
    _, raw = load_record(path, RunState, "run state")
    return raw


# -- checkpoint.pt's plain fields (search/loop.py) --------------------------------------------------------------------
class EpochRecord(_Open):
    """One epoch of a search's history (what ``log.jsonl`` holds): the fields a resumed search reads are typed."""

    epoch: Annotated[int, Field(ge=1)]
    phase: Literal["warmup", "search"]
    val_accuracy: Fraction
    train_accuracy: Fraction | None = None
    train_loss: Anything | None = None
    expected_latency_us: Anything | None = None
    ops: Ops | None = None


class _ParamGroup(_Open):
    """One parameter group of a torch optimizer's state dict: the hyperparameters a step computes with."""

    params: list[int]
    lr: NonNeg
    momentum: NonNeg | None = None
    dampening: NonNeg | None = None
    weight_decay: NonNeg | None = None
    nesterov: bool | None = None
    eps: NonNeg | None = None
    betas: tuple[Finite, Finite] | None = None


class _Optimizer(_Fixed):
    """``torch.optim.Optimizer.state_dict()``: per-parameter tensors (checked by the optimizer) and the groups."""

    state: dict[int, dict[str, Any]]
    param_groups: Annotated[list[_ParamGroup], Field(min_length=1, max_length=64)]


class _Schedule(_Open):
    """``torch.optim.lr_scheduler.CosineAnnealingLR.state_dict()``."""

    last_epoch: Annotated[int, Field(ge=-1, le=10**6)]
    base_lrs: list[NonNeg]
    last_lr: list[NonNeg] | None = Field(None, alias="_last_lr")


class CheckpointState(_Fixed):
    """The object a search checkpoint holds (format 2): tensors in the state dicts, JSON in two strings.

    Here the numbers, strings and the optimizers' hyperparameters; the tensors are checked by the supernet and the
    optimizers that load them (a mismatch is one line naming the field), and the supernet's for finiteness."""

    format: Literal[2]
    epoch: Annotated[int, Field(ge=0, le=10**6)]
    config: Json[dict[str, Any]]
    supernet: dict[str, Any]  # tensors: loaded by the supernet, which checks names and shapes; then finiteness
    weight_opt: _Optimizer
    weight_sched: _Schedule
    arch_opt: _Optimizer
    scaler: dict[str, Any] | None = None
    baseline: Finite | None = None
    history: Json[list[EpochRecord]]

    @field_validator("history")
    @classmethod
    def _one_record_per_epoch(cls, v: list[EpochRecord], info: ValidationInfo) -> list[EpochRecord]:
        epoch = info.data.get("epoch")
        if epoch is not None and [r.epoch for r in v] != list(range(1, epoch + 1)):
            raise ValueError(f"{len(v)} epoch records for {epoch} epochs done (each epoch once, in order)")
        return v


# -- time_budget.json (backend/budget.py) and target.json (backend/tuning.py) ----------------------------------------
class _Spent(_Fixed):
    spent_s: Seconds


class TimeLedgerFile(RootModel[dict[str, _Spent]]):
    """``time_budget.json``: a hash of a set of kernels -> the tuning seconds spent on them."""

    model_config = ConfigDict(strict=True)


class TargetStamp(_Fixed):
    """``target.json`` beside a tuning database: the target (and its TVM target string) the database serves."""

    name: str
    tvm: str
