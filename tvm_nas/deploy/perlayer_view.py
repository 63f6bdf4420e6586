"""What ``compare --per-layer`` prints and writes: a terminal table per net and target, and flat CSV rows."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..console import fmt_ratio, fmt_us
from .perlayer import PEER_SHORT, PEER_TITLE, PROFILED_PEERS


def per_layer_table(answers: Sequence[dict]) -> RenderableType:
    """One terminal table per net and target: layers sorted by TVM's loss."""
    parts: list[RenderableType] = []
    for ans in answers:
        if ans.get("not_run"):
            parts += [Text(f"per layer: {ans['architecture']} on {ans['target']}: not run ({ans['not_run']})"),
                      Text()]
            continue
        peers = [p for p in PROFILED_PEERS if p in ans.get("peer_totals_us", {})]
        t = Table(title=f"per layer: {ans['architecture']} on {ans['target']}, µs (median)", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True)
        for c, j in (("layer", "left"), ("op", "left"), ("k", "right"), ("tvm", "right"), ("pred", "right"),
                     *((PEER_SHORT[p], "right") for p in peers), ("loss", "right")):
            t.add_column(c, justify=j, no_wrap=True)
        for r in ans["rows"]:
            tvm = fmt_us(r["tvm_us"]) + ("" if r["tvm_stable"] is not False else " *")
            loss = fmt_us(r["loss_us"], sign=True)
            t.add_row(r["layer"], r["op"], str(len(r["kernels"])), tvm, fmt_us(r["predicted_us"]),
                      *(fmt_us(r[f"{p}_us"]) for p in peers), loss)
        net = ans.get("tvm_net_us")
        lines = [f"k: TVM's fused kernels in the layer, each timed alone (sum {ans['tvm_sum_us']:,.1f}"
                 + (f", whole net {net:,.1f}: {fmt_ratio(ans['tvm_sum_us'], net)}" if net else "") + ");"
                 " pred: the table's entry less the call cost; * unstable"]
        if ans.get("peer"):
            lines.append(f"loss: TVM minus the fastest profiled peer ({PEER_TITLE[ans['peer']]}) on the same layer, "
                         "largest first: the layers to give more tuning trials")
        for p, s in ans.get("peers", {}).items():
            lines.append(f"{PEER_SHORT[p]}: {s}" + (f" (sum {ans['peer_totals_us'][p]:,.1f})"
                                                   if p in ans.get("peer_totals_us", {}) else ""))
        parts += [t, Text("\n".join(lines)), Text()]
    return Group(*parts)


def csv_rows(answers: Sequence[dict]) -> list[dict]:
    """The rows of every answer, flat (:data:`CSV_COLUMNS`; kernels as ``name;name``)."""
    return [{**r, "kernels": ";".join(k["name"] for k in r["kernels"])} for ans in answers for r in ans["rows"]]
