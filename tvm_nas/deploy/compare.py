"""``tvm-nas compare``: latency of architectures × targets, and of the peers (each in its best configuration, named
in its row) on host-like targets."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..arch import Arch, load_architecture, reference_arch
from ..backend.trust import inside
from ..console import fmt_ratio, fmt_timing, fmt_us
from ..errors import TvmNasError
from ..io import DEFAULT_LOGS_DIR, atomic_write_json, atomic_write_text
from ..records import load_manifest
from ..targets import TargetSpec, load_target
from ..timing import TIMING, figure
from .compile import MANIFEST, ONNX_FILE, SCHEMA, Built, check_inputs, compile_arch
from .model import build_network_from_arch, example_input
from .onnx import ATOL
from .peers import COOLDOWN_S, DEFAULT_ORDER, Result, not_run_reason, selected_peers, time_with_peers

COLUMNS = ("architecture", "target", "runtime", "predicted_us", "measured_us", *(f"measurement.{k}" for k in TIMING),
           "measured_over_predicted", "vs_tvm", "setting", "check", "max_abs_err", "order")
""" The CSV's columns (``measurement.q1``: the timing object's fields, flat). JSON rows have ``measurement`` as one
object (:data:`~tvm_nas.timing.TIMING`: median, q1, q3, stable, rounds) and add ``tried`` (other settings timed,
e.g. ONNX Runtime's other spinning mode) and ``sequence`` (the runtimes in the order of the first round's blocks).
``setting`` says how a runtime ran, or why it did not (then ``measured_us`` is empty); ``check`` is ``ok`` or ``max
err 3.1e-02`` against PyTorch eager."""


def compare(archs: Sequence[str | os.PathLike | Arch], targets: Sequence[str | os.PathLike | TargetSpec],
            baselines: bool = False, logs_dir: str | os.PathLike = DEFAULT_LOGS_DIR, trials: int = 0,
            out: str | os.PathLike | None = None, weights: Sequence[str | os.PathLike | None] | None = None,
            untuned: bool = False, console: Console | None = None, peers: str | Sequence[str] | None = None,
            order: str = DEFAULT_ORDER, per_layer: list[dict] | None = None) -> list[dict]:
    """Latency of every (architecture × target), plus peers on host-like targets.

    With `baselines`, every architecture also gets TVM untuned and the peers (:mod:`tvm_nas.deploy.peers`; `peers`
    picks them), and a reference architecture of the first architecture's space (all ``mbconv_k3_e6``) is added.
    On a target that is not this host (RPC, cross-compiled, GPU) their rows say so instead of giving a figure.
    A `per_layer` list receives the per-layer answer of every net (:mod:`tvm_nas.deploy.perlayer`).

    Returns:
        One row per (architecture, target, runtime) with the columns of :data:`COLUMNS`.
    """
    import tempfile

    console = console or Console(stderr=True)
    loaded = [load_architecture(a) for a in archs]
    specs = [load_target(t) for t in targets]
    # a bad name fails before compiling anything
    which = selected_peers(peers) if baselines or per_layer is not None else []
    wts = list(weights or [None] * len(loaded))
    if len(wts) != len(loaded):
        raise TvmNasError(f"{len(wts)} --weights for {len(loaded)} --arch: give one per architecture or none")
    if baselines and loaded:
        loaded.append(reference_arch(loaded[0].space))
        wts.append(None)
    _unique_labels(loaded)
    for spec in specs:  # fail on bad input before compiling anything
        for a in loaded:
            check_inputs(a, spec, logs_dir, trials, untuned, True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out else Path(tmp)
        built = []
        for a, w in zip(loaded, wts, strict=True):
            for spec in specs:
                build = root / _slug(a.label) / spec.name
                compile_arch(a, spec, w, build, trials, logs_dir, seed=0, untuned=untuned, console=console)
                built.append(Built(a, spec, w, build))
        return compare_built(built, peers=baselines, which=which, order=order, per_layer=per_layer)


def compare_built(built: Sequence[Built], peers: bool = True, which: str | Sequence[str] | None = None,
                  order: str = DEFAULT_ORDER, cooldown_s: float = COOLDOWN_S,
                  per_layer: list[dict] | None = None) -> list[dict]:
    """Rows of already compiled architectures: TVM's figures come from their manifests, so nothing is compiled
    again; with `peers`, TVM untuned and the peers (`which`, default all or ``$TVM_NAS_PEERS``) are timed in
    blocks (`order`) with the shipped module on host-like targets, and listed as not run on the others.
    A `per_layer` list receives each net's per-layer answer (the peers of `which` that have a profiler).
    """
    profiled = selected_peers(which) if per_layer is not None else []
    which = selected_peers(which) if peers else []
    rows: list[dict] = []
    for b in built:
        m = load_manifest(Path(b.build_dir) / MANIFEST)
        why = not_run_reason(b.spec)
        if peers and why is None:
            rows += _peer_rows(b, m, which, order, cooldown_s)
            continue
        t = m.get("measurement") or {}
        verified = (m.get("verification") or {}).get("max_abs_err")
        tvm = Result("tvm", f"TVM {m.get('tvm_version', '?')}, {_tvm_setting(m)}, {_threads(b.spec.threads)}",
                     max_abs_err=verified)
        rows.append(_row(b.arch, b.spec, tvm, m.get("predicted_latency_us"), t if "median" in t else None,
                         m.get("measured_latency_us")))
        if peers:
            rows += [_row(b.arch, b.spec, Result(r, f"not run on {b.spec.name}: {why}"), None, None, None)
                     for r in ("tvm-untuned", *which)]
    if per_layer is not None:
        per_layer += _per_layer(built, rows, profiled)
    return rows


def _per_layer(built: Sequence[Built], rows: list[dict], peers: list[str]) -> list[dict]:
    from .perlayer import per_layer

    out = []
    for b in built:
        why = not_run_reason(b.spec)
        if why is not None:
            out.append({"architecture": b.arch.label, "target": b.spec.name, "not_run": why, "rows": []})
            continue
        mine = [r for r in rows if r["architecture"] == b.arch.label and r["target"] == b.spec.name]
        out.append(per_layer(b.arch, b.spec, b.build_dir, load_manifest(Path(b.build_dir) / MANIFEST),
                             b.weights, peers, mine))
    return out


def _tvm_setting(manifest: dict) -> str:
    return "tuned (the target's database)" if (manifest.get("tuning") or {}).get("database") else \
        "default schedules (no database)"


def _threads(n: int | None) -> str:
    return "default threads" if not n else f"{n} thread{'s' if n > 1 else ''}"


def _unique_labels(archs: list[Arch]) -> None:
    seen: dict[str, int] = {}
    for a in archs:
        n = seen.get(a.label, 0)
        seen[a.label] = n + 1
        if n:
            a.label = f"{a.label}#{n + 1}"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_") or "arch"


def _row(a: Arch, spec: TargetSpec, r: Result, predicted, timing: dict | None, tvm_us, order: str | None = None,
         sequence: list[str] | None = None) -> dict:
    measured = timing["median"] if timing else None
    return {"architecture": a.label, "target": spec.name, "runtime": r.runtime, "predicted_us": predicted,
            "measured_us": measured, "measurement": figure(timing),
            "measured_over_predicted": measured / predicted if measured and predicted else None,
            "vs_tvm": measured / tvm_us if measured and tvm_us else None, "setting": r.setting, "check": r.check,
            "max_abs_err": r.max_abs_err, "order": order, "tried": r.tried, "sequence": sequence}


def _peer_rows(b: Built, manifest: dict, which: list[str], order: str, cooldown_s: float) -> list[dict]:
    """TVM's shipped module (the build's library), TVM untuned and the peers, timed in blocks: one row each."""
    model = build_network_from_arch(b.arch, b.weights, 0)
    x = example_input(b.arch.input_shape, 0)
    lib = inside(b.build_dir, manifest["library"]["file"], f"{Path(b.build_dir) / MANIFEST}: field 'library.file'")
    run = time_with_peers(model, b.arch, b.spec, lib, Path(b.build_dir) / ONNX_FILE, x, peers=which, order=order,
                          cooldown_s=cooldown_s, tvm_setting=_tvm_setting(manifest))
    first = run.sequence[0] if run.sequence else None
    # vs tvm: against TVM's module timed the same way (TVM's own loop for its rows, a Python call per run for the
    # peers': their figures include that call, TVM's own loop does not)
    tvm_us = run.results["tvm"].timing.median
    return [_row(b.arch, b.spec, r, manifest.get("predicted_latency_us") if k == "tvm" else None,
                 r.timing.to_json() if r.timing else None, tvm_us if k.startswith("tvm") else run.tvm_python_us,
                 run.order, first)
            for k, r in run.results.items()]


def compare_table(rows: list[dict]) -> RenderableType:
    """The comparison as a terminal table (µs, median) that reads whole at 80 columns: short headers, and long
    labels wrapped, never cut. Below it, how each runtime ran (its setting), or why it did not: such a row shows
    ``not installed``, ``not run`` or ``failed`` instead of a figure."""
    orders = sorted({r["order"] for r in rows if r.get("order")})
    how = f"timed in blocks, order {'/'.join(orders)}" if orders else "interleaved"
    targets = list(dict.fromkeys(r["target"] for r in rows))
    one = len(targets) == 1
    t = Table(title=f"latency{f' on {targets[0]}' if one else ''}, µs (median (IQR), batch 1)", box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False, collapse_padding=True)
    # wrapped at the console's width (a table's caption is cut at the table's)
    peers = any(not r["runtime"].startswith("tvm") and r["measured_us"] is not None for r in rows)
    caption = Text(f"pred: the table's prediction; meas: median (IQR), {how}; " + (
        "vs tvm: against TVM's module timed the same way (a peer's figure includes its Python call, so TVM's is "
        "then taken with one too); " if peers else "") + f"check: output against PyTorch eager (atol {ATOL:g})")
    cols = [("net", "left"), ("target", "left"), ("runtime", "left"), ("pred", "right"), ("meas", "right"),
            ("meas/pred", "right"), ("vs tvm", "right"), ("check", "left")]
    for c, j in cols:
        if c == "target" and one:  # in the title
            continue
        # free text and the figures with their spread wrap (at spaces); names and ratios keep their width
        t.add_column(c, justify=j, overflow="fold", no_wrap=c not in ("net", "target", "meas", "check"),
                     min_width=21 if c == "meas" else None)  # "(IQR 1,112.3–1,419.9)" on one line
    for r in rows:
        if r["measured_us"] is None and r.get("setting"):
            meas = r["setting"].split(":", 1)[0]  # not installed / not run on <target> / failed
        else:
            m = r.get("measurement") or {}
            meas = fmt_timing(r["measured_us"], m.get("q1"), m.get("q3"), m.get("stable"))
        t.add_row(r["architecture"], *([] if one else [r["target"]]), r["runtime"], fmt_us(r["predicted_us"]),
                  meas, fmt_ratio(r["measured_over_predicted"]), fmt_ratio(r["vs_tvm"]), r.get("check") or "—")
    settings = _settings_table(rows, one)
    return Group(t, caption) if settings is None else Group(t, caption, Text(), settings)


def _settings_table(rows: list[dict], one_target: bool) -> Table | None:
    """How each runtime ran (or why not), once per setting: ``all`` nets when they share it."""
    nets = list(dict.fromkeys(r["architecture"] for r in rows))
    seen: dict[tuple, list[str]] = {}
    for r in rows:
        if not r.get("setting"):
            continue
        tried = "; ".join(f"{_diff(o['setting'], r['setting'])}: {fmt_us(o['median'])}"
                          + (f", max err {o['max_abs_err']:.1e}" if not o.get("max_abs_err", 0) <= ATOL else "")
                          for o in r.get("tried") or ())
        key = (r["target"], r["runtime"], r["setting"] + (f" (also timed: {tried})" if tried else ""))
        seen.setdefault(key, []).append(r["architecture"])
    if not seen:
        return None
    t = Table(title="how each runtime ran", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
              pad_edge=False)
    for c in ("runtime", "nets", "setting"):
        t.add_column(c, overflow="fold", no_wrap=c == "runtime")
    for (target, runtime, setting), on in seen.items():
        label = "all" if len(on) == len(nets) else ", ".join(on)
        t.add_row(runtime, label if one_target else f"{label} on {target}", escape(setting))
    return t


def _diff(other: str, setting: str) -> str:
    """The parts of `other` (a comma-separated setting) that `setting` lacks: ``spinning off``."""
    mine = setting.split(", ")
    return ", ".join(p for p in other.split(", ") if p not in mine) or other


def write_rows(rows: list[dict], csv_path: str | os.PathLike | None = None,
               json_path: str | os.PathLike | None = None, meta: dict | None = None,
               per_layer: list[dict] | None = None) -> list[Path]:
    """Write the comparison rows as CSV and/or JSON (atomically); with `per_layer`, the per-layer answers too:
    under ``per_layer`` in the JSON and as ``<csv stem>.per_layer.csv`` beside the CSV.

    Returns:
        The files written.
    """
    written = []
    if csv_path:
        _write_csv(csv_path, rows, COLUMNS)
        written.append(Path(csv_path))
        if per_layer is not None:
            from .perlayer import CSV_COLUMNS
            from .perlayer_view import csv_rows

            p = Path(csv_path)
            written.append(_write_csv(p.with_name(f"{p.stem}.per_layer.csv"), csv_rows(per_layer), CSV_COLUMNS))
    if json_path:
        extra = {} if per_layer is None else {"per_layer": per_layer}
        atomic_write_json(json_path, {"schema": SCHEMA, **(meta or {}), "units": "us", "rows": rows, **extra})
        written.append(Path(json_path))
    return written


def _write_csv(path, rows: list[dict], columns) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    w.writerows({**r, **{f"measurement.{k}": v for k, v in (r.get("measurement") or {}).items()}} for r in rows)
    atomic_write_text(path, buf.getvalue())
    return Path(path)
