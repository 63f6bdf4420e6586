"""``tvm-nas compare``: latency of architectures × targets, and of the peers on host-like targets."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..arch import Arch, load_architecture, reference_arch
from ..console import fmt_us
from ..errors import TvmNasError
from ..io import DEFAULT_LOGS_DIR, atomic_write_json, atomic_write_text, read_json
from ..targets import TargetSpec, load_target
from .compile import MANIFEST, ONNX_FILE, SCHEMA, check_inputs, compile_arch
from .model import build_network_from_arch, example_input
from .peers import is_host_like, time_with_peers

COLUMNS = ("architecture", "target", "runtime", "predicted_us", "measured_us", "measured_q1_us", "measured_q3_us",
           "stable", "measured_over_predicted", "vs_tvm")


def compare(archs: Sequence[str | os.PathLike | Arch], targets: Sequence[str | os.PathLike | TargetSpec],
            baselines: bool = False, logs_dir: str | os.PathLike = DEFAULT_LOGS_DIR, trials: int = 0,
            out: str | os.PathLike | None = None, weights: Sequence[str | os.PathLike | None] | None = None,
            untuned: bool = False, console: Console | None = None) -> list[dict]:
    """Latency of every (architecture × target), plus peers on host-like targets.

    With `baselines`, each host-like target also gets PyTorch eager, ONNX Runtime and TVM untuned for every
    architecture, and a reference architecture of the first architecture's space (all ``mbconv_k3_e6``).

    Returns:
        One row per (architecture, target, runtime) with the columns of :data:`COLUMNS`.
    """
    import tempfile

    console = console or Console(stderr=True)
    loaded = [load_architecture(a) for a in archs]
    specs = [load_target(t) for t in targets]
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
        return compare_built(built, peers=baselines)


@dataclass
class Built:
    """A compiled architecture: its build folder holds ``model.onnx`` and ``manifest.json`` (the compile stage's)."""

    arch: Arch
    spec: TargetSpec
    weights: str | os.PathLike | None
    build_dir: Path


def compare_built(built: Sequence[Built], peers: bool = True) -> list[dict]:
    """Rows of already compiled architectures: TVM's figures come from their manifests, so nothing is compiled
    again; with `peers`, PyTorch, ONNX Runtime (the build's own ONNX file) and TVM untuned are timed on host-like
    targets.
    """
    rows: list[dict] = []
    for b in built:
        m = read_json(Path(b.build_dir) / MANIFEST, "build manifest")
        if peers and is_host_like(b.spec):
            rows += _peer_rows(b, m)
        else:
            t = m.get("measurement") or {}
            rows.append(_row(b.arch, b.spec, "tvm", m.get("predicted_latency_us"), t if "median" in t else None,
                             m.get("measured_latency_us")))
    return rows


def _unique_labels(archs: list[Arch]) -> None:
    seen: dict[str, int] = {}
    for a in archs:
        n = seen.get(a.label, 0)
        seen[a.label] = n + 1
        if n:
            a.label = f"{a.label}#{n + 1}"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_") or "arch"


def _row(a: Arch, spec: TargetSpec, runtime: str, predicted, timing: dict | None, tvm_us) -> dict:
    measured = timing["median"] if timing else None
    return {"architecture": a.label, "target": spec.name, "runtime": runtime, "predicted_us": predicted,
            "measured_us": measured, "measured_q1_us": timing["q1"] if timing else None,
            "measured_q3_us": timing["q3"] if timing else None, "stable": timing["stable"] if timing else None,
            "measured_over_predicted": measured / predicted if measured and predicted else None,
            "vs_tvm": measured / tvm_us if measured and tvm_us else None}


def _peer_rows(b: Built, manifest: dict) -> list[dict]:
    """TVM's shipped module (the build's library) and its peers, timed interleaved: one row each."""
    model = build_network_from_arch(b.arch, b.weights, 0)
    x = example_input(b.arch.input_shape, 0)
    lib = Path(b.build_dir) / manifest["library"]["file"]
    t = {k: v.to_json() for k, v in time_with_peers(model, b.arch, b.spec, lib, Path(b.build_dir) / ONNX_FILE,
                                                      x).items()}
    tvm_us = t["tvm"]["median"]
    return [_row(b.arch, b.spec, "tvm", manifest.get("predicted_latency_us"), t["tvm"], tvm_us)] + [
        _row(b.arch, b.spec, k, None, t[k], tvm_us) for k in ("tvm-untuned", "pytorch", "onnxruntime")]


def compare_table(rows: list[dict]) -> Table:
    """The comparison as a terminal table (µs, median) that reads whole at 80 columns: short headers, and long
    labels wrapped, never cut."""
    t = Table(title="latency, µs (median (IQR), batch 1)", caption="pred: the table's prediction; meas: median (IQR), "
              "interleaved", caption_justify="left")
    for c, j in (("net", "left"), ("target", "left"), ("runtime", "left"), ("pred", "right"), ("meas", "right"),
                 ("meas/pred", "right"), ("vs tvm", "right")):
        # only the free-text columns wrap; names and numbers keep their width
        t.add_column(c, justify=j, overflow="fold", no_wrap=c not in ("net", "target"))
    for r in rows:
        meas = fmt_us(r["measured_us"])
        if r.get("measured_q1_us") is not None:
            meas += f" ({fmt_us(r['measured_q1_us'])}–{fmt_us(r['measured_q3_us'])})"
        if r.get("stable") is False:
            meas += " UNSTABLE"
        t.add_row(r["architecture"], r["target"], r["runtime"], fmt_us(r["predicted_us"]), meas,
                  _ratio(r["measured_over_predicted"]), _ratio(r["vs_tvm"]))
    return t


def _ratio(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def write_rows(rows: list[dict], csv_path: str | os.PathLike | None = None,
               json_path: str | os.PathLike | None = None, meta: dict | None = None) -> None:
    """Write the comparison rows as CSV and/or JSON (atomically)."""
    if csv_path:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(csv_path, buf.getvalue())
    if json_path:
        atomic_write_json(json_path, {"schema": SCHEMA, **(meta or {}), "units": "us", "rows": rows})
