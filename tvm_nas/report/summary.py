"""``summary.json``: the run's closing record, one model shared by its writer (``tvm-nas run``) and its reader
(the report).

Every section but the schema is optional for the reader, so a partial run still renders; the writer fills them all.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import TvmNasError
from ..io import atomic_write_json, read_json

SCHEMA = 1
SUMMARY = "summary.json"


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        """An optional field written as null takes its default (an empty list stays a list)."""
        if isinstance(data, dict):
            fields = cls.model_fields
            return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}
        return data


class BlockInfo(_Part):
    index: int
    in_channels: int
    out_channels: int
    stride: int = 1
    in_hw: int
    candidates: list[str]


class FixedInfo(_Part):
    op: str
    in_shape: list[int]
    out_channels: int
    stride: int = 1


class SpaceInfo(_Part):
    name: str = "?"
    hash: str = ""
    input: list[int] = Field(default_factory=list)
    num_classes: int | None = None
    blocks: list[BlockInfo] = Field(default_factory=list)
    fixed: list[FixedInfo] = Field(default_factory=list)


class TargetInfo(_Part):
    name: str = "?"
    tvm: dict | str | None = None


class ArchInfo(_Part):
    ops: list[str] = Field(default_factory=list)
    probabilities: list[dict[str, float]] = Field(default_factory=list)
    predicted_us: float | None = None
    path: str | None = None
    budget_met: bool | None = None
    budget_feasible: bool | None = None  # False: even the space's fastest net is over budget

    @property
    def budget_note(self) -> str:
        """'' when the net meets the budget (or nothing is known), else why it does not."""
        if self.budget_feasible is False:
            return "over budget: no net of the space meets it"
        return "over budget" if self.budget_met is False else ""


class TableInfo(_Part):
    path: str | None = None
    blocks: list[list[float | None]] = Field(default_factory=list)
    fixed_us: float | None = None


class TimingInfo(_Part):
    """One timing, by the same fields everywhere in the summary: median, quartiles, whether the rounds agreed, and
    how many rounds it took (None where the figure came without them)."""

    median: float
    q1: float | None = None
    q3: float | None = None
    stable: bool | None = None
    rounds: int | None = None


class NetInfo(_Part):
    name: str
    kind: str = "random"
    ops: list[str] = Field(default_factory=list)
    accuracy: float | None = None
    accuracy_set: str | None = None  # "test" (held out) or "validation" (the search's split)
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    supernet_accuracy: float | None = None  # validation accuracy with the supernet's shared weights
    predicted_us: float | None = None
    measurement: TimingInfo | None = None  # validate's interleaved timing, else the compile stage's median
    compile_measured_us: float | None = None
    calibrated_us: float | None = None  # the validate stage's calibrated prediction (fitted on the other nets)
    corrected_us: float | None = None  # the validate stage's learned correction (fitted on the other nets)

    @model_validator(mode="before")
    @classmethod
    def _older_timings(cls, data):
        """Summaries written before a timing was one object named ``measurement`` everywhere: it was ``measured``,
        and before that ``measured_us``, ``measured_q1``, ``_q3`` and ``stable`` beside the net's other fields."""
        if not isinstance(data, dict) or "measurement" in data:
            return data
        if "measured" in data:
            return {**{k: v for k, v in data.items() if k != "measured"}, "measurement": data["measured"]}
        if data.get("measured_us") is not None:
            return {**data, "measurement": {"median": data["measured_us"], "q1": data.get("measured_q1"),
                                            "q3": data.get("measured_q3"), "stable": data.get("stable")}}
        return data

    @property
    def measured_us(self) -> float | None:
        """The measured median (``measurement.median``), or None."""
        return None if self.measurement is None else self.measurement.median


class ValidationInfo(_Part):
    """The validate stage: agreement of the table with the run's nets, timed interleaved."""

    summary: dict = Field(default_factory=dict)
    result: str | None = None
    figure: str | None = None


class RankingInfo(_Part):
    """The searched net against random nets of its latency, trained alike, and the supernet's own ranking."""

    accuracy_set: str | None = None
    matched: int = 0
    rank: int | None = None  # 1 = best; only on a held-out test set
    matched_measured_within: int | None = None
    supernet_tau: float | None = None
    supernet_nets: int | None = None


class GroundTruthPoint(_Part):
    ops: list[str] = Field(default_factory=list)
    test_accuracy: float
    measured_us: float
    front: bool = False


class GroundTruthInfo(_Part):
    """Every net of the space trained alone and timed (bench/nasbench.py), when exported for this target."""

    data: str = ""
    recipe: dict = Field(default_factory=dict)
    noise_sd: float | None = None
    nets: list[GroundTruthPoint] = Field(default_factory=list)


class PeerRuntime(_Part):
    """One runtime's row of the compare stage: how it ran, its figure and its output check."""

    runtime: str
    measured_us: float | None = None
    vs_tvm: float | None = None  # its time over TVM's, both timed the same way (> 1: TVM is faster)
    setting: str | None = None  # how it ran, or why it did not
    check: str | None = None


class PeerInfo(_Part):
    net: str
    runtimes: list[PeerRuntime] = Field(default_factory=list)
    tvm_us: float | None = None
    tvm_untuned_us: float | None = None
    pytorch_us: float | None = None
    onnxruntime_us: float | None = None


class StageInfo(_Part):
    name: str
    seconds: float | None = None
    status: str = ""


class RunSummary(_Part):
    """`summary.json` as written by `tvm-nas run` (schema 1); every section but the schema is optional."""

    schema_version: int = Field(alias="schema")
    space: SpaceInfo = Field(default_factory=SpaceInfo)
    target: TargetInfo = Field(default_factory=TargetInfo)
    budget_us: float | None = None
    arch: ArchInfo | None = None
    latency_table: TableInfo | None = None
    nets: list[NetInfo] = Field(default_factory=list)
    ranking: RankingInfo | None = None
    ground_truth: GroundTruthInfo | None = None
    peers: list[PeerInfo] = Field(default_factory=list)
    validation: ValidationInfo | None = None
    stages: list[StageInfo] = Field(default_factory=list)
    artifacts: dict[str, str] = Field(default_factory=dict)

    @property
    def searched(self) -> NetInfo | None:
        """The searched net: the first of kind `searched`, else the first net."""
        return next((n for n in self.nets if n.kind == "searched"), self.nets[0] if self.nets else None)

    @property
    def predicted_us(self) -> float | None:
        if self.arch is not None and self.arch.predicted_us is not None:
            return self.arch.predicted_us
        return self.searched.predicted_us if self.searched else None


def write_summary(run_dir: str | os.PathLike, summary: RunSummary | dict) -> Path:
    """Validate `summary` against :class:`RunSummary` and write ``run_dir/summary.json`` (what the report reads)."""
    if not isinstance(summary, RunSummary):
        try:
            summary = RunSummary.model_validate({"schema": SCHEMA, **summary})
        except ValidationError as e:
            err = e.errors()[0]
            raise TvmNasError(f"summary.json: field '{'.'.join(str(p) for p in err['loc'])}': {err['msg']}") from None
    return atomic_write_json(Path(run_dir) / SUMMARY, summary.model_dump(mode="json", by_alias=True))


def load_summary(run_dir: str | os.PathLike) -> RunSummary:
    """Read and validate ``run_dir/summary.json``.

    Raises:
        TvmNasError: the file is missing, corrupted, of another schema, or a field has the wrong type.
    """
    path = Path(run_dir) / SUMMARY
    raw = read_json(path, "run summary (written by `tvm-nas run`)")
    if raw.get("schema") != SCHEMA:
        raise TvmNasError(f"{path}: schema {raw.get('schema')!r}, this tvm-nas reads schema {SCHEMA}; "
                          "rerun `tvm-nas run` with this version to rewrite it")
    try:
        return RunSummary.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise TvmNasError(f"{path}: {field}: {err['msg']} (got {err.get('input')!r}); "
                          "rerun `tvm-nas run` to rewrite the summary") from e
