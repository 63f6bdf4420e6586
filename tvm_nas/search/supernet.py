"""The over-parameterized network: every searchable block holds all its candidates behind binary gates.

A :class:`MixedOp` runs in one of four modes, chosen explicitly before each forward pass:

* ``"one"`` (weight step): one path sampled from p = softmax(α) — only that candidate is executed;
* ``"two"`` (architecture step): two paths sampled without replacement from p, one of them chosen from the
  probabilities renormalized over the pair; the output is the chosen path's (gate 1), the other path is run
  detached (gate 0) so that its gate gradient exists but its activations are not kept;
* ``"fixed"``: a given path (evaluation of a sampled or derived net);
* ``"all"``: DARTS-style, the softmax-weighted sum of every path (only for the memory benchmark).

The BinaryConnect estimate turns the gate gradients into α gradients (:meth:`MixedOp.set_alpha_grad`) and
:meth:`MixedOp.rescale_alpha` keeps the probabilities of the paths that were not sampled unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..network import Backbone, Network
from ..ops import build_op
from ..space import Block, SearchSpace

MODES = ("one", "two", "fixed", "all")


class MixedOp(nn.Module):
    """All candidates of one block with architecture parameters ``alpha`` (p = softmax(alpha)).

    Args:
        block: the block position (shapes and candidates, ``zero`` included where allowed).
    """

    def __init__(self, block: Block):
        super().__init__()
        self.candidates = list(block.candidates)
        self.ops = nn.ModuleList(build_op(op, block.in_channels, block.out_channels, block.stride)
                                 for op in self.candidates)
        self.alpha = nn.Parameter(torch.zeros(len(self.candidates)))
        self.mode = "one"
        self.active: int = 0  # index of the path whose output is used
        self.inactive: int | None = None  # "two" mode: the other sampled path
        self.gates: torch.Tensor | None = None  # "two" mode: leaf gate tensor over the two paths
        self._old_pair_alpha: torch.Tensor | None = None

    @property
    def probs(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=0)

    # -- sampling ----------------------------------------------------------------------------------------
    def sample_one(self, uniform: bool = False, generator: torch.Generator | None = None) -> int:
        """Weight-step mode: one path drawn from p (or uniformly, for warm-up)."""
        p = torch.ones(len(self.ops)) if uniform else self.probs.detach().cpu()  # sampled on the CPU generator
        self.mode, self.inactive, self.gates = "one", None, None
        self.active = int(torch.multinomial(p, 1, generator=generator))
        return self.active

    def sample_two(self, generator: torch.Generator | None = None) -> tuple[int, int]:
        """Architecture-step mode: two paths from p, the active one from p renormalized over the pair."""
        alpha = self.alpha.detach().cpu()
        pair = torch.multinomial(F.softmax(alpha, dim=0), 2, replacement=False, generator=generator).tolist()
        q = F.softmax(alpha[pair], dim=0)
        c = int(torch.multinomial(q, 1, generator=generator))
        self.mode, self.active, self.inactive = "two", pair[c], pair[1 - c]
        self.gates = torch.zeros(2, device=self.alpha.device)
        self.gates[0] = 1.0  # gates[0] belongs to the active path, gates[1] to the inactive one
        self.gates.requires_grad_(True)
        return self.active, self.inactive

    def fix(self, index: int) -> None:
        """Run exactly the given path."""
        self.mode, self.active, self.inactive, self.gates = "fixed", index, None, None

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    # -- forward -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in ("one", "fixed"):
            return self.ops[self.active](x)
        if self.mode == "two":
            if self.gates is None or self.inactive is None:
                raise RuntimeError("sample_two() must be called before a 'two'-mode forward pass")
            out = self.gates[0] * self.ops[self.active](x)
            # the inactive path only needs its output for the gate gradient: no graph through its weights
            return out + self.gates[1] * self.ops[self.inactive](x).detach()
        p = self.probs
        return sum(p[i] * op(x) for i, op in enumerate(self.ops))

    # -- architecture gradients --------------------------------------------------------------------------
    def pair(self) -> list[int]:
        """The two sampled paths of the last ``"two"`` sampling, active first."""
        if self.inactive is None:
            raise RuntimeError("no pair sampled")
        return [self.active, self.inactive]

    @torch.no_grad()
    def set_alpha_grad(self) -> None:
        """Add the BinaryConnect estimate ∂L/∂α_i = Σ_j ∂L/∂g_j · p_j (δ_ij − p_i) over the sampled pair.

        p is renormalized over the two sampled paths; the gate gradients come from the last backward pass.
        Whatever gradient α already has (the latency term) is kept. Also remembers the pair's α for
        :meth:`rescale_alpha`. Without gate gradients (no image in this process's batch) the estimate is zero.
        """
        if self.gates is None:
            return
        pair = self.pair()
        q = F.softmax(self.alpha[pair], dim=0)
        g = self.gates.grad if self.gates.grad is not None else torch.zeros_like(self.gates)
        if self.alpha.grad is None:
            self.alpha.grad = torch.zeros_like(self.alpha)
        for i in range(2):
            self.alpha.grad[pair[i]] += sum(g[j] * q[j] * (float(i == j) - q[i]) for j in range(2))
        self._old_pair_alpha = self.alpha[pair].clone()

    @torch.no_grad()
    def rescale_alpha(self) -> None:
        """After the optimizer step, shift the pair's α so exp-sum over the pair is unchanged.

        Hence softmax(α) of every path that was not sampled keeps its value.
        """
        if self._old_pair_alpha is None:
            return
        pair = self.pair()
        new = self.alpha[pair]
        offset = torch.logsumexp(new, 0) - torch.logsumexp(self._old_pair_alpha, 0)
        self.alpha[pair] = new - offset
        self._old_pair_alpha = None


class Supernet(Backbone):
    """stem -> first block -> MixedOps -> head -> classifier; module names mirror :class:`Network`.

    Args:
        space: the search space.
    """

    def __init__(self, space: SearchSpace):
        super().__init__(space, lambda: nn.Sequential(*(MixedOp(b) for b in space.blocks())))
        self.space = space

    @property
    def mixed_ops(self) -> list[MixedOp]:
        return list(self.blocks)

    # -- parameter groups --------------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [m.alpha for m in self.mixed_ops]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.endswith(".alpha")]

    def active_weight_parameters(self) -> list[nn.Parameter]:
        """The weights a forward pass of the current paths uses: fixed layers and one op per block."""
        fixed = [p for n, p in self.named_parameters() if not n.startswith("blocks.")]
        return fixed + [p for m in self.mixed_ops for p in m.ops[m.active].parameters()]

    def probs(self) -> list[torch.Tensor]:
        """p = softmax(α) per block (differentiable)."""
        return [m.probs for m in self.mixed_ops]

    # -- modes -------------------------------------------------------------------------------------------
    def sample_one(self, uniform: bool = False, generator: torch.Generator | None = None) -> list[str]:
        return [m.candidates[m.sample_one(uniform, generator)] for m in self.mixed_ops]

    def sample_two(self, generator: torch.Generator | None = None) -> list[tuple[str, str]]:
        out = []
        for m in self.mixed_ops:
            a, b = m.sample_two(generator)
            out.append((m.candidates[a], m.candidates[b]))
        return out

    def fix(self, ops: Sequence[str]) -> None:
        for m, op in zip(self.mixed_ops, ops, strict=True):
            m.fix(m.candidates.index(op))

    def set_mode(self, mode: str) -> None:
        for m in self.mixed_ops:
            m.set_mode(mode)

    def set_alpha_grads(self) -> None:
        for m in self.mixed_ops:
            m.set_alpha_grad()

    def rescale_alphas(self) -> None:
        for m in self.mixed_ops:
            m.rescale_alpha()

    def argmax_ops(self) -> list[str]:
        return [m.candidates[int(torch.argmax(m.alpha))] for m in self.mixed_ops]

    # -- derived networks --------------------------------------------------------------------------------
    def network_state(self, ops: Sequence[str]) -> dict[str, torch.Tensor]:
        """The chosen ops' weights, keyed as a :class:`Network` of those ops expects (for fine-tuning)."""
        state = {}
        chosen = {f"blocks.{i}.ops.{m.candidates.index(op)}.": f"blocks.{i}."
                  for i, (m, op) in enumerate(zip(self.mixed_ops, ops, strict=True))}
        for k, v in self.state_dict().items():
            if not k.startswith("blocks."):
                state[k] = v.clone()
                continue
            for prefix, new in chosen.items():
                if k.startswith(prefix):
                    state[new + k[len(prefix):]] = v.clone()
        return state

    def to_network(self, ops: Sequence[str]) -> Network:
        net = Network(self.space, list(ops))
        net.load_state_dict(self.network_state(ops))
        return net


def entropy(p: torch.Tensor) -> float:
    """Entropy (nats) of a probability vector."""
    p = p.detach().clamp_min(1e-12)
    return float(-(p * p.log()).sum())

