"""The budget met by measurement: the searched net is chosen among nets derived around the budget, each compiled by
TVM and timed on the target, not by the table alone.

The derivation (:func:`~tvm_nas.search.derive.derive`) fits the net to the budget less a margin kept for the table's
error. A fixed margin is a guess either way: where the table over-predicts, the best net under the budget is one the
table puts just over it, and the margin gives up accuracy for nothing; where it under-predicts (a board it was not
measured on, a slower phase of the machine), the margin may not be enough. Here the derivation is aimed at the
budget less the margin, at the budget and at the budget plus the margin; the distinct nets are compiled with the
target's tuning database and timed together under the measurement protocol; the slowest whose measured median meets
the budget is kept (on the ground truth of ``tiny-cifar`` latency and accuracy go together). When none does, one more
net is derived where the fastest candidate's measured-to-predicted ratio puts the budget, and if that is over too,
the fastest measured net is kept and the derivation says the budget is not met by measurement.

The choice itself (:func:`settle_by_measurement`) knows nothing of TVM: the measurements arrive through a callback.
:func:`settle_search` is the step ``tvm-nas run`` (and ``tvm-nas search --measure-budget``) takes after a search,
with the callback that compiles and times on the target (:func:`~tvm_nas.deploy.validate.measure_nets`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..arch import arch_document
from ..profile.model import LatencyModel
from ..space import SearchSpace
from .derive import derive

# ops of each net -> each net's timing figure (median, q1, q3, stable, rounds; µs), in the same order
Measure = Callable[[list[list[str]]], list[dict]]


def around_budget(probabilities: Sequence[np.ndarray], space: SearchSpace, table: LatencyModel, budget_us: float,
                  margin_pct: float, fill: bool = True) -> list[tuple[float, dict]]:
    """The distinct nets the derivation keeps aimed at the budget less `margin_pct`, at the budget and at the budget
    plus `margin_pct`: ``(margin, derivation document)`` each, the most conservative first."""
    out, seen = [], set()
    for m in (margin_pct, 0.0, -margin_pct):
        doc = derive(probabilities, space, table, budget_us, True, m, fill)
        if tuple(doc["ops"]) not in seen:
            seen.add(tuple(doc["ops"]))
            out.append((m, doc))
    return out


def settle_by_measurement(doc: dict, probabilities: Sequence[np.ndarray], space: SearchSpace, table: LatencyModel,
                          budget_us: float, margin_pct: float, fill: bool, measure: Measure,
                          say: Callable[[str], None] = print) -> dict:
    """The search's architecture document `doc` with its net chosen by measurement (see the module docstring).

    `measure` compiles and times nets on the target; the document's ``derivation.measured`` records every net
    measured (ops, the margin it was derived with, predicted and measured latency, whether it meets the budget) and
    ``derivation.budget_met`` becomes the measured answer. The search's own fields (``search``) are kept."""
    pool = around_budget(probabilities, space, table, budget_us, margin_pct, fill)
    rows = _measured(pool, measure, budget_us)
    if not any(r["meets"] for r in rows):
        fastest = min(rows, key=lambda r: r["measured_us"])
        # aim where the fastest net's measured/predicted ratio puts the budget, less the margin again
        aim = budget_us * fastest["predicted_us"] / fastest["measured_us"] * (1 - margin_pct / 100)
        m = 100 * (1 - aim / budget_us)
        more = derive(probabilities, space, table, budget_us, True, m, fill)
        if all(r["ops"] != more["ops"] for r in rows):
            pool.append((m, more))
            rows += _measured(pool[-1:], measure, budget_us)
    under = [r for r in rows if r["meets"]]
    kept = max(under, key=lambda r: r["measured_us"]) if under else min(rows, key=lambda r: r["measured_us"])
    chosen = next(d for _, d in pool if d["ops"] == kept["ops"])
    derivation = {**chosen["derivation"], "budget_margin_pct": margin_pct, "budget_met": kept["meets"],
                  "rule": chosen["derivation"]["rule"] + f"; of {len(rows)} nets derived around the budget and "
                          "measured, the slowest whose measured median meets it" + ("" if under else
                                                                                     " (none did: the fastest)"),
                  "measured": rows}
    out = arch_document(space, kept["ops"], probabilities, table, search=doc.get("search"), derivation=derivation)
    say(_line(rows, kept, budget_us))
    return out


def kept_row(doc: dict) -> dict | None:
    """The row of ``derivation.measured`` of an architecture document's own net (None when it was not chosen by
    measurement)."""
    return next((r for r in ((doc.get("derivation") or {}).get("measured") or []) if r["ops"] == doc["ops"]), None)


def _measured(cands: list[tuple[float, dict]], measure: Measure, budget_us: float) -> list[dict]:
    timings = measure([list(d["ops"]) for _, d in cands])
    return [{"ops": list(d["ops"]), "margin_pct": round(m, 4), "predicted_us": d["predicted_latency_us"],
             "measured_us": t["median"], "measurement": t, "meets": bool(t["median"] <= budget_us)}
            for (m, d), t in zip(cands, timings, strict=True)]


def _line(rows: list[dict], kept: dict, budget_us: float) -> str:
    each = "; ".join(f"{' '.join(r['ops'])}: table {r['predicted_us']:.1f}, measured {r['measured_us']:.1f} µs"
                     + ("" if r["meets"] else " (over)") for r in rows)
    verdict = (f"kept {' '.join(kept['ops'])} ({kept['measured_us']:.1f} µs measured)" if kept["meets"] else
               f"[bold red]none meets the budget by measurement[/]: kept the fastest, {' '.join(kept['ops'])} "
               f"({kept['measured_us']:.1f} µs)")
    return f"budget {budget_us:.1f} µs by measurement, {len(rows)} nets derived around it: {each} -> {verdict}"


def settle_search(search, spec, logs_dir, seed: int = 0, console=None,
                  also: Sequence[Sequence[str]] = ()) -> tuple[dict | None, dict[tuple, dict]]:
    """Choose a finished search's net by measurement on target `spec` (its tuning database under `logs_dir`),
    rewriting the search's architecture file; None where the target cannot be timed from here (the table's choice
    stands, and the console says so).

    `also`: further nets timed in the same session as the first nets derived around the budget (a run's rivals of
    matched latency). Returns the document and the timing of each of them by ops (``{}`` when none were timed)."""
    from ..arch import write_arch
    from ..deploy.compile import unmeasurable
    from ..deploy.validate import measure_nets

    say = console.print if console is not None else print
    why = unmeasurable(spec)
    if why:
        say(f"the budget is met by the table's prediction only ({why})")
        return None, {}
    conf = search.config
    extra = [list(ops) for ops in also]
    timed: dict[tuple, dict] = {}

    def measure(nets):
        more = [] if timed else extra  # the first session only
        t = measure_nets(search.space, spec, [*nets, *more], search.table, logs_dir, seed, console)
        timed.update({tuple(ops): x for ops, x in zip(more, t[len(nets):], strict=True)})
        return t[:len(nets)]

    doc = settle_by_measurement(search.arch_, search.probabilities_, search.space, search.table,
                                conf.latency_budget_us, conf.budget_margin, conf.fill_budget, measure, say)
    write_arch(search.arch_path_, doc)
    search.arch_ = doc
    return doc, timed
