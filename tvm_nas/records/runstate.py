"""A run folder's ``run.json``: each stage's result, and the model of the whole file for a pipeline of stages
(:func:`run_state_model`; :mod:`tvm_nas.stages` builds it from its stages' declarations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    create_model,
    model_validator,
)

from ..config import RunConfig
from .base import (
    Count,
    Fraction,
    Ops,
    RunPath,
    Schema1,
    Seconds,
    Sha256,
    TimingRecord,
    Us,
    _Fixed,
    _Open,
)
from .deploy import ValidationSummary


# -- run.json (run.py) ------------------------------------------------------------------------------------------------
class StageDone(_Open):
    """What every finished stage records: its seconds and the sha256 of each file it left for the next stages."""

    seconds: Seconds
    artifacts: dict[RunPath, Sha256] = Field(default_factory=dict)


class _Accuracies(_Open):
    accuracy: Fraction | None = None
    accuracy_set: Literal["test", "validation"] | None = None  # absent in runs written before held-out test sets
    val_accuracy: Fraction | None = None
    test_accuracy: Fraction | None = None


class ProfileDone(StageDone):
    table: RunPath
    fastest_us: Us
    slowest_us: Us
    budget_us: Us
    fastest_ops: Ops
    slowest_ops: Ops


class _Rival(_Open):
    ops: Ops
    measured_us: Us


class SearchDone(StageDone):
    arch: RunPath
    predicted_us: Us
    ops: Ops
    measured_us: Us | None = None  # the searched net's measured median when it was chosen by measurement
    # the random nets of its measured latency (timed in the same session), which the baselines stage trains
    matched: list[_Rival] | None = None
    rivals: list[_Rival] | None = None  # every net timed beside it, the matched ones drawn from these


class TrainDone(StageDone, _Accuracies):
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


class BaselinesDone(StageDone):
    nets: dict[str, _BaselineNet]
    supernet: _Supernet | None = None


class CompileDone(StageDone):
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
    measurement: TimingRecord | None = None  # median, q1, q3, stable, rounds
    measured_over_predicted: Annotated[float, Field(gt=0, le=1e9)] | None = None
    vs_tvm: Annotated[float, Field(gt=0, le=1e9)] | None = None
    setting: str | None = None
    check: str | None = None
    max_abs_err: Annotated[float, Field(allow_inf_nan=True)] | None = None  # a peer's wrong output may be NaN


class CompareDone(StageDone):
    rows: list[_CompareRow] = Field(default_factory=list)
    csv_file: RunPath | None = None  # absent in runs written before the stage named its files
    json_file: RunPath | None = None
    peers: list[Any] = Field(default_factory=list)


class ValidateDone(StageDone):
    result: RunPath
    summary: ValidationSummary


class ReportDone(StageDone):
    page: RunPath


class _Done(_Fixed):
    """Each finished stage's result, by stage name (the fields of the model :func:`run_state_model` builds)."""

    @model_validator(mode="before")
    @classmethod
    def _in_order(cls, data):
        """Stages finish in order, and a redone stage takes every later one with it: what is done is a prefix."""
        if isinstance(data, dict):
            order = [f.alias or k for k, f in cls.model_fields.items()]
            for i, stage in enumerate(order):
                before = next((s for s in order[:i] if s not in data), None)
                if stage in data and before is not None:
                    raise ValueError(f"stage '{stage}' is recorded as done but stage '{before}' before it is not")
        return data


class _RunStateBase(_Fixed):
    schema_: Schema1 = Field(alias="schema")
    config: RunConfig
    created: str
    baselines_partial: dict[str, _BaselineNet] = Field(default_factory=dict)  # while the baselines train
    compile_partial: dict[str, Literal["built"]] = Field(default_factory=dict)  # while the baselines compile


def run_state_model(stages: Sequence[tuple[str, type[StageDone]]]) -> type[BaseModel]:
    """The model of a run folder's ``run.json`` (schema 1) for a pipeline of ``(stage name, its result's model)``:
    the run's settings and each finished stage's result (:data:`tvm_nas.stages.RunState`)."""
    # each field is named `<stage>_` and read by its alias, the stage's name: `validate` would shadow BaseModel's
    done = create_model("Done", __base__=_Done,
                        **{f"{name}_": (model | None, Field(None, alias=name)) for name, model in stages})
    return create_model("RunState", __base__=_RunStateBase, done=(done, ...))
