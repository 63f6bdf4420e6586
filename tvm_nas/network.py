"""The networks of a search space: the fixed layers around the searchable blocks, as torch modules."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .arch import check_ops
from .ops import build_op
from .space import SearchSpace


class Backbone(nn.Module):
    """stem -> first block -> blocks -> head -> classifier.

    :class:`Network` (one op per block) and the search's supernet (every candidate per block) differ only in
    their blocks; the fixed layers are built here, in this order, so seeded weights match between the two.

    Args:
        space: the search space.
        make_blocks: builds the searchable blocks (called after the stem and first block are built).
    """

    def __init__(self, space: SearchSpace, make_blocks: Callable[[], nn.Module]):
        super().__init__()
        stem, first, head, cls = space.fixed_layers()
        self.stem = build_op(stem.op, stem.in_shape[0], stem.out_channels, stem.stride)
        self.first_block = build_op(first.op, first.in_shape[0], first.out_channels, first.stride)
        self.blocks = make_blocks()
        self.head = build_op(head.op, head.in_shape[0], head.out_channels, 1)
        self.classifier = build_op(cls.op, cls.in_shape[0], cls.out_channels, 1)
        if space.dropout:
            self.classifier.dropout = nn.Dropout(space.dropout)
        self.input_shape = (space.input.channels, space.input.resolution, space.input.resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.first_block(self.stem(x)))))


class Network(Backbone):
    """A standalone network of the space: one chosen op per searchable block."""

    def __init__(self, space: SearchSpace, ops: Sequence[str], where: str = "architecture"):
        check_ops(space, ops, where)
        blocks = space.blocks()
        super().__init__(space, lambda: nn.Sequential(
            *(build_op(op, b.in_channels, b.out_channels, b.stride) for b, op in zip(blocks, ops, strict=True))))
        self.ops = list(ops)
