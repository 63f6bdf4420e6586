"""The run report: one static HTML page and its figures, drawn from a run directory's `summary.json`.

:func:`render_report` writes ``<run_dir>/report/index.html`` with PNG figures beside it (the searched architecture
block by block, the latency table as a heatmap, accuracy against latency, predicted against measured latency,
TVM against PyTorch and ONNX Runtime); :func:`terminal_summary` is the closing table the command line prints.

Every number on the page is formatted from `summary.json` by :func:`fmt_us` (latency, one decimal) and
:func:`fmt_pct` (accuracy, percent with one decimal). Missing optional pieces render as "n/a" or as a note in
place of a figure; they never stop the report.
"""

from __future__ import annotations

import html
import io
import math
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import TvmNasError
from .io import atomic_write_bytes, atomic_write_text, read_json
from .ops import parse_op

__all__ = ["render_report", "terminal_summary", "load_summary", "fmt_us", "fmt_pct", "RunSummary"]

SCHEMA = 1
NA = "n/a"

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
}


# -- summary.json, validated in one place ----------------------------------------------------------------------
class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        """An optional field written as null takes its default (an empty list stays a list)."""
        if isinstance(data, dict):
            fields = cls.model_fields
            return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}
        return data


class BlockInfo(_Part):
    index: int
    in_channels: int
    out_channels: int
    stride: int = 1
    in_hw: int
    candidates: list[str]


class FixedInfo(_Part):
    op: str
    in_shape: list[int]
    out_channels: int
    stride: int = 1


class SpaceInfo(_Part):
    name: str = "?"
    hash: str = ""
    input: list[int] = Field(default_factory=list)
    num_classes: int | None = None
    blocks: list[BlockInfo] = Field(default_factory=list)
    fixed: list[FixedInfo] = Field(default_factory=list)


class TargetInfo(_Part):
    name: str = "?"
    tvm: dict | str | None = None


class ArchInfo(_Part):
    ops: list[str] = Field(default_factory=list)
    probabilities: list[dict[str, float]] = Field(default_factory=list)
    predicted_us: float | None = None
    path: str | None = None


class TableInfo(_Part):
    path: str | None = None
    blocks: list[list[float | None]] = Field(default_factory=list)
    fixed_us: float | None = None


class NetInfo(_Part):
    name: str
    kind: str = "random"
    ops: list[str] = Field(default_factory=list)
    accuracy: float | None = None
    predicted_us: float | None = None
    measured_us: float | None = None


class PeerInfo(_Part):
    net: str
    tvm_us: float | None = None
    tvm_untuned_us: float | None = None
    pytorch_us: float | None = None
    onnxruntime_us: float | None = None


class StageInfo(_Part):
    name: str
    seconds: float | None = None
    status: str = ""


class RunSummary(_Part):
    """`summary.json` as written by `tvm-nas run` (schema 1); every section but the schema is optional."""

    schema_version: int = Field(alias="schema")
    space: SpaceInfo = Field(default_factory=SpaceInfo)
    target: TargetInfo = Field(default_factory=TargetInfo)
    budget_us: float | None = None
    arch: ArchInfo | None = None
    latency_table: TableInfo | None = None
    nets: list[NetInfo] = Field(default_factory=list)
    peers: list[PeerInfo] = Field(default_factory=list)
    stages: list[StageInfo] = Field(default_factory=list)
    artifacts: dict[str, str] = Field(default_factory=dict)

    @property
    def searched(self) -> NetInfo | None:
        """The searched net: the first of kind `searched`, else the first net."""
        return next((n for n in self.nets if n.kind == "searched"), self.nets[0] if self.nets else None)

    @property
    def predicted_us(self) -> float | None:
        if self.arch is not None and self.arch.predicted_us is not None:
            return self.arch.predicted_us
        return self.searched.predicted_us if self.searched else None


def load_summary(run_dir: str | os.PathLike) -> RunSummary:
    """Read and validate ``run_dir/summary.json``.

    Raises:
        TvmNasError: the file is missing, corrupted, of another schema, or a field has the wrong type.
    """
    path = Path(run_dir) / "summary.json"
    raw = read_json(path, "run summary (written by `tvm-nas run`)")
    if raw.get("schema") != SCHEMA:
        raise TvmNasError(f"{path}: schema {raw.get('schema')!r}, this tvm-nas reads schema {SCHEMA}; "
                          "rerun `tvm-nas run` with this version to rewrite it")
    try:
        return RunSummary.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise TvmNasError(f"{path}: {field}: {err['msg']} (got {err.get('input')!r}); "
                          "rerun `tvm-nas run` to rewrite the summary") from e


# -- number formatting: the only place numbers become text ------------------------------------------------------
def fmt_us(v: float | None) -> str:
    """A latency in µs with one decimal (``171.3``), or ``n/a``."""
    return NA if v is None or not math.isfinite(v) else f"{v:.1f}"


def fmt_pct(v: float | None) -> str:
    """An accuracy (a fraction) as a percent with one decimal (``81.0%``), or ``n/a``."""
    return NA if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _fmt_ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or not den:
        return NA
    return f"{num / den:.2f}x"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return NA
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m // 60} h {m % 60} min" if m >= 60 else f"{m} min {sec} s"


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
            text = "–" if not math.isfinite(v) else fmt_us(v)
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
    fixed = f"; fixed layers {fmt_us(t.fixed_us)} µs" if t.fixed_us is not None else ""
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

    _scatter_nets(ax, nets, xy)
    if s.budget_us is not None:
        ax.axvline(s.budget_us, color="#d62728", ls="--", lw=1.2, label=f"budget {fmt_us(s.budget_us)} µs")
    ax.set_xlabel("latency (µs): filled = measured with TVM, hollow = predicted from the table")
    ax.set_ylabel("accuracy (%)")
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
    _scatter_nets(ax, nets, lambda n: (n.predicted_us, n.measured_us, True))
    vals = [v for n in nets for v in (n.predicted_us, n.measured_us)]
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo) if hi > lo else 0.1 * hi + 1
    lim = (max(0.0, lo - pad), hi + pad)
    ax.plot(lim, lim, color="#555", ls="--", lw=1, label="measured = predicted")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    ax.set_xlabel("predicted latency (µs, sum of the latency table)")
    ax.set_ylabel("measured latency (µs, compiled module)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Predicted against measured latency on {s.target.name}", fontsize=10)
    _save(fig, path)
    return None


_PEER_COLUMNS = (("tvm_us", "TVM (tuned)"), ("tvm_untuned_us", "TVM (untuned)"), ("pytorch_us", "PyTorch eager"),
                 ("onnxruntime_us", "ONNX Runtime"))


def plot_peers(s: RunSummary, path: Path) -> str | None:
    """Grouped bars: the compiled module against PyTorch eager and ONNX Runtime (and untuned TVM)."""
    peers = s.peers
    cols = [(k, name) for k, name in _PEER_COLUMNS if any(getattr(p, k) is not None for p in peers)]
    if not peers or not cols:
        return "no peer measurements (PyTorch, ONNX Runtime) in summary.json"
    fig = Figure(figsize=(7.5, 1.6 + 0.9 * len(peers) + 0.25 * len(cols) * len(peers)))
    ax = fig.add_subplot()
    colors = {"tvm_us": "#d62728", "tvm_untuned_us": "#ff9896", "pytorch_us": "#1f77b4", "onnxruntime_us": "#2ca02c"}
    bar = 0.8 / len(cols)
    for j, (k, name) in enumerate(cols):
        ys = [i + (j - (len(cols) - 1) / 2) * bar for i in range(len(peers))]
        vals = [getattr(p, k) for p in peers]
        ax.barh([y for y, v in zip(ys, vals, strict=True) if v is not None], [v for v in vals if v is not None],
                height=bar * 0.9, color=colors[k], label=name)
        for y, v in zip(ys, vals, strict=True):
            if v is not None:
                ax.text(v, y, f" {fmt_us(v)}", va="center", fontsize=8)
    ax.set_yticks(range(len(peers)), [p.net for p in peers])
    ax.invert_yaxis()
    shown = [getattr(p, k) for p in peers for k, _ in cols if getattr(p, k)]
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
    ("peers.png", "TVM against PyTorch and ONNX Runtime", plot_peers),
)


# -- the page ----------------------------------------------------------------------------------------------------
_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #8a6d3b; background: #fcf8e3; padding: 0.5em 0.8em; border-left: 4px solid #f0ad4e; }
.headline td:first-child { font-weight: bold; background: #fafafa; }
.missing { color: #a94442; } .small { color: #666; font-size: 0.88em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _e(v) -> str:
    return html.escape(str(v))


def _table(head: list[str] | None, rows: list[list[str]], num_from: int = 1, cls: str = "") -> str:
    """An HTML table; cells are already-escaped strings, columns from `num_from` on are right-aligned."""
    out = [f'<table class="{cls}">' if cls else "<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="num">{c}</td>' if i >= num_from else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _artifact_path(run_dir: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else run_dir / p


def _artifacts(s: RunSummary) -> dict[str, str]:
    arts = dict(s.artifacts)
    arts.setdefault("report", "report/index.html")
    arts.setdefault("summary", "summary.json")
    return arts


def _header(s: RunSummary) -> str:
    net = s.searched
    tvm = s.target.tvm
    tvm_text = tvm.get("target", tvm.get("kind", "")) if isinstance(tvm, dict) else (tvm or "")
    rows = [
        ["space", f"{_e(s.space.name)} <span class='small'>(hash {_e(s.space.hash or NA)}, input "
                  f"{_e('x'.join(map(str, s.space.input)) or NA)}, {len(s.space.blocks)} searchable blocks)</span>"],
        ["target", f"{_e(s.target.name)}" + (f" <span class='small'><code>{_e(tvm_text)}</code></span>"
                                             if tvm_text else "")],
        ["latency budget", f"{fmt_us(s.budget_us)} µs"],
        ["predicted latency", f"{fmt_us(s.predicted_us)} µs"],
        ["measured latency", f"{fmt_us(net.measured_us if net else None)} µs"],
        ["accuracy", fmt_pct(net.accuracy if net else None)],
    ]
    if s.arch and s.arch.ops:
        rows.append(["architecture", "<code>" + _e(" ".join(s.arch.ops)) + "</code>"])
    out = [_table(None, rows, num_from=99, cls="headline")]
    if s.stages:
        total = sum(st.seconds for st in s.stages if st.seconds is not None)
        srows = [[_e(st.name), _e(st.status or NA), _fmt_seconds(st.seconds)] for st in s.stages]
        srows.append(["<b>total</b>", "", f"<b>{_fmt_seconds(total)}</b>"])
        out.append("<h3>Run time per stage</h3>" + _table(["stage", "status", "time"], srows, num_from=2))
    return "\n".join(out)


def _arch_table(s: RunSummary) -> str:
    if not s.arch or not s.arch.ops:
        return ""
    rows = []
    table = s.latency_table.blocks if s.latency_table else []
    for i, op in enumerate(s.arch.ops):
        b = s.space.blocks[i] if i < len(s.space.blocks) else None
        p = s.arch.probabilities[i].get(op) if i < len(s.arch.probabilities) else None
        lat = None
        if b is not None and i < len(table) and op in b.candidates and b.candidates.index(op) < len(table[i]):
            lat = table[i][b.candidates.index(op)]
        shape = f"{b.in_channels}x{b.in_hw}x{b.in_hw} → {b.out_channels}, stride {b.stride}" if b else NA
        rows.append([str(i), _e(shape), f"<code>{_e(op)}</code>", NA if p is None else f"{p:.2f}", fmt_us(lat)])
    return _table(["block", "input → output channels", "chosen op", "probability", "latency (µs)"], rows, num_from=3)


def _nets_table(s: RunSummary) -> str:
    if not s.nets:
        return "<p class='note'>No nets in summary.json.</p>"
    rows = []
    for n in s.nets:
        err = NA
        if n.measured_us is not None and n.predicted_us:
            err = f"{100 * (n.measured_us - n.predicted_us) / n.predicted_us:+.1f}%"
        rows.append([_e(n.name), _e(n.kind), fmt_pct(n.accuracy), fmt_us(n.predicted_us), fmt_us(n.measured_us), err])
    return _table(["net", "kind", "accuracy", "predicted (µs)", "measured (µs)", "measured vs predicted"], rows,
                  num_from=2)


def _peers_table(s: RunSummary) -> str:
    if not s.peers:
        return "<p class='note'>No peer measurements in summary.json (the compare stage did not run).</p>"
    rows = [[_e(p.net), fmt_us(p.tvm_us), fmt_us(p.tvm_untuned_us), fmt_us(p.pytorch_us), fmt_us(p.onnxruntime_us),
             _fmt_ratio(p.pytorch_us, p.tvm_us), _fmt_ratio(p.onnxruntime_us, p.tvm_us),
             _fmt_ratio(p.tvm_untuned_us, p.tvm_us)] for p in s.peers]
    return (_table(["net", "TVM tuned (µs)", "TVM untuned (µs)", "PyTorch eager (µs)", "ONNX Runtime (µs)",
                    "PyTorch / TVM", "ONNX Runtime / TVM", "untuned / tuned"], rows)
            + "<p class='small'>Ratios above 1.00x mean the TVM-compiled module is faster.</p>")


def _artifacts_list(s: RunSummary, run_dir: Path, report_dir: Path) -> str:
    items = []
    for name, rel in _artifacts(s).items():
        p = _artifact_path(run_dir, rel)
        href = urllib.parse.quote(Path(os.path.relpath(p, report_dir)).as_posix())
        state = "" if p.exists() or name == "report" else " <span class='missing'>(missing)</span>"
        items.append(f"<li>{_e(name)}: <a href=\"{_e(href)}\"><code>{_e(rel)}</code></a>{state}</li>")
    drawn = [f for f, _, _ in FIGURES if (report_dir / f).is_file()]
    if drawn:
        items.append("<li>figures: " + ", ".join(f'<a href="{_e(f)}"><code>report/{_e(f)}</code></a>' for f in drawn)
                     + "</li>")
    return "<ul>\n" + "\n".join(items) + "\n</ul>"


def _page(s: RunSummary, run_dir: Path, report_dir: Path, figures: dict[str, str | None]) -> str:
    def figure(file: str, title: str) -> str:
        note = figures.get(file)
        if note is not None:
            return f"<p class='note'>{_e(title)}: not drawn, {_e(note)}.</p>"
        return f'<img src="{_e(file)}" alt="{_e(title)}">'

    sections = [
        ("Searched architecture", figure("architecture.png", "Searched architecture") + _arch_table(s)),
        ("Latency table", figure("latency_table.png", "Latency table")),
        ("Accuracy against latency", figure("accuracy_latency.png", "Accuracy against latency") + _nets_table(s)),
        ("Predicted against measured latency", figure("predicted_measured.png", "Predicted against measured")),
        ("Compiled module against PyTorch and ONNX Runtime",
         _peers_table(s) + figure("peers.png", "TVM against PyTorch and ONNX Runtime")),
        ("Artifacts", _artifacts_list(s, run_dir, report_dir)),
    ]
    title = f"tvm-nas run: {s.space.name} on {s.target.name}"
    body = [f"<h1>{_e(title)}</h1>", _header(s)]
    body += [f"<h2>{_e(h)}</h2>\n{content}" for h, content in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")


def render_report(run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/report/index.html`` and its PNG figures from ``run_dir/summary.json``.

    A figure whose data is missing (no compiled net, no peer measurements, ...) is replaced on the page by a note;
    a figure that fails to draw is replaced by a note naming the error, so the page is always written.

    Args:
        run_dir: the run directory written by `tvm-nas run`.

    Returns:
        The path of ``index.html``.

    Raises:
        TvmNasError: `summary.json` is missing, corrupted or of another schema.
    """
    run_dir = Path(run_dir)
    s = load_summary(run_dir)
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    notes: dict[str, str | None] = {}
    for file, _title, draw in FIGURES:
        try:
            notes[file] = draw(s, report_dir / file)
        except Exception as e:  # a broken figure must not cost the rest of the report
            notes[file] = f"drawing failed ({e.__class__.__name__}: {e})"
        if notes[file] is not None:
            (report_dir / file).unlink(missing_ok=True)  # no stale figure from an earlier render
    return atomic_write_text(report_dir / "index.html", _page(s, run_dir, report_dir, notes))


def terminal_summary(run_dir: str | os.PathLike):
    """The closing table of `tvm-nas run`: the headline numbers and every artifact with its path.

    Returns:
        A :class:`rich.table.Table` (print it with a rich console).
    """
    from rich.table import Table

    run_dir = Path(run_dir)
    s = load_summary(run_dir)
    net = s.searched
    caption = (f"{s.space.name} on {s.target.name}: predicted {fmt_us(s.predicted_us)} µs, measured "
               f"{fmt_us(net.measured_us if net else None)} µs, accuracy {fmt_pct(net.accuracy if net else None)}, "
               f"budget {fmt_us(s.budget_us)} µs")
    table = Table(title=f"tvm-nas run: {run_dir}", caption=caption)
    table.add_column("artifact", style="bold")
    table.add_column("path")
    table.add_column("size", justify="right")
    for name, rel in _artifacts(s).items():
        p = _artifact_path(run_dir, rel)
        size = _fmt_size(p.stat().st_size) if p.is_file() else "[red]missing[/red]"
        table.add_row(name, str(p), size)
    return table


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
