"""A search checkpoint's plain fields (``checkpoint.pt``) and its epoch records (``log.jsonl``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    Json,
    ValidationInfo,
    field_validator,
)

from .base import (
    Anything,
    Finite,
    Fraction,
    NonNeg,
    Ops,
    _Fixed,
    _Open,
)


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
