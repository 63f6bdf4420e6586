"""Path-level pruning (keep the most probable op per block) and the architecture file (``*.arch.json``).

The architecture file embeds the full space definition, so :func:`load_arch` rebuilds the exact network with
no other file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from ..errors import TvmNasError
from ..io import atomic_write_json, read_json
from ..latency_table import LatencyTable
from ..ops import parse_op
from ..space import SearchSpace, load_space, resolve

SCHEMA = 1


def prune(probabilities: Sequence[np.ndarray], space: SearchSpace) -> list[str]:
    """Path-level pruning: the most probable candidate of every block."""
    return [b.candidates[int(np.argmax(p))] for b, p in zip(space.blocks(), probabilities, strict=True)]


def fit_budget(ops: Sequence[str], probabilities: Sequence[np.ndarray], space: SearchSpace,
               table: LatencyTable, budget_us: float) -> tuple[list[str], list[int]]:
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


def derive(probabilities: Sequence[np.ndarray], space: SearchSpace, table: LatencyTable,
           budget_us: float | None = None, enforce_budget: bool = True) -> dict:
    """Derive the final architecture from the architecture probabilities.

    Args:
        probabilities: p per block, in the block's candidate order.
        space: the search space.
        table: the latency table searched against.
        budget_us: the latency budget (µs), or None.
        enforce_budget: if the pruned net is over budget, swap in faster ops (see :func:`fit_budget`); the
            ``derivation`` field records the pure argmax net and what was changed.

    Returns:
        The architecture document (see :func:`arch_document`) without search settings.
    """
    argmax_ops = prune(probabilities, space)
    argmax_lat = table.predict(space, argmax_ops)
    ops, changed = argmax_ops, []
    if budget_us is not None and enforce_budget:
        ops, changed = fit_budget(argmax_ops, probabilities, space, table, budget_us)
    lat = table.predict(space, ops)
    fastest_us = table.predict(space, table.extremes(space)[0])
    derivation = {"rule": "argmax" if not changed else "argmax, then fit to budget",
                  "argmax_ops": argmax_ops, "argmax_latency_us": argmax_lat, "changed_blocks": changed,
                  "budget_us": budget_us, "budget_met": None if budget_us is None else bool(lat <= budget_us),
                  # False: even the fastest net of the space is over budget, so no search could meet it
                  "budget_feasible": None if budget_us is None else bool(fastest_us <= budget_us),
                  "fastest_latency_us": fastest_us}
    return arch_document(space, ops, probabilities, table, derivation=derivation)


def arch_document(space: SearchSpace, ops: Sequence[str], probabilities: Sequence[np.ndarray] | None,
                  table: LatencyTable | None, search: dict | None = None,
                  derivation: dict | None = None) -> dict:
    """The architecture file's content (DESIGN.md, schema 1)."""
    blocks = space.blocks()
    probs = None
    if probabilities is not None:
        probs = [{op: float(v) for op, v in zip(b.candidates, p, strict=True)}
                 for b, p in zip(blocks, probabilities, strict=True)]
    doc = {
        "schema": SCHEMA,
        "space": space.describe(),
        "ops": list(ops),
        "probabilities": probs,
        "latency_table": None if table is None else {
            "target": table.target.get("name"), "hash": table.hash,
            "path": None if table.path is None else str(table.path)},
        "predicted_latency_us": None if table is None else table.predict(space, list(ops)),
    }
    if derivation is not None:
        doc["derivation"] = derivation
    doc["search"] = search or {}
    return doc


def write_arch(path: str | os.PathLike, doc: dict) -> Path:
    """Write an architecture document atomically."""
    return atomic_write_json(path, doc)


def load_arch(path: str | os.PathLike) -> tuple[SearchSpace, list[str], dict]:
    """Load an architecture file and rebuild its space from the embedded definition.

    Returns:
        ``(space, ops, doc)``; ``doc["warnings"]`` lists non-fatal findings (e.g. a space of the same name on
        disk now has another definition — the embedded one is used).

    Raises:
        TvmNasError: missing or corrupted file, unsupported schema, a definition whose hash does not match the
            recorded one, or ops that are not candidates of their blocks.
    """
    path = Path(path)
    doc = read_json(path, "architecture file")
    if doc.get("schema") != SCHEMA:
        raise TvmNasError(f"{path}: field 'schema': {doc.get('schema')!r} is not supported "
                          f"(expected {SCHEMA})")
    sp = doc.get("space")
    if not isinstance(sp, dict) or not isinstance(sp.get("definition"), dict):
        raise TvmNasError(f"{path}: field 'space.definition': missing or not an object")
    try:
        space = SearchSpace.model_validate(sp["definition"])
        space.blocks()
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise TvmNasError(f"{path}: field 'space.definition.{field}': {err['msg']}") from e
    except TvmNasError as e:
        raise TvmNasError(f"{path}: field 'space.definition': {e}") from e
    if sp.get("hash") != space.hash:
        raise TvmNasError(f"{path}: field 'space.hash': {sp.get('hash')!r} does not match the embedded "
                          f"definition (hash {space.hash}); the file was changed or corrupted")
    warnings = []
    try:
        on_disk = load_space(resolve(space.name, "search_space"))
        if on_disk.hash != space.hash:
            warnings.append(f"space '{space.name}' on disk has hash {on_disk.hash}, the architecture's is "
                            f"{space.hash}; using the definition embedded in {path.name}")
    except TvmNasError:
        pass  # no space of that name on disk: the embedded definition is all there is
    ops = doc.get("ops")
    blocks = space.blocks()
    if not isinstance(ops, list) or len(ops) != len(blocks):
        n = len(ops) if isinstance(ops, list) else "no"
        raise TvmNasError(f"{path}: field 'ops': {n} ops for the {len(blocks)} blocks of space "
                          f"'{space.name}'")
    for blk, op in zip(blocks, ops, strict=True):
        parse_op(op, f"{path}: field 'ops[{blk.index}]'")
        if op not in blk.candidates:
            raise TvmNasError(f"{path}: field 'ops[{blk.index}]': {op!r} is not a candidate of block "
                              f"{blk.index} (candidates: {', '.join(blk.candidates)})")
    doc["warnings"] = warnings
    return space, list(ops), doc
