"""The report's figures (PNG, drawn with matplotlib's Agg canvas): the architecture block by block, the latency
table as a heatmap, accuracy against latency, predicted against measured latency, TVM against its peers.

Each ``plot_*`` returns None when drawn, or a note saying why the figure is missing (never an exception for
missing data).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

from ..console import fmt_us
from ..errors import TvmNasError
from ..io import atomic_write_bytes
from ..ops import parse_op
from .summary import FixedInfo, NetInfo, RunSummary

# kernel size -> colour (the architecture figure and its legend); other kernels fall back to _OTHER_KERNEL
KERNEL_COLORS = {3: "#5b9bd5", 5: "#f4a53a", 7: "#d9534f"}
_OTHER_KERNEL = "#9b7fc9"
_FIXED_COLOR = "#d9d9d9"
KIND_STYLE = {  # net kind -> (marker, colour, size)
    "searched": ("*", "#d62728", 260),
    "reference": ("s", "#1f77b4", 90),
    "fastest": ("^", "#2ca02c", 90),
    "slowest": ("v", "#9467bd", 90),
    "random": ("o", "#7f7f7f", 50),
    "matched": ("o", "#7f7f7f", 50),
}


# -- figures -----------------------------------------------------------------------------------------------------
def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())


def _layer(op: str) -> tuple[str, int, int, str]:
    """(label, kernel, expansion, kind) of one op signature; unknown signatures draw as plain boxes."""
    try:
        sig = parse_op(op)
    except TvmNasError:
        return op, 0, 0, "unknown"
    if sig.kind == "mbconv":
        return f"MB{sig.expand} {sig.kernel}x{sig.kernel}", sig.kernel, sig.expand, "mbconv"
    labels = {"stem": "Conv 3x3", "head": "Conv 1x1", "classifier": "Pool FC", "zero": "zero"}
    return labels[sig.kind], sig.kernel, 0, sig.kind


def _arch_layers(s: RunSummary) -> list[dict]:
    """The searched net as a chain: fixed layers before the blocks, the blocks, fixed layers after."""
    ops = s.arch.ops if s.arch else []
    probs = s.arch.probabilities if s.arch else []
    before = [f for f in s.space.fixed if f.op not in ("head_conv_k1", "classifier")]
    after = [f for f in s.space.fixed if f.op in ("head_conv_k1", "classifier")]

    def fixed(f: FixedInfo) -> dict:
        label, k, e, kind = _layer(f.op)
        c, h = (f.in_shape + [0, 0, 0])[:2]
        return dict(label=label, kernel=k, expand=e, kind=kind, fixed=True, stride=f.stride,
                    shape=f"{c}x{h}x{h}", prob=None)

    layers = [fixed(f) for f in before]
    for i, op in enumerate(ops):
        label, k, e, kind = _layer(op)
        blk = s.space.blocks[i] if i < len(s.space.blocks) else None
        p = probs[i].get(op) if i < len(probs) else None
        layers.append(dict(label=label, kernel=k, expand=e, kind=kind, fixed=False,
                           stride=blk.stride if blk else 1,
                           shape=f"{blk.in_channels}x{blk.in_hw}x{blk.in_hw}" if blk else "", prob=p))
    layers += [fixed(f) for f in after]
    return layers


def plot_architecture(s: RunSummary, path: Path) -> str | None:
    """The searched net block by block (ProxylessNAS-style); returns a note instead when there is nothing to draw."""
    if s.arch is None or not s.arch.ops:
        return "no searched architecture in summary.json (arch.ops is missing)"
    layers = _arch_layers(s)
    gap, zero_w = 0.42, 0.45
    xs, x = [], 0.0
    for L in layers:
        if L["kind"] == "zero":
            w = zero_w
        elif L["kind"] == "mbconv":
            w = 0.3 + 0.14 * L["expand"]
        else:
            w = 0.55
        xs.append((x, w))
        x += w + gap
    total = x - gap

    def height(L) -> float:
        if L["kind"] == "mbconv":
            return 1.7 + 0.3 * L["kernel"]
        return 2.2

    fig = Figure(figsize=(max(7.0, 1.2 + total * 0.62), 4.6))
    ax = fig.add_subplot()
    top = max(height(L) for L in layers) / 2
    kernels_seen: set[int] = set()
    for (x0, w), L in zip(xs, layers, strict=True):
        cx = x0 + w / 2
        if L["kind"] == "zero":
            ax.plot([x0, x0 + w], [0, 0], color="#888", lw=1.2, ls="--")
            ax.add_patch(FancyArrowPatch((x0 - 0.05, 0.1), (x0 + w + 0.05, 0.1), connectionstyle="arc3,rad=-0.9",
                                         arrowstyle="-", ls="--", color="#888", lw=1.2))
            ax.text(cx, 0.75, "zero (skip)", rotation=90, ha="center", va="bottom", fontsize=8, color="#666")
        else:
            h = height(L)
            if L["kind"] == "mbconv":
                color = KERNEL_COLORS.get(L["kernel"], _OTHER_KERNEL)
                kernels_seen.add(L["kernel"])
            else:
                color = _FIXED_COLOR
            ax.add_patch(Rectangle((x0, -h / 2), w, h, facecolor=color, edgecolor="#333",
                                   lw=1.6 if not L["fixed"] else 1.0, hatch="//" if L["fixed"] else None))
            ax.text(cx, 0, L["label"], rotation=90, ha="center", va="center", fontsize=9,
                    fontweight="bold" if not L["fixed"] else "normal",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75) if L["fixed"] else None)
            if L["stride"] == 2:
                ax.text(cx, h / 2 + 0.12, "s2", ha="center", va="bottom", fontsize=8, fontweight="bold",
                        color="white", bbox=dict(boxstyle="round,pad=0.2", fc="#333", ec="none"))
        if L["prob"] is not None:
            ax.text(cx, top + 0.62, f"p={L['prob']:.2f}", ha="center", va="bottom", fontsize=7, color="#555",
                    rotation=90)
        if L["shape"]:
            ax.text(cx, -top - 0.15, L["shape"], rotation=90, ha="center", va="top", fontsize=7.5, color="#333")
    for (x0, w), (x1, _) in zip(xs, xs[1:], strict=False):
        ax.annotate("", xy=(x1, 0), xytext=(x0 + w, 0),
                    arrowprops=dict(arrowstyle="-|>", color="#444", lw=1, shrinkA=0, shrinkB=0))
    handles = [Patch(facecolor=KERNEL_COLORS.get(k, _OTHER_KERNEL), edgecolor="#333", label=f"kernel {k}x{k}")
               for k in sorted(kernels_seen)]
    handles += [Patch(facecolor=_FIXED_COLOR, edgecolor="#333", hatch="//", label="fixed layer"),
                Line2D([], [], color="#888", ls="--", label="zero (skip)"),
                Line2D([], [], marker="s", ls="", color="#333", label="s2: stride 2")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
              title="width ~ expansion", title_fontsize=8)
    ax.set_xlim(-0.3, total + 0.3)
    ax.set_ylim(-top - 1.25, top + 1.45)
    ax.set_axis_off()
    ax.set_title(f"Searched architecture: {s.space.name} on {s.target.name}, "
                 f"{fmt_us(s.predicted_us)} µs predicted (shapes under the boxes: input C x H x W)", fontsize=10)
    _save(fig, path)
    return None


def plot_latency_table(s: RunSummary, path: Path) -> str | None:
    """Heatmap of block x candidate latency (µs), the chosen op outlined."""
    t = s.latency_table
    if t is None or not t.blocks:
        return "no latency table in summary.json (latency_table.blocks is missing)"
    blocks = s.space.blocks[: len(t.blocks)]
    if not blocks:
        return "summary.json has no space.blocks, so the latency table's columns cannot be named"
    cols = list(dict.fromkeys(op for b in blocks for op in b.candidates))
    grid = [[math.nan] * len(cols) for _ in blocks]
    for i, (b, row) in enumerate(zip(blocks, t.blocks, strict=False)):
        for op, v in zip(b.candidates, row, strict=False):
            grid[i][cols.index(op)] = v if v is not None and math.isfinite(v) else math.nan
    chosen = s.arch.ops if s.arch else []

    fig = Figure(figsize=(2.6 + 1.15 * len(cols), 1.4 + 0.42 * len(blocks)))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["YlOrRd"].with_extremes(bad="#eeeeee")
    im = ax.imshow(grid, cmap=cmap, aspect="auto")
    finite = [v for row in grid for v in row if math.isfinite(v)]
    vmax = max(finite) if finite else 1.0
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            text = fmt_us(v)
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if math.isfinite(v) and v > 0.6 * vmax else "black")
        if i < len(chosen) and chosen[i] in cols:
            ax.add_patch(Rectangle((cols.index(chosen[i]) - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#1f3fbf",
                                   lw=2.8))
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(blocks)),
                  [f"#{b.index} {b.in_channels}→{b.out_channels} {b.in_hw}x{b.in_hw}" + (" s2" if b.stride == 2 else "")
                   for b in blocks], fontsize=8)
    fig.colorbar(im, ax=ax, label="latency (µs)", fraction=0.04)
    fixed = f"; fixed layers {fmt_us(t.fixed_us, 'µs')}" if t.fixed_us is not None else ""
    ax.set_title(f"Latency table on {s.target.name} (µs{fixed}); chosen op outlined", fontsize=10)
    _save(fig, path)
    return None


def _scatter_nets(ax, nets: list[NetInfo], xy: Callable[[NetInfo], tuple[float, float, bool]]) -> None:
    """Plot each net by kind; `xy` gives (x, y, filled)."""
    seen: set[str] = set()
    for n in nets:
        x, y, filled = xy(n)
        marker, color, size = KIND_STYLE.get(n.kind, ("o", "#7f7f7f", 50))
        label = n.kind if n.kind not in seen else None
        seen.add(n.kind)
        ax.scatter([x], [y], marker=marker, s=size, label=label, zorder=3, edgecolors=color, linewidths=1.5,
                   facecolors=color if filled else "white")
        ax.annotate(n.name, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)


def plot_accuracy_latency(s: RunSummary, path: Path) -> str | None:
    """Accuracy against latency (measured when compiled, else predicted) for the searched net and baselines."""
    nets = [n for n in s.nets if n.accuracy is not None and (n.measured_us or n.predicted_us) is not None]
    if not nets:
        return "no net has both an accuracy and a latency in summary.json"
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()

    def xy(n: NetInfo) -> tuple[float, float, bool]:
        measured = n.measured_us is not None
        return (n.measured_us if measured else n.predicted_us), 100 * n.accuracy, measured

    gt = s.ground_truth
    if gt is not None and gt.nets:
        ax.scatter([n.measured_us for n in gt.nets], [100 * n.test_accuracy for n in gt.nets], s=12,
                   color="#bbbbbb", zorder=1, label=f"all {len(gt.nets)} nets of the space trained alone "
                         f"({gt.recipe.get('epochs', '?')} epochs, test set)")
        front = sorted((n for n in gt.nets if n.front), key=lambda n: n.measured_us)
        ax.step([n.measured_us for n in front], [100 * n.test_accuracy for n in front], where="post",
                color="#555555", lw=1.2, zorder=2, label="ground-truth front")
    _scatter_nets(ax, nets, xy)
    if s.budget_us is not None:
        ax.axvline(s.budget_us, color="#d62728", ls="--", lw=1.2, label=f"budget {fmt_us(s.budget_us, 'µs')}")
    ax.set_xlabel("latency (µs): filled = measured with TVM, hollow = predicted from the table")
    test = {n.accuracy_set for n in nets} == {"test"}
    ax.set_ylabel("test accuracy (%)" if test else "accuracy (%): validation split, not held out")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"Accuracy against latency on {s.target.name}", fontsize=10)
    _save(fig, path)
    return None


def plot_predicted_measured(s: RunSummary, path: Path) -> str | None:
    """Predicted (latency table) against measured (compiled module) latency, with the y = x line."""
    nets = [n for n in s.nets if n.measured_us is not None and n.predicted_us is not None]
    if not nets:
        return "no compiled net has both a predicted and a measured latency in summary.json"
    fig = Figure(figsize=(6.2, 5.2))
    ax = fig.add_subplot()
    # the validate stage's learned model (each net fitted on the others) is the table's prediction from now on;
    # the plain sum is shown hollow
    from ..profile.model import FITTED

    fitted = next(((f.row, f.label) for f in FITTED if all(getattr(n, f.row) is not None for n in nets)), None)
    if fitted:
        ax.scatter([n.predicted_us for n in nets], [n.measured_us for n in nets], s=22, facecolors="none",
                   edgecolors="#999", label=f"table sum (before the {fitted[1]})")
    x = (lambda n: getattr(n, fitted[0])) if fitted else (lambda n: n.predicted_us)
    _scatter_nets(ax, nets, lambda n: (x(n), n.measured_us, True))
    vals = [v for n in nets for v in (n.predicted_us, n.measured_us, x(n))]
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo) if hi > lo else 0.1 * hi + 1
    lim = (max(0.0, lo - pad), hi + pad)
    ax.plot(lim, lim, color="#555", ls="--", lw=1, label="measured = predicted")
    for n in nets:  # interquartile range of the interleaved measurement
        if n.measurement.q1 is not None and n.measurement.q3 is not None:
            ax.plot([x(n)] * 2, [n.measurement.q1, n.measurement.q3], color="#888", lw=1)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    ax.set_xlabel("predicted latency (µs, " + (f"{fitted[1]}, each net fitted on the others)" if fitted
                                               else "latency table)"))
    ax.set_ylabel("measured latency (µs, compiled module)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Predicted against measured latency on {s.target.name}", fontsize=10)
    _save(fig, path)
    return None


_PEER_COLUMNS = (("tvm_us", "TVM (tuned)"), ("tvm_untuned_us", "TVM (untuned)"), ("pytorch_us", "PyTorch eager"),
                 ("onnxruntime_us", "ONNX Runtime"))


def _peer_value(p, k: str) -> float | None:
    if k.startswith("rt:"):
        return next((r.measured_us for r in p.runtimes if r.runtime == k[3:]), None)
    return getattr(p, k)


def plot_peers(s: RunSummary, path: Path) -> str | None:
    """Grouped bars: the compiled module against every peer that ran (and untuned TVM)."""
    peers = s.peers
    if any(p.runtimes for p in peers):
        names = list(dict.fromkeys(r.runtime for p in peers for r in p.runtimes if r.measured_us is not None))
        cols = [(f"rt:{n}", n) for n in names]
    else:
        cols = [(k, name) for k, name in _PEER_COLUMNS if any(getattr(p, k) is not None for p in peers)]
    if not peers or not cols:
        return "no peer measurements (PyTorch, ONNX Runtime) in summary.json"
    fig = Figure(figsize=(7.5, 1.6 + 0.9 * len(peers) + 0.25 * len(cols) * len(peers)))
    ax = fig.add_subplot()
    colors = {"tvm_us": "#d62728", "tvm_untuned_us": "#ff9896", "pytorch_us": "#1f77b4", "onnxruntime_us": "#2ca02c",
              "rt:tvm": "#d62728", "rt:tvm-untuned": "#ff9896", "rt:pytorch": "#1f77b4", "rt:onnxruntime": "#2ca02c",
              "rt:torch-compile": "#17becf", "rt:openvino": "#9467bd", "rt:executorch": "#8c564b"}
    bar = 0.8 / len(cols)
    for j, (k, name) in enumerate(cols):
        ys = [i + (j - (len(cols) - 1) / 2) * bar for i in range(len(peers))]
        vals = [_peer_value(p, k) for p in peers]
        ax.barh([y for y, v in zip(ys, vals, strict=True) if v is not None], [v for v in vals if v is not None],
                height=bar * 0.9, color=colors.get(k, "#7f7f7f"), label=name)
        for y, v in zip(ys, vals, strict=True):
            if v is not None:
                ax.text(v, y, f" {fmt_us(v)}", va="center", fontsize=8)
    ax.set_yticks(range(len(peers)), [p.net for p in peers])
    ax.invert_yaxis()
    shown = [_peer_value(p, k) for p in peers for k, _ in cols if _peer_value(p, k)]
    log = bool(shown) and max(shown) > 20 * min(shown)  # eager PyTorch can be 10-100x: keep every bar readable
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("latency (µs, median; shorter is faster)" + (", log scale" if log else ""))
    ax.margins(x=0.15)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"Compiled module against peers on {s.target.name}", fontsize=10)
    _save(fig, path)
    return None


FIGURES: tuple[tuple[str, str, Callable[[RunSummary, Path], str | None]], ...] = (
    ("architecture.png", "Searched architecture", plot_architecture),
    ("latency_table.png", "Latency table", plot_latency_table),
    ("accuracy_latency.png", "Accuracy against latency", plot_accuracy_latency),
    ("predicted_measured.png", "Predicted against measured latency", plot_predicted_measured),
    ("peers.png", "TVM against its peers", plot_peers),
)


# -- the page ----------------------------------------------------------------------------------------------------
