"""The latency objective: expected latency from the target's table and the two loss forms.

Expected latency E[LAT] = fixed layers + Σ_blocks p_b · v_b, with v_b the table's latency (µs) of each
candidate of block b (``zero`` costs 0): a differentiable function of α (NNI's precomputed-vector form).
Losses return ``(loss, details)``; the details are plain floats ready to log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import TvmNasError
from ..profile.model import LatencyModel
from ..space import SearchSpace

LOSS_FORMS = ("mul", "add", "hinge")


class ExpectedLatency:
    """E[LAT] (µs) of a space under one latency table.

    Args:
        table: the table of the chosen target, already checked against the space and target.
        space: the search space.
    """

    def __init__(self, table: LatencyModel, space: SearchSpace, device: torch.device | str = "cpu"):
        self.fixed_us = table.fixed_latency(space)
        self.vectors = [torch.tensor(v, dtype=torch.float32, device=device) for v in table.block_matrix(space)]

    def __call__(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Expected latency (µs, a 0-d tensor) for one probability vector per block."""
        if len(probs) != len(self.vectors):
            raise ValueError(f"{len(probs)} probability vectors for {len(self.vectors)} blocks")
        return self.fixed_us + sum(p.float().to(v.device) @ v for p, v in zip(probs, self.vectors, strict=True))

    def of_ops(self, indices: Sequence[int]) -> float:
        """Latency (µs) of one net given its candidate index per block."""
        return self.fixed_us + float(sum(float(v[i]) for v, i in zip(self.vectors, indices, strict=True)))


def pair_probs(alpha: torch.Tensor, pair: Sequence[int]) -> torch.Tensor:
    """softmax(α) whose gradient reaches only the sampled pair, holding the pair's total mass fixed.

    The value equals softmax(α); inside the pair it is ``m · softmax(α_pair)``, the pair mass ``m`` detached.
    The latency gradient thus moves only the two sampled α, like the gate gradient, and the rescale after the
    step leaves every other path's probability unchanged.
    """
    p = F.softmax(alpha, dim=0).detach()
    idx = torch.tensor(list(pair), device=alpha.device)
    mass = p[idx].sum()
    return p.index_put((idx,), mass * F.softmax(alpha[idx], dim=0))


def latency_loss(ce: torch.Tensor, expected_us: torch.Tensor, budget_us: float, form: str = "mul",
                 a: float = 0.2, b: float = 0.3, lam: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Combine the cross entropy with the expected latency.

    Args:
        ce: cross-entropy loss.
        expected_us: E[LAT] in µs (differentiable).
        budget_us: the latency budget T in µs.
        form: ``"mul"``: ``CE · a · (log E[LAT] / log T)^b`` (ProxylessNAS; logs of µs),
            ``"add"``: ``CE + λ · E[LAT] / T``, or
            ``"hinge"``: ``CE + λ · max(0, E[LAT] / T − 1)``: no pull towards faster ops once the expected net
            meets the budget, so the cross entropy alone chooses among the nets under it (with Adam, whose steps
            do not shrink with the gradient, the other two forms keep pushing α towards the cheapest ops however
            small their latency gradient is).
        a, b: the multiplicative form's scale and exponent.
        lam: the additive form's weight λ.

    Returns:
        ``(loss, details)`` with details ``{"ce", "expected_latency_us", "latency_term", "loss"}``.
    """
    if budget_us <= 1.0:
        raise TvmNasError(f"--latency-ms: the budget must be above 1 µs, got {budget_us} µs")
    ce, expected_us = ce.float(), expected_us.float()  # exact even after an autocast forward pass
    if form == "mul":
        term = a * (torch.log(expected_us) / math.log(budget_us)) ** b
        loss = ce * term
    elif form == "add":
        term = lam * expected_us / budget_us
        loss = ce + term
    elif form == "hinge":
        term = lam * torch.relu(expected_us / budget_us - 1.0)
        loss = ce + term
    else:
        raise TvmNasError(f"--loss: unknown loss form {form!r}; accepted: {', '.join(LOSS_FORMS)}")
    details = {k: float(v.detach()) for k, v in
               (("ce", ce), ("expected_latency_us", expected_us), ("latency_term", term), ("loss", loss))}
    return loss, details


def reinforce_reward(accuracy: float, latency_us: float, budget_us: float, w: float) -> float:
    """MnasNet/ProxylessNAS reward ``acc · (T / LAT)^w``."""
    return accuracy * (budget_us / latency_us) ** w
