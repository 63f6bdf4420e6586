"""Search spaces: loading and validating `search_space/*.yaml`, enumerating blocks and their candidate ops."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .errors import TvmNasError
from .io import sha256_json
from .ops import parse_op
from .specfile import MAX_BLOCKS, check_name, list_names, load_spec

# bounds that keep a typo from asking TVM for a terabyte tensor; far above any real CNN search space
MAX_RESOLUTION = 4096
MAX_CHANNELS = 8192  # of every layer as built, after width_mult
MAX_WIDTH_MULT = 16.0
MAX_STAGES = 64
MAX_CANDIDATES = 64
MAX_KERNEL = 31  # MBConv kernels of real spaces are 3-7
MAX_EXPAND = 32  # and expansions 1-6


class _Strict(BaseModel):
    # strict: YAML and JSON give every field its own type, and a string where a number belongs is a mistake;
    # no NaN or infinity anywhere
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class InputSpec(_Strict):
    resolution: int = Field(gt=0, le=MAX_RESOLUTION)
    channels: int = Field(default=3, gt=0, le=MAX_CHANNELS)


class StemSpec(_Strict):
    out: int = Field(gt=0, le=MAX_CHANNELS)
    stride: int = Field(default=2, ge=1, le=2)


class FirstBlockSpec(_Strict):
    op: str = "mbconv_k3_e1"
    out: int = Field(gt=0, le=MAX_CHANNELS)

    @field_validator("op")
    @classmethod
    def _op(cls, v: str) -> str:
        if parse_op(v, "first_block.op").kind != "mbconv":
            raise ValueError(f"must be an mbconv op, got {v!r}")
        _check_mbconv(v)
        return v


class StageSpec(_Strict):
    out: int = Field(gt=0, le=MAX_CHANNELS)
    blocks: int = Field(gt=0, le=64)
    stride: int = Field(ge=1, le=2)


class HeadSpec(_Strict):
    out: int = Field(gt=0, le=MAX_CHANNELS)


class SearchSpace(_Strict):
    """A validated search space (format: docs/formats.md). Build one with :func:`load_space`."""

    name: str
    description: str = Field(default="", max_length=10_000)
    input: InputSpec
    num_classes: int = Field(gt=0, le=100_000)
    width_mult: float = Field(default=1.0, gt=0, le=MAX_WIDTH_MULT)
    stem: StemSpec
    first_block: FirstBlockSpec
    stages: list[StageSpec] = Field(min_length=1, max_length=MAX_STAGES)
    candidates: list[str] = Field(min_length=1, max_length=MAX_CANDIDATES)
    allow_zero: bool = True
    head: HeadSpec
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("stem", "first_block", "head")
    @classmethod
    def _built_channels(cls, v, info: ValidationInfo):
        _check_built(v.out, info, "out")
        return v

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[StageSpec], info: ValidationInfo) -> list[StageSpec]:
        for i, stage in enumerate(v):
            _check_built(stage.out, info, f"stages[{i}].out")
        if sum(st.blocks for st in v) > MAX_BLOCKS:
            raise ValueError(f"{sum(st.blocks for st in v)} searchable blocks in all; a space has at most "
                             f"{MAX_BLOCKS}")
        return v

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: list[str]) -> list[str]:
        for i, sig in enumerate(v):
            if parse_op(sig, f"candidates[{i}]").kind != "mbconv":
                raise ValueError(f"candidates[{i}] {sig!r}: only mbconv ops are candidates (zero: use allow_zero)")
            _check_mbconv(sig, f"candidates[{i}] ")
        if len(set(v)) != len(v):
            raise ValueError("candidates are repeated")
        return v

    # -- derived structure -------------------------------------------------------------------------------
    def channels(self, c: int) -> int:
        """Apply the width multiplier, rounded to a multiple of 8 (never below 8 unless c itself is)."""
        return scaled_channels(c, self.width_mult)

    @property
    def hash(self) -> str:
        return sha256_json(self.model_dump(mode="json"))[:16]

    def blocks(self) -> list[Block]:
        """Every searchable block, in order, with its shapes and candidate ops."""
        out: list[Block] = []
        c = self.channels(self.first_block.out)
        hw = self.stem_output_hw
        for s, stage in enumerate(self.stages):
            cout = self.channels(stage.out)
            for b in range(stage.blocks):
                stride = stage.stride if b == 0 else 1
                cands = list(self.candidates)
                if self.allow_zero and stride == 1 and c == cout:
                    cands.append("zero")
                out.append(Block(len(out), s, c, cout, stride, hw, tuple(cands)))
                hw = _down(hw, stride)
                c = cout
        return out

    @property
    def stem_output_hw(self) -> int:
        return _down(self.input.resolution, self.stem.stride)

    def fixed_layers(self) -> list[OpKey]:
        """The layers every net of the space has, as op keys (stem, first block, head, classifier)."""
        r, cin = self.input.resolution, self.input.channels
        stem_c = self.channels(self.stem.out)
        hw = self.stem_output_hw
        blocks = self.blocks()
        last_c, last_hw = blocks[-1].out_channels, _down(blocks[-1].in_hw, blocks[-1].stride)
        head_c = self.channels(self.head.out)
        return [
            OpKey("stem_conv_k3", (cin, r, r), stem_c, self.stem.stride),
            OpKey(self.first_block.op, (stem_c, hw, hw), self.channels(self.first_block.out), 1),
            OpKey("head_conv_k1", (last_c, last_hw, last_hw), head_c, 1),
            OpKey("classifier", (head_c, last_hw, last_hw), self.num_classes, 1),
        ]

    def op_keys(self) -> list[OpKey]:
        """Every (block, candidate) op key, fixed layers first, with repeats (zero excluded: it costs nothing)."""
        keys = list(self.fixed_layers())
        for blk in self.blocks():
            keys += [blk.key(op) for op in blk.candidates if op != "zero"]
        return keys

    def unique_op_keys(self) -> list[OpKey]:
        return list(dict.fromkeys(self.op_keys()))

    def describe(self) -> dict:
        """The space as plain data, for writing next to results."""
        return {"name": self.name, "hash": self.hash, "definition": self.model_dump(mode="json")}


def canonical_ops(space: SearchSpace, ops) -> list[str]:
    """The one spelling of a net. Within a run of consecutive blocks that may be ``zero`` (stride 1, channels
    unchanged), a skipped block may sit in any position of the run: ``(X, zero)`` is the very net ``(zero, X)`` is.
    The canonical spelling keeps the run's other ops in order and puts its zeros last."""
    out, run = [], []
    for b, op in zip(space.blocks(), ops, strict=True):
        if "zero" in b.candidates:
            run.append(op)
            continue
        out += [o for o in run if o != "zero"] + [o for o in run if o == "zero"]
        run = []
        out.append(op)
    return out + [o for o in run if o != "zero"] + [o for o in run if o == "zero"]


def scaled_channels(c: int, width_mult: float) -> int:
    """`c` channels times the width multiplier, rounded to a multiple of 8 (never below 8 unless c itself is)."""
    if width_mult == 1.0:
        return c
    v = max(8, int(c * width_mult + 4) // 8 * 8)
    return v if v >= 0.9 * c * width_mult else v + 8


def _check_mbconv(sig: str, where: str = "") -> None:
    op = parse_op(sig)
    if op.kernel > MAX_KERNEL or op.expand > MAX_EXPAND:
        raise ValueError(f"{where}{sig!r}: kernel at most {MAX_KERNEL} and expansion at most {MAX_EXPAND}")


def _check_built(c: int, info: ValidationInfo, field: str) -> None:
    """The channel limit holds for the layer as built: after the width multiplier, not before it."""
    w = info.data.get("width_mult")
    if w is None:  # width_mult itself was refused: that is the error to report
        return
    built = scaled_channels(c, w)
    if built > MAX_CHANNELS:
        raise ValueError(f"{field} {c} × width_mult {w:g} builds {built} channels, more than {MAX_CHANNELS}")


def _down(hw: int, stride: int) -> int:
    return (hw + stride - 1) // stride


@dataclass(frozen=True)
class OpKey:
    """One unique operator instance: signature, input shape (C, H, W), output channels, stride."""

    op: str
    in_shape: tuple[int, int, int]
    out_channels: int
    stride: int

    @property
    def key(self) -> str:
        c, h, w = self.in_shape
        return f"{self.op}|{c}x{h}x{w}|{self.out_channels}|s{self.stride}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def from_key(cls, key: str) -> OpKey:
        op, shape, cout, stride = key.split("|")
        c, h, w = (int(v) for v in shape.split("x"))
        return cls(op, (c, h, w), int(cout), int(stride.lstrip("s")))


@dataclass(frozen=True)
class Block:
    """One searchable block position."""

    index: int
    stage: int
    in_channels: int
    out_channels: int
    stride: int
    in_hw: int
    candidates: tuple[str, ...]

    def key(self, op: str) -> OpKey:
        return OpKey(op, (self.in_channels, self.in_hw, self.in_hw), self.out_channels, self.stride)


def list_spaces() -> list[str]:
    return list_names("search_space")


def load_space(name_or_path: str | os.PathLike) -> SearchSpace:
    """Load and validate a search space by name (from `search_space/`) or by path."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    space, path = load_spec(name_or_path, "search_space", SearchSpace)
    try:
        space.blocks()  # shapes must be buildable
    except TvmNasError as e:
        raise TvmNasError(f"{path}: {e}") from None
    return space
