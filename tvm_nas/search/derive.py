"""Path-level pruning: keep the most probable op per block, then (optionally) fit the net to the budget."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..arch import arch_document
from ..profile.model import LatencyModel
from ..space import SearchSpace

SCHEMA = 1


def prune(probabilities: Sequence[np.ndarray], space: SearchSpace) -> list[str]:
    """Path-level pruning: the most probable candidate of every block."""
    return [b.candidates[int(np.argmax(p))] for b, p in zip(space.blocks(), probabilities, strict=True)]


def fit_budget(ops: Sequence[str], probabilities: Sequence[np.ndarray], space: SearchSpace,
               table: LatencyModel, budget_us: float) -> tuple[list[str], list[int]]:
    """Swap ops for faster ones until the net meets the budget, losing the least log-probability per µs saved.

    Returns:
        The ops (unchanged if they already meet the budget) and the indices of the blocks that were changed.
    """
    ops, changed = list(ops), []
    blocks = space.blocks()
    while table.predict(space, ops) > budget_us:
        best = None
        for i, (blk, p) in enumerate(zip(blocks, probabilities, strict=True)):
            cur = blk.candidates.index(ops[i])
            cur_lat = table.latency(blk.key(ops[i]))
            for j, op in enumerate(blk.candidates):
                saved = cur_lat - table.latency(blk.key(op))
                if saved > 0:
                    cost = (math.log(max(p[cur], 1e-12)) - math.log(max(p[j], 1e-12))) / saved
                    if best is None or cost < best[0]:
                        best = (cost, i, op)
        if best is None:
            break  # the fastest net of the space is still over budget
        ops[best[1]] = best[2]
        if best[1] not in changed:
            changed.append(best[1])
    return ops, sorted(changed)


def fill_budget(ops: Sequence[str], probabilities: Sequence[np.ndarray], space: SearchSpace,
                table: LatencyModel, budget_us: float) -> tuple[list[str], list[int]]:
    """Spend what the net leaves of the budget: swap ops for slower ones while the net still meets the budget,
    losing the least log-probability per µs added (the mirror of :func:`fit_budget`).

    An undecided block (α near uniform) gives its op up cheaply and takes the slower one; a block α has decided
    keeps its op until nothing cheaper is left. Returns the ops and the indices of the blocks that were changed.
    """
    ops, changed = list(ops), []
    blocks = space.blocks()
    while True:
        best = None
        for i, (blk, p) in enumerate(zip(blocks, probabilities, strict=True)):
            cur = blk.candidates.index(ops[i])
            cur_lat = table.latency(blk.key(ops[i]))
            for j, op in enumerate(blk.candidates):
                added = table.latency(blk.key(op)) - cur_lat
                if added <= 0:
                    continue
                cost = (math.log(max(p[cur], 1e-12)) - math.log(max(p[j], 1e-12))) / added
                if best is not None and cost >= best[0]:
                    continue
                grown = [*ops[:i], op, *ops[i + 1:]]
                if table.predict(space, grown) <= budget_us:
                    best = (cost, i, grown)
        if best is None:
            return ops, sorted(changed)
        ops = best[2]
        if best[1] not in changed:
            changed.append(best[1])


UNDECIDED = 0.9  # a block whose α entropy is above this share of the uniform distribution's has not chosen


def undecided(probabilities: Sequence[np.ndarray]) -> list[int]:
    """Blocks whose probabilities are still close to uniform (normalised entropy above :data:`UNDECIDED`): there
    the most probable op is barely ahead, and the argmax is mostly noise. For a 4-way block, (0.4, 0.2, 0.2,
    0.2) is undecided (0.96) and (0.5, 0.3, 0.1, 0.1) decided (0.84)."""
    out = []
    for i, p in enumerate(probabilities):
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
        if len(p) > 1 and float(-(p * np.log(p)).sum()) / math.log(len(p)) > UNDECIDED:
            out.append(i)
    return out


def target_us(budget_us: float | None, margin_pct: float) -> float | None:
    """The latency the derived net is fitted to: the budget less the margin kept for the table's error."""
    return None if budget_us is None else budget_us * (1.0 - margin_pct / 100.0)


def derive(probabilities: Sequence[np.ndarray], space: SearchSpace, table: LatencyModel,
           budget_us: float | None = None, enforce_budget: bool = True, margin_pct: float = 0.0,
           fill: bool = False) -> dict:
    """Derive the final architecture from the architecture probabilities.

    Args:
        probabilities: p per block, in the block's candidate order.
        space: the search space.
        table: the latency table searched against.
        budget_us: the latency budget (µs), or None.
        enforce_budget: if the pruned net is predicted over the budget less `margin_pct` percent, swap in faster
            ops until it is not (see :func:`fit_budget`); the ``derivation`` field records the pure argmax net and
            what was changed.
        margin_pct: share of the budget kept for the table's error, so that a net predicted at the budget is not
            measured over it (a table predicts a net within some percent, either side).
        fill: with `enforce_budget`, spend what the net leaves of the budget less the margin on slower ops where α
            minds least (see :func:`fill_budget`); the ``derivation`` records the blocks it changed. Where α has
            not decided, the argmax net can use half the budget, and a slower net of the same space is usually
            the more accurate one.

    Returns:
        The architecture document (see :func:`arch_document`) without search settings.
    """
    argmax_ops = prune(probabilities, space)
    argmax_lat = table.predict(space, argmax_ops)
    ops, changed = argmax_ops, []
    target = target_us(budget_us, margin_pct)
    filled: list[int] = []
    if budget_us is not None and enforce_budget:
        ops, changed = fit_budget(argmax_ops, probabilities, space, table, target)
        if fill:
            ops, filled = fill_budget(ops, probabilities, space, table, target)
    lat = table.predict(space, ops)
    fastest_us = table.predict(space, table.extremes(space)[0])
    rule = "argmax" + (", then fit to budget" if changed else "") + (", then fill the budget" if filled else "")
    derivation = {"rule": rule, "argmax_ops": argmax_ops, "argmax_latency_us": argmax_lat, "changed_blocks": changed,
                  "filled_blocks": filled,
                  "budget_us": budget_us, "budget_met": None if budget_us is None else bool(lat <= budget_us),
                  "budget_margin_pct": None if budget_us is None else margin_pct, "target_us": target,
                  # False: even the fastest net of the space is over budget, so no search could meet it
                  "budget_feasible": None if budget_us is None else bool(fastest_us <= budget_us),
                  "fastest_latency_us": fastest_us,
                  "undecided_blocks": undecided(probabilities)}
    return arch_document(space, ops, probabilities, table, derivation=derivation)


BEAM = 256  # partial nets kept per block by :func:`most_probable`


def most_probable(probabilities: Sequence[np.ndarray], space: SearchSpace, table: LatencyModel,
                  budget_us: float | None, k: int) -> list[list[str]]:
    """The `k` most probable nets under α (by the sum of their ops' log-probabilities) whose predicted latency
    meets `budget_us` (all nets when None), most probable first.

    A beam of :data:`BEAM` partial nets per block; a partial net is dropped early only when even its fastest
    completion, by the table's per-op sum, is a quarter over the budget (the final check is the model's own
    prediction, which a learned correction may move by some percent)."""
    blocks = space.blocks()
    lat = table.block_matrix(space)
    fixed = table.fixed_latency(space)
    rest = [float(sum(v.min() for v in lat[i:])) for i in range(len(blocks) + 1)]  # fastest completion
    beam: list[tuple[float, float, list[int]]] = [(0.0, fixed, [])]
    for i, p in enumerate(probabilities):
        logp = np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0))
        grown = [(lp + logp[j], us + lat[i][j], idx + [j]) for lp, us, idx in beam for j in range(len(logp))
                 if budget_us is None or us + lat[i][j] + rest[i + 1] <= 1.25 * budget_us]
        beam = sorted(grown, key=lambda t: -t[0])[:BEAM]
    out = []
    for _, _, idx in beam:
        ops = [b.candidates[j] for b, j in zip(blocks, idx, strict=True)]
        if budget_us is None or table.predict(space, ops) <= budget_us:
            out.append(ops)
        if len(out) == k:
            break
    return out


def derive_by_shared_weights(probabilities: Sequence[np.ndarray], space: SearchSpace, table: LatencyModel,
                             budget_us: float | None, k: int, score, margin_pct: float = 0.0,
                             fill: bool = False) -> dict:
    """Derive the net as :func:`derive` does, then let the supernet choose: of the `k` most probable nets that
    meet the budget less the margin (:func:`most_probable`), plus the net :func:`derive` keeps, the one whose
    validation accuracy with the shared weights (`score`: ``{label: ops} -> {label: accuracy}``) is highest.

    α alone ranks the nets by how they helped the supernet during the search; the shared weights judge each
    candidate whole, on the search's validation split, with its batch-norm statistics re-estimated."""
    doc = derive(probabilities, space, table, budget_us, True, margin_pct, fill)
    kept = doc["ops"]
    cands = most_probable(probabilities, space, table, target_us(budget_us, margin_pct), k)
    if kept not in cands:
        cands.append(list(kept))
    acc = score({f"c{i}": ops for i, ops in enumerate(cands)})
    best = max(range(len(cands)), key=lambda i: (acc[f"c{i}"], -i))  # ties: the more probable
    ops = cands[best]
    derivation = {**doc["derivation"],
                  "rule": f"the {len(cands)} most probable nets meeting the budget, best by shared-weight "
                          "validation accuracy",
                  "candidates": [{"ops": c, "shared_val_accuracy": acc[f"c{i}"]} for i, c in enumerate(cands)]}
    lat = table.predict(space, ops)
    if budget_us is not None:
        derivation["budget_met"] = bool(lat <= budget_us)
    return arch_document(space, ops, probabilities, table, derivation=derivation)
