"""The architecture file (``*.arch.json``): one model shared by its writer (search, run) and its readers
(train, compile, compare, validate, report).

The file embeds the full space definition, so :func:`load_architecture` rebuilds the exact network with no other file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import TvmNasError
from .io import atomic_write_json, read_json
from .ops import parse_op
from .space import MAX_BLOCKS, SearchSpace, load_space
from .specfile import resolve, validation_error

if TYPE_CHECKING:
    import numpy as np

    from .profile.model import LatencyModel

SCHEMA = 1
REFERENCE_OP = "mbconv_k3_e6"  # the MobileNetV2 shape: every block an MBConv k3 e6


class _Part(BaseModel):
    # a fixed set of fields (an unknown one is a typo or another tool's file); no NaN or infinity. The reader
    # validates strictly (load_architecture: a string where a number belongs is refused); the writer builds it
    # from numbers
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)


Us = Annotated[float, Field(gt=0, le=1e9)]  # a whole net's latency (µs): positive, under 1000 s


class SpaceRef(_Part):
    name: str
    hash: str
    definition: dict[str, Any]


class TableRef(_Part):
    target: str | None = None
    hash: str | None = None
    path: str | None = None


class Candidate(_Part):
    ops: list[str] = Field(max_length=MAX_BLOCKS)
    shared_val_accuracy: Annotated[float, Field(ge=0, le=1)]


class MeasuredNet(_Part):
    """A net measured to choose the searched net by measurement (search.measured.settle_by_measurement)."""

    ops: list[str] = Field(max_length=MAX_BLOCKS)
    margin_pct: Annotated[float, Field(gt=-100, lt=100)]  # the margin it was derived with (negative: over the budget)
    predicted_us: Us
    measured_us: Us
    measurement: dict[str, Any]  # the timing figure (median, q1, q3, stable, rounds)
    meets: bool  # measured median within the budget


class Derivation(_Part):
    rule: str
    argmax_ops: list[str] = Field(max_length=MAX_BLOCKS)
    argmax_latency_us: Us
    changed_blocks: list[Annotated[int, Field(ge=0, lt=MAX_BLOCKS)]] = Field(default_factory=list,
                                                                             max_length=MAX_BLOCKS)
    # blocks given a slower op to spend what the net left of the budget (search.derive.fill_budget)
    filled_blocks: list[Annotated[int, Field(ge=0, lt=MAX_BLOCKS)]] = Field(default_factory=list,
                                                                            max_length=MAX_BLOCKS)
    budget_us: Us | None = None
    budget_met: bool | None = None
    # the share of the budget kept for the table's error, and the latency the net was fitted to (budget less it;
    # negative: aimed over the budget, as one of the nets measured around it is)
    budget_margin_pct: Annotated[float, Field(gt=-100, lt=100)] | None = None
    target_us: Us | None = None
    budget_feasible: bool | None = None  # False: even the space's fastest net is over budget
    fastest_latency_us: Us | None = None
    # blocks whose α stayed close to uniform: their op is barely ahead (search.derive.undecided)
    undecided_blocks: list[Annotated[int, Field(ge=0, lt=MAX_BLOCKS)]] = Field(default_factory=list,
                                                                               max_length=MAX_BLOCKS)
    # a derivation by shared weights (search.derive.derive_by_shared_weights): the nets it chose among
    candidates: list[Candidate] | None = Field(default=None, max_length=4096)
    # the nets derived around the budget and measured on the target; the kept one is the slowest that met it
    measured: list[MeasuredNet] | None = Field(default=None, max_length=16)


class ArchFile(_Part):
    """The content of an ``*.arch.json`` file (schema 1)."""

    schema_: int = Field(SCHEMA, alias="schema")
    space: SpaceRef
    ops: list[str] = Field(max_length=MAX_BLOCKS)
    probabilities: list[dict[str, Annotated[float, Field(ge=0, le=1)]]] | None = Field(default=None,
                                                                                       max_length=MAX_BLOCKS)
    latency_table: TableRef | None = None
    predicted_latency_us: Us | None = None
    derivation: Derivation | None = None
    search: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True, exclude_none=False)


def arch_document(space: SearchSpace, ops: Sequence[str], probabilities: Sequence[np.ndarray] | None,
                  table: LatencyModel | None, search: dict | None = None,
                  derivation: dict | None = None) -> dict:
    """The architecture file's content, as JSON-able data."""
    blocks = space.blocks()
    probs = None
    if probabilities is not None:
        probs = [{op: float(v) for op, v in zip(b.candidates, p, strict=True)}
                 for b, p in zip(blocks, probabilities, strict=True)]
    doc = ArchFile(
        space=SpaceRef(**space.describe()), ops=list(ops), probabilities=probs,
        latency_table=None if table is None else TableRef(
            target=table.target.get("name"), hash=table.hash, path=None if table.path is None else str(table.path)),
        predicted_latency_us=None if table is None else table.predict(space, list(ops)),
        derivation=None if derivation is None else Derivation(**derivation), search=search or {})
    out = doc.to_json()
    if derivation is None:
        out.pop("derivation")
    return out


def write_arch(path: str | os.PathLike, doc: dict | ArchFile) -> Path:
    """Write an architecture document atomically."""
    return atomic_write_json(path, doc.to_json() if isinstance(doc, ArchFile) else doc)


def check_ops(space: SearchSpace, ops: Sequence[str], where: str) -> None:
    """One op per block, each a candidate of its block."""
    blocks = space.blocks()
    if len(ops) != len(blocks):
        raise TvmNasError(f"{where}: field 'ops': {len(ops)} ops for the {len(blocks)} blocks of space "
                          f"'{space.name}'")
    for blk, op in zip(blocks, ops, strict=True):
        parse_op(op, f"{where}: field 'ops[{blk.index}]'")
        if op not in blk.candidates:
            raise TvmNasError(f"{where}: field 'ops[{blk.index}]': {op!r} is not a candidate of block "
                              f"{blk.index} (candidates: {', '.join(blk.candidates)})")


# -- a loaded architecture -----------------------------------------------------------------------------------------
@dataclass
class Arch:
    """A loaded architecture: its space, one op per block, the file's content and where it came from."""

    space: SearchSpace
    ops: list[str]
    doc: dict
    path: Path | None = None
    label: str = ""
    file: ArchFile | None = None  # the file's content, typed (loaded archs; None for one built in memory)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        r = self.space.input.resolution
        return (1, self.space.input.channels, r, r)


def load_architecture(arch: str | os.PathLike | Arch) -> Arch:
    """An :class:`Arch` from an ``*.arch.json`` path (or the Arch itself), its space rebuilt from the definition
    the file embeds, labelled with the file's name.

    ``arch.doc["warnings"]`` lists non-fatal findings (e.g. a space of the same name on disk now has another
    definition — the embedded one is used).

    Raises:
        TvmNasError: missing or corrupted file, unsupported schema, a definition whose hash does not match the
            recorded one, or ops that are not candidates of their blocks.
    """
    if isinstance(arch, Arch):
        return arch
    path = Path(arch)
    raw = read_json(path, "architecture file")
    if raw.get("schema") != SCHEMA:
        raise TvmNasError(f"{path}: field 'schema': {raw.get('schema')!r} is not supported (expected {SCHEMA})")
    try:
        doc = ArchFile.model_validate(raw, strict=True)
    except ValidationError as e:
        raise validation_error(path, e) from None
    try:
        space = SearchSpace.model_validate(doc.space.definition)
        space.blocks()
    except ValidationError as e:
        raise validation_error(path, e, prefix="space.definition.") from None
    except TvmNasError as e:
        raise TvmNasError(f"{path}: field 'space.definition': {e}") from None
    if doc.space.hash != space.hash:
        raise TvmNasError(f"{path}: field 'space.hash': {doc.space.hash!r} does not match the embedded "
                          f"definition (hash {space.hash}); the file was changed or corrupted")
    warnings = []
    try:
        on_disk = load_space(resolve(space.name, "search_space"))
        if on_disk.hash != space.hash:
            warnings.append(f"space '{space.name}' on disk has hash {on_disk.hash}, the architecture's is "
                            f"{space.hash}; using the definition embedded in {path.name}")
    except TvmNasError:
        pass  # no space of that name on disk: the embedded definition is all there is
    check_ops(space, doc.ops, str(path))
    out = dict(raw)
    out["warnings"] = warnings
    return Arch(space, list(doc.ops), out, path, path.name.removesuffix(".json").removesuffix(".arch"), doc)


def reference_ops(space: SearchSpace, op: str = REFERENCE_OP) -> list[str]:
    """The same op in every block (default: the MobileNetV2 shape, all mbconv_k3_e6)."""
    blocks = space.blocks()
    if any(op not in b.candidates for b in blocks):
        raise TvmNasError(f"space '{space.name}': {op!r} is not a candidate of every block")
    return [op] * len(blocks)


def reference_arch(space: SearchSpace, op: str = REFERENCE_OP) -> Arch:
    """The reference net of a space: the same op in every block."""
    ops = reference_ops(space, op)
    return Arch(space, ops, arch_document(space, ops, None, None), None, f"reference ({op})")
