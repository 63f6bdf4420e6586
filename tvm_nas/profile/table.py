"""The latency table: one measured (or predicted) latency per unique op of a space on one target.

Format: docs/formats.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import TvmNasError
from ..io import atomic_write_json, read_json, sha256_json
from ..space import OpKey, SearchSpace
from ..specfile import validation_error

SCHEMA = 1
UNITS = "us"
# a measured op takes at least tens of nanoseconds and less than minutes: anything outside is a damaged file
PLAUSIBLE_US = (0.01, 1e8)


def _finite(v: object) -> bool:
    """A JSON number Python can use as a float: not a bool, not NaN or infinite, not an integer past 1e308."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _check_entry(path: Path, key: str, e: object) -> None:
    """One line naming the entry and the field for any value a search could not use."""
    try:
        OpKey.from_key(key)
    except (ValueError, AttributeError):
        raise TvmNasError(f"{path}: entry '{key}': not an op key (op|CxHxW|out|sSTRIDE)") from None
    if not isinstance(e, dict):
        raise TvmNasError(f"{path}: entry '{key}': not an object")
    lo, hi = PLAUSIBLE_US
    for f in ("median", "std"):
        v = e.get(f)
        if v is None:
            raise TvmNasError(f"{path}: entry '{key}': field '{f}' missing; re-measure with tvm-nas profile")
        if not _finite(v):
            raise TvmNasError(f"{path}: entry '{key}': field '{f}': {str(v)[:40]} is not a finite number")
    if not lo <= e["median"] <= hi:
        raise TvmNasError(f"{path}: entry '{key}': field 'median': {e['median']!r} µs is not a plausible latency "
                          f"({lo:g}–{hi:g} µs); re-measure with tvm-nas profile")
    if e["std"] < 0:
        raise TvmNasError(f"{path}: entry '{key}': field 'std': {e['std']!r} is negative")


# -- the file's schema: one model, strict types, used by every reader -----------------------------------------------
class _Record(BaseModel):
    """A fixed set of fields: an unknown one is refused (a typo, or another tool's file)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, populate_by_name=True)


class _Open(BaseModel):
    """A record of the measurement protocol (an entry's figures, the settings, the timings): the fields the tool
    reads are typed; the others are kept as written, unread."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


Us = float  # µs; strict: an int is accepted, a bool or a string is not; allow_inf_nan=False: finite only


class _SpaceRef(_Record):
    name: str
    hash: str


class _TargetRef(_Record):
    name: str
    hash: str
    tvm: dict[str, Any] | None = None


class _Entry(_Open):
    op: str | None = None
    in_shape: list[int] | None = None
    out_channels: int | None = Field(default=None, gt=0)
    stride: int | None = Field(default=None, gt=0)
    median: Us
    std: Us = Field(ge=0)
    mean: Us | None = None
    min: Us | None = None
    q1: Us | None = None
    q3: Us | None = None
    count: int | None = Field(default=None, ge=0)
    rounds: int | None = Field(default=None, ge=0)
    discarded_rounds: int | None = Field(default=None, ge=0)
    round_medians: list[Us] | None = None
    stable: bool | None = None
    load: float | None = None
    trials: int | None = Field(default=None, ge=0)
    tasks: list[str] | None = None
    source: str | None = None
    measured_at: str | None = None


class _Invocation(_Open):
    median: Us = Field(ge=0)


class _Settings(_Open):
    trials: int | None = Field(default=None, ge=0)
    time_budget_s: float | None = Field(default=None, ge=0)


class _Timing(_Open):
    lower_s: float | None = Field(default=None, ge=0)
    tune_s: float | None = Field(default=None, ge=0)
    measure_s: float | None = Field(default=None, ge=0)
    tune_trials: int | None = Field(default=None, ge=0)
    tune_kernels: int | None = Field(default=None, ge=0)
    tune_curve: list[list[float]] | None = None


class TableFile(_Record):
    """A latency table file (docs/formats.md). A field that may be absent is never null: its readers take the
    record (``settings``, ``invocation``) or nothing."""

    schema_: Literal[1] = Field(alias="schema")
    space: _SpaceRef
    target: _TargetRef
    tvm_version: str = None
    evaluator: dict[str, int] = None
    batch_size: int = Field(default=None, gt=0)
    dtype: str = None
    created: str = None
    updated: str = None
    settings: _Settings = None
    timing: _Timing = None
    dedup: dict[str, int] = None
    invocation: _Invocation = None
    units: Literal["us"] = None
    entries: dict[str, _Entry]


def measured_entry(key: OpKey, t, batch: int, trials: int, tasks: list[str]) -> dict:
    """A table entry from an op's :class:`~tvm_nas.timing.Timing` (the same fields wherever it was measured)."""
    return {"op": key.op, "in_shape": [batch, *key.in_shape], "out_channels": key.out_channels,
            "stride": key.stride, "median": t.median, "q1": t.q1, "q3": t.q3, "mean": t.mean, "std": t.std,
            "min": t.min, "count": t.count, "rounds": t.rounds, "discarded_rounds": t.discarded,
            "round_medians": [round(m, 4) for m in t.round_medians], "stable": t.stable, "load": t.load,
            "trials": trials, "tasks": tasks, "source": "measured", "measured_at": t.where}


# A module call cannot cost much more than the cheapest whole call that includes it. It can cost a little more:
# an op whose kernel does next to nothing (the classifier of a small net) is a module call plus noise, and its
# median lands on either side of the empty call's. Beyond this factor the figure is not a call's cost.
INVOCATION_SLACK = 2.0


def check_invocation(path, inv, entries: dict) -> None:
    """Refuse an ``invocation`` record that is not a per-call cost of this table (see :data:`INVOCATION_SLACK`).

    Entries below it cost 0 over the call (:meth:`LatencyTable.op_us` clamps), so near-equality is fine."""
    if inv is None:
        return
    v = inv.get("median") if isinstance(inv, dict) else None
    low = min((float(e["median"]) for e in entries.values()), default=float("inf"))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not 0 <= v <= INVOCATION_SLACK * low:
        raise TvmNasError(f"{path}: field 'invocation.median': {v!r} is not a per-call cost of this table (it must "
                          f"be at most {INVOCATION_SLACK:g}x the cheapest entry, {low:.3g} µs); "
                          "re-measure with tvm-nas profile")


@dataclass
class LatencyTable:
    """Per-op latencies (µs) of one search space on one target: the file and its plain lookups.

    What a net costs by this table is the plain sum of its ops (:meth:`sum_us`). Every prediction of the product
    goes through :class:`~tvm_nas.profile.model.LatencyModel`, which applies the models `tvm-nas validate` fitted
    to the table; this class knows nothing of them.

    Attributes:
        space: ``{"name", "hash"}`` of the space it was measured for.
        target: ``{"name", "tvm", "hash"}`` of the target it was measured on.
        meta: everything else of the file header (TVM version, evaluator, batch size, dtype, settings...).
        entries: key (:attr:`OpKey.key`) -> entry dict with mean/median/std/count/trials/tasks/source.
    """

    space: dict
    target: dict
    meta: dict = field(default_factory=dict)
    entries: dict[str, dict] = field(default_factory=dict)
    path: Path | None = None

    # -- file format ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"schema": SCHEMA, "space": self.space, "target": self.target, **self.meta, "units": UNITS,
                "entries": self.entries}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        path = Path(path or self.path)
        atomic_write_json(path, self.to_json())
        self.path = path
        return path

    @property
    def hash(self) -> str:
        return sha256_json({"space": self.space, "target": self.target, "entries": self.entries})[:16]

    @classmethod
    def load(cls, path: str | os.PathLike, space: SearchSpace | None = None,
             target_name: str | None = None, target=None) -> LatencyTable:
        """Load a table, refusing a corrupted file or one measured for another space or target.

        Args:
            path: the table file.
            space: the space it must have been measured for (name and definition hash).
            target_name: the target it must have been measured on (name only).
            target: a :class:`~tvm_nas.targets.TargetSpec` it must have been measured on (name and definition
                hash: a target file that reuses another target's name is refused).
        """
        path = Path(path)
        d = read_json(path, "latency table")
        try:
            if d.get("schema") != SCHEMA:
                raise TvmNasError(f"{path}: field 'schema': {d.get('schema')!r} is not supported (expected {SCHEMA})")
            for f in ("space", "target", "entries"):
                if not isinstance(d.get(f), dict):
                    raise TvmNasError(f"{path}: corrupted latency table: field '{f}' missing or not an object")
            for k, e in d["entries"].items():
                _check_entry(path, k, e)
        except (ValueError, AttributeError) as e:
            raise TvmNasError(f"{path}: corrupted latency table ({e})") from e
        try:
            TableFile.model_validate(d)
        except ValidationError as e:
            raise validation_error(path, e) from None
        meta = {k: v for k, v in d.items() if k not in ("schema", "space", "target", "entries", "units")}
        check_invocation(path, meta.get("invocation"), d["entries"])
        table = cls(d["space"], d["target"], meta, d["entries"], path)
        if space is not None:
            table.check_space(space)
        if target_name is not None:
            table.check_target(target_name)
        if target is not None:
            table.check_target(target.name, target.hash)
        return table

    def check_space(self, space: SearchSpace) -> None:
        if self.space.get("name") != space.name or self.space.get("hash") != space.hash:
            raise TvmNasError(
                f"{self.path}: field 'space': table was measured for space '{self.space.get('name')}' "
                f"(hash {self.space.get('hash')}), not '{space.name}' (hash {space.hash}); "
                f"run: tvm-nas profile --space {space.name} --target {self.target.get('name')}")

    def check_target(self, target_name: str, target_hash: str | None = None) -> None:
        if self.target.get("name") != target_name:
            raise TvmNasError(
                f"{self.path}: field 'target': table was measured on target '{self.target.get('name')}', "
                f"not '{target_name}'; a table is only valid for its own target")
        if target_hash is not None and self.target.get("hash") != target_hash:
            raise TvmNasError(
                f"{self.path}: field 'target.hash': table was measured on another definition of target "
                f"'{target_name}' (hash {self.target.get('hash')}, yours is {target_hash}); profile your target "
                f"with its own name, or under another --logs-dir")

    # -- plain lookups -------------------------------------------------------------------------------
    @property
    def invocation_us(self) -> float:
        """What one call of a compiled module costs besides its kernels (0 for a table measured without it)."""
        return float(self.meta.get("invocation", {}).get("median", 0.0))

    def op_us(self, key: OpKey | str) -> float:
        """Latency (µs) one op adds to a network by the table: its median less the per-call cost; ``zero`` costs
        nothing.

        Each entry is the time of a whole module call; a network is one call, so the call's own cost
        (:attr:`invocation_us`) is counted once, in :meth:`fixed_us`.
        """
        k = key.key if isinstance(key, OpKey) else key
        if (key.op if isinstance(key, OpKey) else OpKey.from_key(k).op) == "zero":
            return 0.0
        try:
            return max(float(self.entries[k]["median"]) - self.invocation_us, 0.0)
        except KeyError:
            raise TvmNasError(f"{self.path}: op '{k}' is not in the latency table; "
                              f"run: tvm-nas profile --space {self.space.get('name')} "
                              f"--target {self.target.get('name')}") from None

    def fixed_us(self, space: SearchSpace) -> float:
        """Latency (µs) by the table of what every net has: stem (with the input transpose), first block, head,
        classifier, and the one module call."""
        return self.invocation_us + sum(self.op_us(k) for k in space.fixed_layers())

    def sum_us(self, space: SearchSpace, ops: list[str]) -> float:
        """The plain table sum (µs) of a whole net: its fixed layers plus the chosen op of every block."""
        blocks = space.blocks()
        if len(ops) != len(blocks):
            raise TvmNasError(f"{len(ops)} ops given for the {len(blocks)} blocks of space '{space.name}'")
        return self.fixed_us(space) + sum(self.op_us(b.key(op)) for b, op in zip(blocks, ops, strict=True))

    def extremes(self, space: SearchSpace) -> tuple[list[str], list[str]]:
        """The fastest and the slowest net of the space under this table (per-block argmin / argmax)."""
        fast, slow = [], []
        for b in space.blocks():
            v = np.array([self.op_us(b.key(op)) for op in b.candidates], dtype=np.float64)
            fast.append(b.candidates[int(np.argmin(v))])
            slow.append(b.candidates[int(np.argmax(v))])
        return fast, slow


def table_path(logs_dir: str | os.PathLike, target_name: str, space_name: str) -> Path:
    return Path(logs_dir) / target_name / f"{space_name}.latency.json"
