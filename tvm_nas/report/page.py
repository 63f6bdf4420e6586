"""The run report: one static HTML page and its figures, drawn from a run directory's `summary.json`.

:func:`render_report` writes ``<run_dir>/report/index.html`` with PNG figures beside it (the searched architecture
block by block, the latency table as a heatmap, accuracy against latency, predicted against measured latency,
TVM against its peers); :func:`terminal_summary` is the closing table the command line prints.

Every number on the page is formatted from `summary.json` by :func:`fmt_us` (latency, one decimal) and
:func:`fmt_pct` (accuracy, percent with one decimal). Missing optional pieces render as "n/a" or as a note in
place of a figure; they never stop the report.
"""

from __future__ import annotations

import html
import os
import urllib.parse
from pathlib import Path

from ..console import (
    NA,
    fmt_accuracy,
    fmt_pct,
    fmt_ratio,
    fmt_seconds,
    fmt_size,
    fmt_timing,
    fmt_us,
    over_budget,
)
from ..io import atomic_write_text
from . import figures
from .summary import RunSummary, load_summary

__all__ = ["render_report", "terminal_summary"]

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
        ["latency budget", fmt_us(s.budget_us, "µs") + (f" <b>({_e(s.arch.budget_note)})</b>"
                                                        if s.arch and s.arch.budget_note else "")],
        ["predicted latency", fmt_us(s.predicted_us, "µs")],
        ["measured latency", fmt_us(net.measured_us if net else None, "µs") + (
            f" <b>{_e(over_budget(net.measured_us, _q1(net), s.budget_us).lstrip('; '))}</b>" if net else "")],
        ["accuracy", fmt_accuracy(net.accuracy if net else None, net.accuracy_set if net else None)],
    ]
    rk = s.ranking
    if rk is not None and rk.matched:
        rows.append(["against random nets of its latency",
                     f"rank {rk.rank} of {rk.matched + 1} by test accuracy" if rk.rank is not None else
                     f"not ranked: no held-out test set (the {rk.matched} matched nets' accuracies are on the "
                     "validation split the search chose on; run with --test-data)"])
    if rk is not None and rk.supernet_tau is not None:
        warn = "" if rk.supernet_tau > 0.3 else " <b>(the supernet barely ranks these nets)</b>"
        rows.append(["supernet ranking", f"Kendall τ {rk.supernet_tau:+.2f} over {rk.supernet_nets} nets "
                                         f"(shared weights against trained alone){warn}"])
    if s.arch and s.arch.ops:
        rows.append(["architecture", "<code>" + _e(" ".join(s.arch.ops)) + "</code>"])
    out = [_table(None, rows, num_from=99, cls="headline")]
    if s.stages:
        total = sum(st.seconds for st in s.stages if st.seconds is not None)
        srows = [[_e(st.name), _e(st.status or NA), fmt_seconds(st.seconds)] for st in s.stages]
        srows.append(["<b>total</b>", "", f"<b>{fmt_seconds(total)}</b>"])
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


def _q1(n) -> float | None:
    """The lower quartile of a net's measured latency, when known."""
    return None if n.measurement is None else n.measurement.q1


def _nets_table(s: RunSummary) -> str:
    if not s.nets:
        return "<p class='note'>No nets in summary.json.</p>"
    rows = []
    for n in s.nets:
        err = NA
        if n.measured_us is not None and n.predicted_us:
            err = f"{100 * (n.measured_us - n.predicted_us) / n.predicted_us:+.1f}%"
        t = n.measurement
        meas = NA if t is None else fmt_timing(t.median, t.q1, t.q3, t.stable)
        rows.append([_e(n.name), _e(n.kind), fmt_pct(n.accuracy), fmt_pct(n.supernet_accuracy),
                     fmt_us(n.predicted_us), _e(meas), err])
    sets = {n.accuracy_set for n in s.nets if n.accuracy is not None}
    label = "test accuracy" if sets == {"test"} else "accuracy (validation split, not held out)"
    return _table(["net", "kind", label, "supernet accuracy", "predicted (µs)", "measured (µs): median (IQR)",
                   "measured vs predicted"], rows, num_from=2)


def _validation(s: RunSummary) -> str:
    """The validate stage's figures: can the table be trusted on this target?"""
    v = s.validation
    if v is None or not v.summary:
        return "<p class='note'>No validation in summary.json (the validate stage did not run).</p>"
    m = v.summary
    load = (m.get("load_avg") or [None])[0]
    rows = [["nets", str(m.get("nets"))],
            ["|error| median / worst", f"{m['median_abs_error_pct']:.1f}% / {m['worst_abs_error_pct']:.1f}%"],
            ["within ±5% / ±10%", f"{100 * m['within_5pct']:.0f}% / {100 * m['within_10pct']:.0f}%"],
            ["Kendall τ / Spearman ρ", f"{m['kendall_tau']:.2f} / {m['spearman_rho']:.2f}"],
            ["load average while measured", NA if load is None else f"{load:.2f}"]]
    if m.get("unstable"):
        rows.append(["unstable (rounds disagreed)", _e(", ".join(m["unstable"]))])
    cal = m.get("calibration") or {}
    if cal.get("leave_one_out"):
        lo = cal["leave_one_out"]
        rows += [["calibration: measured ≈", f"{cal['scale']:.3f} × table sum {cal['offset_us']:+.1f} µs"
                  + ("" if cal.get("better") else
                     f" (not used: {cal.get('not_used') or 'no better than the plain sum'})")],
                 ["calibrated, leave-one-out: |error| median / worst",
                  f"{lo['median_abs_error_pct']:.1f}% / {lo['worst_abs_error_pct']:.1f}%"],
                 ["calibrated, leave-one-out: within ±5% / ±10%; τ",
                  f"{100 * lo['within_5pct']:.0f}% / {100 * lo['within_10pct']:.0f}%; {lo['kendall_tau']:.2f}"]]
    cor = m.get("correction") or {}
    if cor.get("leave_one_out"):
        lo = cor["leave_one_out"]
        rows += [["learned correction: measured ≈", "table sum × XGBoost ratio of the "
                  + ("sum and the net's op counts" if cor.get("form") == "ops" else "table sum")
                  + ("" if cor.get("better") else
                     f" (not used: {cor.get('not_used') or 'no better than the ' + cor['baseline']['name']})")],
                 ["learned correction, leave-one-out: |error| median / worst",
                  f"{lo['median_abs_error_pct']:.1f}% / {lo['worst_abs_error_pct']:.1f}%"],
                 ["learned correction, leave-one-out: within ±5% / ±10%; τ",
                  f"{100 * lo['within_5pct']:.0f}% / {100 * lo['within_10pct']:.0f}%; {lo['kendall_tau']:.2f}"]]
    return (_table(None, rows) + "<p class='small'>Every net compiled with the target's database and timed "
            "interleaved (median and interquartile range); error = (predicted − measured) / measured. The "
            "calibration and the learned correction are fitted on the nets; each net's fitted figure comes from a "
            "fit on the other nets only.</p>")


def _peers_table(s: RunSummary) -> str:
    if not s.peers:
        return "<p class='note'>No peer measurements in summary.json (the compare stage did not run).</p>"
    if not any(p.runtimes for p in s.peers):  # a summary of an earlier version: its four fixed columns
        rows = [[_e(p.net), fmt_us(p.tvm_us), fmt_us(p.tvm_untuned_us), fmt_us(p.pytorch_us),
                 fmt_us(p.onnxruntime_us), fmt_ratio(p.pytorch_us, p.tvm_us), fmt_ratio(p.onnxruntime_us, p.tvm_us),
                 fmt_ratio(p.tvm_untuned_us, p.tvm_us)] for p in s.peers]
        return (_table(["net", "TVM tuned (µs)", "TVM untuned (µs)", "PyTorch eager (µs)", "ONNX Runtime (µs)",
                        "PyTorch / TVM", "ONNX Runtime / TVM", "untuned / tuned"], rows)
                + "<p class='small'>Ratios above 1.00x mean the TVM-compiled module is faster.</p>")
    rows = [[_e(p.net), _e(r.runtime), fmt_us(r.measured_us),
             NA if r.runtime == "tvm" else fmt_ratio(r.vs_tvm), _e(r.check or NA),
             f"<span class='small'>{_e(r.setting or '')}</span>"] for p in s.peers for r in p.runtimes]
    return (_table(["net", "runtime", "median (µs)", "its time / TVM's", "output check", "how it ran"], rows,
                   num_from=2)
            + "<p class='small'>Ratios above 1.00x mean the TVM-compiled module is faster.</p>")


def _artifacts_list(s: RunSummary, run_dir: Path, report_dir: Path) -> str:
    items = []
    for name, rel in _artifacts(s).items():
        p = _artifact_path(run_dir, rel)
        href = urllib.parse.quote(Path(os.path.relpath(p, report_dir)).as_posix())
        state = "" if p.exists() or name == "report" else " <span class='missing'>(missing)</span>"
        items.append(f"<li>{_e(name)}: <a href=\"{_e(href)}\"><code>{_e(rel)}</code></a>{state}</li>")
    drawn = [f for f, _, _ in figures.FIGURES if (report_dir / f).is_file()]
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
        ("Predicted against measured latency",
         figure("predicted_measured.png", "Predicted against measured") + _validation(s)),
        ("Compiled module against its peers",
         _peers_table(s) + figure("peers.png", "TVM against its peers")),
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
    for file, _title, draw in figures.FIGURES:
        try:
            notes[file] = draw(s, report_dir / file)
        except Exception as e:  # a broken figure must not cost the rest of the report
            notes[file] = f"drawing failed ({e.__class__.__name__}: {e})"
        if notes[file] is not None:
            (report_dir / file).unlink(missing_ok=True)  # no stale figure from an earlier render
    return atomic_write_text(report_dir / "index.html", _page(s, run_dir, report_dir, notes))


def _ranking_note(s: RunSummary) -> str:
    net = s.searched
    out = over_budget(net.measured_us, _q1(net), s.budget_us) if net else ""
    rk = s.ranking
    if rk is None:
        return out
    if rk.rank is not None:
        out += f"; rank {rk.rank} of {rk.matched + 1} among random nets of its latency (test accuracy)"
    elif rk.matched:
        out += "; not ranked against random nets: no held-out test set (--test-data)"
    if rk.supernet_tau is not None:
        out += f"; supernet ranking τ {rk.supernet_tau:+.2f}"
    return out


def terminal_summary(run_dir: str | os.PathLike):
    """The closing table of `tvm-nas run`: the headline numbers and every artifact with its path.

    Returns:
        A :class:`rich.table.Table` (print it with a rich console).
    """
    from rich.table import Table

    run_dir = Path(run_dir)
    s = load_summary(run_dir)
    net = s.searched
    caption = (f"{s.space.name} on {s.target.name}: predicted {fmt_us(s.predicted_us, 'µs')}, measured "
               f"{fmt_us(net.measured_us if net else None, 'µs')}, accuracy "
               f"{fmt_accuracy(net.accuracy if net else None, net.accuracy_set if net else None)}, "
               f"budget {fmt_us(s.budget_us, 'µs')}" + (f" ({s.arch.budget_note})" if s.arch and s.arch.budget_note
                                                     else "") + _ranking_note(s))
    table = Table(title=f"tvm-nas run: {run_dir}", caption=caption)
    table.add_column("artifact", style="bold")
    table.add_column("path")
    table.add_column("size", justify="right")
    for name, rel in _artifacts(s).items():
        p = _artifact_path(run_dir, rel)
        size = fmt_size(p.stat().st_size) if p.is_file() else "[red]missing[/red]"
        table.add_row(name, str(p), size)
    return table
