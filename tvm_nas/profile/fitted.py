"""Reading a model `tvm-nas validate` fitted beside a latency table (the calibration, the learned correction).

A fitted file is never trusted: a damaged one, or one with a field out of its schema, is refused in one line naming
the file and the field, and the table's predictions fall back on the next model (see :mod:`.model`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ..errors import TvmNasError
from ..io import read_json
from ..specfile import validation_error
from .table import _Record

_said: set[str] = set()


class FittedRecord(_Record):
    """What validate records of every fit it writes beside a table (calibration, correction): how each form scored
    leave-one-out, whether it beat the plain sum, and the machine's state and the nets it was fitted on."""

    forms: dict[str, dict[str, Any]] = None
    leave_one_out: dict[str, Any] = None
    better: bool = None
    load_avg: list[float] = None
    fitted: str = None
    unstable_nets: int = Field(default=None, ge=0)
    trained_on: list[list[str]] = None


def refuse(path, why: str) -> None:
    """Say once per process, on one line of stderr, that a fitted model beside a table is not used, and why."""
    line = f"tvm-nas: warning: {path}: {why}"
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr)


def read_fitted(path: Path, table_hash: str, model: type[BaseModel], fallback: str) -> dict | None:
    """A model `validate` fitted to a table (calibration, correction), checked against its schema: the file's
    object, or None when there is none or when it was fitted to other entries (the table was measured again since).
    A damaged file, or one with a field out of its bounds, is refused in one line naming the file and the field
    (:func:`refuse`), and None is returned: the table then predicts with its `fallback`."""
    if not path.is_file():
        return None
    what = model.__name__.removesuffix("File").lower()
    not_used = f"not used: predictions use the {fallback}"
    try:
        d = read_json(path, what)
    except TvmNasError as e:
        refuse(path, f"{str(e).removeprefix(f'{path}: ')}; {not_used}")
        return None
    if d.get("table_hash") != table_hash:
        if not isinstance(d.get("table_hash"), str):
            refuse(path, f"field 'table_hash': {str(d.get('table_hash'))[:40]} is not a table's hash; {not_used}")
        return None
    try:
        model.model_validate(d)
    except ValidationError as e:
        refuse(path, f"{str(validation_error(path, e)).removeprefix(f'{path}: ')}; {not_used}")
        return None
    return d
