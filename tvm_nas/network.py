"""A standalone network of a search space: the fixed layers plus one chosen op per searchable block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import TvmNasError
from .ops import build_op, parse_op
from .space import SearchSpace


class Network(nn.Module):
    """stem -> first block -> searchable blocks -> head -> classifier, as one torch module."""

    def __init__(self, space: SearchSpace, ops: Sequence[str], where: str = "architecture"):
        super().__init__()
        blocks = space.blocks()
        if len(ops) != len(blocks):
            raise TvmNasError(f"{where}: field 'ops': {len(ops)} ops for the {len(blocks)} blocks of space "
                              f"'{space.name}'")
        stem, first, head, cls = space.fixed_layers()
        self.stem = build_op(stem.op, stem.in_shape[0], stem.out_channels, stem.stride)
        self.first_block = build_op(first.op, first.in_shape[0], first.out_channels, first.stride)
        layers = []
        for blk, op in zip(blocks, ops, strict=True):
            parse_op(op, f"{where}: field 'ops[{blk.index}]'")
            if op not in blk.candidates:
                raise TvmNasError(f"{where}: field 'ops[{blk.index}]': {op!r} is not a candidate of block "
                                  f"{blk.index} (candidates: {', '.join(blk.candidates)})")
            layers.append(build_op(op, blk.in_channels, blk.out_channels, blk.stride))
        self.blocks = nn.Sequential(*layers)
        self.head = build_op(head.op, head.in_shape[0], head.out_channels, 1)
        self.classifier = build_op(cls.op, cls.in_shape[0], cls.out_channels, 1)
        if space.dropout:
            self.classifier.dropout = nn.Dropout(space.dropout)
        self.ops = list(ops)
        self.input_shape = (space.input.channels, space.input.resolution, space.input.resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.first_block(self.stem(x)))))


def reference_ops(space: SearchSpace, op: str = "mbconv_k3_e6") -> list[str]:
    """The same op in every block (default: the MobileNetV2 shape, all mbconv_k3_e6)."""
    blocks = space.blocks()
    if any(op not in b.candidates for b in blocks):
        raise TvmNasError(f"space '{space.name}': {op!r} is not a candidate of every block")
    return [op] * len(blocks)
