"""A space's ground truth on a target: every net trained alone and timed, the front a search should reach.

``<logs_dir>/<target>/<space>.groundtruth.json`` (written by ``bench/nasbench.py --phase export``) holds, per net of
the space, its held-out test accuracy (mean and seed-to-seed spread under one training recipe) and its latency
measured by the product's own pipeline. When it exists, a run's report draws its accuracy-latency front beside the
run's nets. It is read through :class:`GroundTruth`; a damaged file is refused in one line, a file of another
space is ignored with a warning.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import TvmNasError
from .io import read_json
from .space import SearchSpace

SCHEMA = 1
MAX_NETS = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GroundTruthNet(_Strict):
    ops: list[str] = Field(min_length=1, max_length=256)
    test_accuracy: float = Field(ge=0, le=1)
    test_sd: float | None = Field(default=None, ge=0, le=1)
    seeds: int = Field(ge=1, le=1000)
    measured_us: float = Field(gt=0, lt=1e9)


class GroundTruth(_Strict):
    schema_: int = Field(alias="schema")
    space: str
    space_hash: str
    target: str
    recipe: dict
    data: str
    noise_sd: float | None = Field(default=None, ge=0, le=1)
    nets: list[GroundTruthNet] = Field(min_length=1, max_length=MAX_NETS)

    def front(self) -> list[GroundTruthNet]:
        """The Pareto front: every net that no faster-or-as-fast net beats in accuracy, fastest first."""
        out, best = [], -math.inf
        for n in sorted(self.nets, key=lambda n: (n.measured_us, -n.test_accuracy)):
            if n.test_accuracy > best:
                out.append(n)
                best = n.test_accuracy
        return out


def groundtruth_path(logs_dir: str | os.PathLike, target_name: str, space_name: str) -> Path:
    return Path(logs_dir) / target_name / f"{space_name}.groundtruth.json"


def load_groundtruth(path: str | os.PathLike, space: SearchSpace | None = None) -> GroundTruth | None:
    """The ground truth at ``path``, or None when there is none (or it is of another version of the space).

    Raises:
        TvmNasError: the file is damaged (one line naming the field).
    """
    path = Path(path)
    if not path.is_file():
        return None
    raw = read_json(path, "ground truth")
    try:
        gt = GroundTruth.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise TvmNasError(f"{path}: field '{field}': {err['msg']}") from None
    if gt.schema_ != SCHEMA:
        raise TvmNasError(f"{path}: field 'schema': {gt.schema_}, this tvm-nas reads {SCHEMA}")
    if space is not None and (gt.space != space.name or gt.space_hash != space.hash):
        print(f"tvm-nas: warning: {path}: ground truth of another version of space '{gt.space}' (hash "
              f"{gt.space_hash}, the space's is {space.hash}); not shown", file=sys.stderr)
        return None
    return gt
