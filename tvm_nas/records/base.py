"""What every record shares: the strict and the open model, the field types, and the one way a record is read and
refused (:func:`load_record`, :func:`check`); and a module's timing (:class:`TimingRecord`).
"""

from __future__ import annotations

import math
import os
from pathlib import PurePosixPath
from typing import Annotated, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from ..errors import TvmNasError
from ..io import read_json
from ..specfile import MAX_BLOCKS, validation_error

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
