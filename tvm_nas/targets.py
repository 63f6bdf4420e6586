"""Hardware targets: loading and validating `targets/*.yaml`; what to compile for, where to measure, how to export.

No TVM import at module level: the TVM-facing conversions live in :mod:`tvm_nas.backend.target`.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import TvmNasError
from .io import sha256_json
from .specfile import check_name, list_names, load_spec

CROSS_PACKAGES = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
                  "arm-linux-gnueabihf-g++": "g++-arm-linux-gnueabihf"}


class _Strict(BaseModel):
    # as the space's: each field its own YAML type, no NaN or infinity, and bounds far beyond any real target
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class RPCRunnerSpec(_Strict):
    """Measure on a device registered with TVM's RPC tracker under `key`."""

    kind: Literal["rpc"] = "rpc"
    tracker_host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    tracker_port: int = Field(default=9190, gt=0, lt=65536)
    key: str = Field(min_length=1, max_length=256)
    session_timeout_s: int = Field(default=60, gt=0, le=86_400)


class EvaluatorSpec(_Strict):
    number: int = Field(default=10, gt=0, le=1_000_000)
    repeat: int = Field(default=20, gt=1, le=10_000)
    min_repeat_ms: int = Field(default=50, ge=0, le=600_000)


class TargetSpec(_Strict):
    """A validated hardware target. Build one with :func:`load_target`."""

    name: str
    description: str = Field(default="", max_length=10_000)
    tvm: str | dict[str, Any] = Field(description="a TVM tag, {tag: ..., overrides}, or a JSON target dict with "
                                                  "'kind'")
    host: str | dict[str, Any] | None = None
    runner: Literal["local"] | RPCRunnerSpec = "local"
    cross_compiler: str | None = Field(default=None, min_length=1, max_length=255)
    threads: int | None = Field(default=None, gt=0, le=4096)
    evaluator: EvaluatorSpec = EvaluatorSpec()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("tvm")
    @classmethod
    def _tvm(cls, v):
        if isinstance(v, str):
            if " " in v or v.startswith("-") or v in ("llvm", "cuda", "c"):
                raise ValueError(f"{v!r} looks like a legacy target string; give a tag (e.g. "
                                 "'raspberry-pi/4b-aarch64') or a dict like {kind: llvm, mcpu: auto}")
        elif "kind" not in v and "tag" not in v:
            raise ValueError("a target dict needs 'kind' (llvm, cuda, ...) or 'tag'")
        else:
            for k in ("kind", "tag", "mcpu", "mtriple", "arch"):
                if k in v and not isinstance(v[k], str):
                    raise ValueError(f"'{k}' must be a string, got {v[k]!r}")
        return v

    @field_validator("runner", mode="before")
    @classmethod
    def _runner(cls, v):
        accepted = ("accepted runners: 'local' (this machine), or {kind: rpc, key: <key>, tracker_host: <host>, "
                    "tracker_port: <port>} (a device on TVM's RPC tracker)")
        if isinstance(v, str) and v != "local":
            raise ValueError(f"unknown runner {v!r}; {accepted}")
        if isinstance(v, dict) and v.get("kind", "rpc") != "rpc":
            raise ValueError(f"unknown runner kind {v.get('kind')!r}; {accepted}")
        if not isinstance(v, (str, dict, RPCRunnerSpec)):
            raise ValueError(f"expected a runner, got {v!r}; {accepted}")
        return v

    @property
    def is_rpc(self) -> bool:
        return isinstance(self.runner, RPCRunnerSpec)

    @property
    def hash(self) -> str:
        return sha256_json(self.model_dump(mode="json", exclude={"description"}))[:16]

    def describe(self) -> dict:
        return {"name": self.name, "hash": self.hash, "definition": self.model_dump(mode="json")}

    def check_cross_compiler(self) -> str | None:
        """The cross compiler's path, or a one-line error naming the Debian package that provides it."""
        if not self.cross_compiler:
            return None
        path = shutil.which(self.cross_compiler)
        if path is None:
            pkg = CROSS_PACKAGES.get(self.cross_compiler, "the package that provides it")
            raise TvmNasError(f"target '{self.name}': cross compiler '{self.cross_compiler}' is not installed; "
                              f"install it with: apt-get install {pkg}")
        return path


def list_targets() -> list[str]:
    return list_names("targets")


def load_target(name_or_path: str | os.PathLike | TargetSpec) -> TargetSpec:
    """Load and validate a target by name (from `targets/`) or by path; checks the TVM target can be built."""
    if isinstance(name_or_path, TargetSpec):
        return name_or_path
    spec, path = load_spec(name_or_path, "targets", TargetSpec)
    from .backend.target import to_tvm_target

    to_tvm_target(spec, where=f"{path}: field 'tvm'")
    return spec

