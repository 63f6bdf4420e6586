"""`tvm-nas validate`: does the latency table predict the compiled networks on this target?

Compiles random architectures of a space (plus its fastest, slowest and reference nets and any given ones) with the
target's tuning database, no new tuning; checks their outputs; times them interleaved under the measurement
protocol (locally or through the RPC tracker); and compares the table's predictions with the measurements:
median and worst |error|, share within ±5% and ±10%, Kendall τ and Spearman ρ. Writes ``validate.json`` and a
scatter plot ``validate.png``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..console import fmt_timing, fmt_us
from ..errors import TvmNasError
from ..io import atomic_write_json, exclusive, remove_orphans
from ..profile.model import CALIBRATION, CORRECTION, FITTED, Fitted, chosen, statistics

SCHEMA = 1
RESULT, FIGURE = "validate.json", "validate.png"


def random_archs(space, n: int, seed: int = 0) -> list[list[str]]:
    """`n` architectures drawn uniformly (one candidate per block), seeded."""
    rng = np.random.default_rng(seed)
    return [[b.candidates[int(rng.integers(len(b.candidates)))] for b in space.blocks()] for _ in range(n)]


def of_space(space, archs: Sequence) -> list:
    """`archs` (paths or :class:`~tvm_nas.arch.Arch` objects) loaded, each checked to be of `space`."""
    from ..arch import load_architecture

    given = []
    for a in archs:
        a = load_architecture(a)
        if a.space.hash != space.hash:
            raise TvmNasError(f"{a.path}: field 'space': architecture of space '{a.space.name}' (hash "
                              f"{a.space.hash}), not '{space.name}' (hash {space.hash})")
        given.append(a)
    return given


def nets_to_validate(space, model, n: int, archs: Sequence = (), seed: int = 0) -> tuple[list, dict[str, list[str]]]:
    """The nets of a validation: `n` random ones, the fastest and slowest under the latency model, the reference,
    `archs` (paths, or :class:`~tvm_nas.arch.Arch` objects whose ``label`` names their row: a run passes its own
    names).

    A net given twice is measured once, at its first place, under the name of the first of `archs` that has it
    (else its first name).

    Returns:
        ``(nets, aliases)``: the nets, and for each net's name its other names.
    """
    from ..arch import Arch, arch_document, reference_arch

    fast, slow = model.extremes(space)
    nets = [Arch(space, fast, arch_document(space, fast, None, None), None, "fastest"),
            Arch(space, slow, arch_document(space, slow, None, None), None, "slowest")]
    try:
        nets.append(reference_arch(space))
    except TvmNasError:
        pass  # a space whose blocks do not all offer the reference op
    given = of_space(space, archs)
    nets += given
    nets += [Arch(space, ops, arch_document(space, ops, None, None), None, f"random-{i}")
             for i, ops in enumerate(random_archs(space, n, seed))]
    names: dict[tuple, list[str]] = {}
    for a in [*given, *nets]:
        if a.label not in names.setdefault(tuple(a.ops), []):
            names[tuple(a.ops)].append(a.label)
    seen, out, aliases = set(), [], {}
    for a in nets:
        if tuple(a.ops) not in seen:
            seen.add(tuple(a.ops))
            first, *others = names[tuple(a.ops)]
            out.append(Arch(a.space, a.ops, a.doc, a.path, first, a.file))
            aliases[first] = others
    return out, aliases


def validate(space, target, n: int = 20, archs: Sequence = (), logs_dir: str | os.PathLike = "tuning_logs",
             out: str | os.PathLike = "validate", seed: int = 0, console: Console | None = None,
             model=None, built: Sequence = ()) -> dict:
    """Predicted against measured latency of compiled nets on a target; see the module docstring.

    Args:
        space: a space name or path.
        target: a target name or path (local or RPC runner).
        n: random architectures to add to the fastest, slowest and reference nets.
        archs: further ``*.arch.json`` files (e.g. a searched net), or :class:`~tvm_nas.arch.Arch` objects whose
            ``label`` names their row.
        logs_dir: root of the per-target tables and databases (`<logs_dir>/<target>/`).
        out: folder for ``validate.json`` and ``validate.png``.
        seed: seed of the random architectures and their weights.
        model: the :class:`~tvm_nas.profile.model.LatencyModel` to check, and beside whose table a better fitted
            model is written (a run passes its own copy); None: the table under `logs_dir`.
        built: finished builds (:class:`~tvm_nas.deploy.compile.Built`) of nets of this validation: their
            libraries are loaded, checked and timed as they are, not compiled again.

    Returns:
        The result document (also written to ``out/validate.json``).
    """
    from ..profile.model import LatencyModel
    from ..space import load_space
    from ..targets import load_target

    console = console or Console(stderr=True)
    space, spec = load_space(space), load_target(target)
    if n < 0:
        raise TvmNasError(f"--nets must be >= 0, got {n}")
    of_space(space, archs)  # an architecture of another space is named before its table is looked for
    model = model if model is not None else LatencyModel.of(space, spec, logs_dir)
    _check_measurable(spec)
    nets, aliases = nets_to_validate(space, model, n, archs, seed)
    work, db = _database(logs_dir, spec)
    console.print(f"validate [bold]{space.name}[/] on [bold]{spec.name}[/]: {len(nets)} nets, database "
                  f"{'none (default schedules)' if db is None else work}")
    # one validation writes a folder and the fitted files beside a table at a time
    with exclusive(Path(out) / RESULT, "validation"), exclusive(model.path, "latency table's fitted models"):
        rows, timings, protocol, compile_s = _build_and_time(space, spec, model, nets, built, db, seed, console)
        for r in rows:
            t = timings[r["net"]]
            r.update(measured_us=t.median, error_pct=100 * (r["predicted_us"] - t.median) / t.median,
                     measurement=t.to_json())
            if aliases.get(r["net"]):  # the same net under other names (a run's searched net may be its fastest)
                r["aliases"] = aliases[r["net"]]
        summary = statistics([r["predicted_us"] for r in rows], [r["measured_us"] for r in rows])
        summary["unstable"] = [r["net"] for r in rows if not r["measurement"]["stable"]]
        summary["load_avg"] = list(os.getloadavg())
        # the model decides which fitted model it keeps; the rows get each fit's leave-one-out predictions
        summary["in_use"] = model.in_use(space, rows, console.print)
        summary.update(model.learn(rows, summary, console.print))
        doc = {"schema": SCHEMA, "space": {"name": space.name, "hash": space.hash},
               "target": {"name": spec.name, "hash": spec.hash, "threads": spec.threads},
               "table": {"path": str(model.path), "hash": model.hash,
                         "trials": model.meta.get("settings", {}).get("trials"),
                         "invocation_us": model.meta.get("invocation", {}).get("median")},
               "protocol": protocol.to_json(), "where": next(iter(timings.values())).where if timings else None,
               "compile_seconds": round(compile_s, 1), "summary": summary, "nets": rows}
        out = Path(out)
        atomic_write_json(out / RESULT, doc)
        doc["figure"] = plot(doc, out / FIGURE)
        atomic_write_json(out / RESULT, doc)
    console.print(result_table(doc))
    console.print(summary_line(doc))
    console.print(f"written: {out / RESULT}, {out / FIGURE}")
    return doc


def _check_measurable(spec) -> None:
    """Refuse, in one line, a target whose modules cannot be built and timed from here."""
    from ..backend.target import is_gpu

    if spec.cross_compiler:
        spec.check_cross_compiler()
    if spec.is_rpc:
        from ..backend.remote import check_tracker

        check_tracker(spec)
    if is_gpu(spec) and not spec.is_rpc:
        from ..backend.library import cuda_device_present

        if not cuda_device_present():
            raise TvmNasError(f"target '{spec.name}': no CUDA device here to measure on; use its RPC runner")


def _database(logs_dir, spec) -> tuple[Path, object]:
    """The target's folder under `logs_dir` and its tuning database (None when nothing was tuned there)."""
    from ..backend import tuning

    work = Path(logs_dir) / spec.name
    return work, tuning.open_database(work, spec) if (work / "database_workload.json").is_file() else None


def measure_nets(space, spec, nets: Sequence[Sequence[str]], model, logs_dir: str | os.PathLike = "tuning_logs",
                 seed: int = 0, console: Console | None = None) -> list[dict]:
    """Compile nets of `space` (ops per block) with the target's tuning database, no new tuning, check their
    outputs and time them interleaved under the protocol, as :func:`validate` does; the timing figure of each
    (:data:`~tvm_nas.timing.TIMING`) with ``where`` it was timed (this machine, or the board through RPC), in
    order."""
    from ..arch import Arch, arch_document
    from ..timing import figure

    console = console or Console(stderr=True)
    _check_measurable(spec)
    _, db = _database(logs_dir, spec)
    archs = [Arch(space, list(ops), arch_document(space, ops, None, None), None, f"net-{i}")
             for i, ops in enumerate(nets)]
    _, timings, _, _ = _build_and_time(space, spec, model, archs, (), db, seed, console)
    return [{**figure(timings[a.label]), "where": timings[a.label].where} for a in archs]


def _build_and_time(space, spec, model, nets, built, db, seed: int, console) -> tuple:
    """Compile the nets that have no finished build (into a staging folder removed afterwards, or at the next
    start when this process is killed), load and check every library the one way (:func:`load_checked`), and
    time them interleaved under the protocol."""
    from ..backend import measure
    from ..timing import Protocol
    from .compile import LIBRARY, Built, load_checked
    from .model import build_network_from_arch

    by_ops = {tuple(b.arch.ops): b for b in built}
    builds = {a.label: by_ops[tuple(a.ops)] for a in nets if tuple(a.ops) in by_ops}
    reused = set(builds)
    untuned: dict[str, int] = {}
    t0 = time.perf_counter()
    stage = _staging_folder()
    try:
        with measure.target_session(spec) as sess:
            for a in nets:
                if a.label in builds:
                    continue
                exe, untuned[a.label] = _compile(build_network_from_arch(a, None, seed), a, spec, db)
                folder = stage / _slug(a.label)
                folder.mkdir(parents=True, exist_ok=True)
                measure.export(exe, folder / LIBRARY, spec)
                builds[a.label] = Built(a, spec, None, folder)
            loaded, errs = load_checked(builds, spec, sess, seed)
            compile_s = time.perf_counter() - t0
            console.print(f"compiled {len(nets) - len(reused)} nets in {compile_s:.0f} s"
                          + (f", reused {len(reused)} finished builds" if reused else "")
                          + "; measuring them interleaved")
            protocol = Protocol.of(spec.evaluator)
            timings = measure.time_loaded(loaded, spec, protocol=protocol)
            loaded.clear()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    rows = [{"net": a.label, "ops": a.ops, "predicted_us": model.predict(space, a.ops, calibrated=False),
             "untuned_kernels": untuned[a.label] if a.label in untuned else _untuned_in(builds[a.label]),
             "max_abs_err": errs[a.label], "build": str(builds[a.label].build_dir) if a.label in reused else None}
            for a in nets]
    return rows, timings, protocol, compile_s


STAGE_PREFIX = "tvm-nas-validate-"


def _staging_folder() -> Path:
    """A fresh folder for this process's libraries; those of validations whose process is gone are removed."""
    root = Path(tempfile.gettempdir())
    remove_orphans(root, STAGE_PREFIX)
    stage = root / f"{STAGE_PREFIX}{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    return stage


def _compile(model, a, spec, db):
    from ..backend.target import is_gpu, to_tvm_target
    from .compile import build_module, lower_network

    fused = lower_network(model, a, None, to_tvm_target(spec), prepack=not is_gpu(spec))
    untuned = 0
    if db is not None:
        from ..backend import tuning

        tasks = tuning.dedup({"net": tuning.extract_tasks(fused, to_tvm_target(spec))})
        untuned = sum(1 for t in tasks.values() if tuning.records(db, t.mod) == 0)
    return build_module(fused, spec, db), untuned


def _untuned_in(b) -> int:
    """Untuned kernels of a finished build, from its manifest."""
    from ..records import load_manifest
    from .compile import MANIFEST

    m = load_manifest(Path(b.build_dir) / MANIFEST)
    return int(((m.get("tuning") or {}).get("untuned")) or 0)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_") or "net"


def summary_line(doc: dict) -> str:
    s = doc["summary"]
    load = s["load_avg"][0]
    flag = f"; UNSTABLE: {', '.join(s['unstable'])}" if s["unstable"] else ""
    return (f"{doc['space']['name']} on {doc['target']['name']}, {s['nets']} nets: |error| median "
            f"{s['median_abs_error_pct']:.1f}%, worst {s['worst_abs_error_pct']:.1f}%; within ±5% "
            f"{100 * s['within_5pct']:.0f}%, ±10% {100 * s['within_10pct']:.0f}%; Kendall τ {s['kendall_tau']:.2f}, "
            f"Spearman ρ {s['spearman_rho']:.2f} (load average {load:.2f}){flag}{_calibrated_line(s)}")


def _calibrated_line(s: dict) -> str:
    out = ""
    for f in reversed(FITTED):
        c = s.get(f.key)
        if not c or not c.get("better"):
            continue
        lo = c["leave_one_out"]
        out += (f"\n{f.label.removesuffix(' table')} (leave-one-out): |error| "
                f"median {lo['median_abs_error_pct']:.1f}%, worst {lo['worst_abs_error_pct']:.1f}%; within ±5% "
                f"{100 * lo['within_5pct']:.0f}%, ±10% {100 * lo['within_10pct']:.0f}%; Kendall τ "
                f"{lo['kendall_tau']:.2f}")
    u = s.get("in_use")
    if u:
        out += (f"\n{u['model']} in use, on {u['nets']} nets it was not fitted on: |error| median "
                f"{u['median_abs_error_pct']:.1f}%, worst {u['worst_abs_error_pct']:.1f}%; within ±5% "
                f"{100 * u['within_5pct']:.0f}%; Kendall τ {u['kendall_tau']:.2f}")
    return out


def learned(doc: dict) -> Fitted | None:
    """The fitted model validate would predict these nets with from now on (:func:`~tvm_nas.profile.model.chosen`),
    or None when the plain sum is kept."""
    return chosen(doc["summary"])


def result_table(doc: dict) -> Table:
    t = Table(title=f"predicted (table) against measured (compiled) on {doc['target']['name']}")
    # each fitted model's leave-one-out column: the calibration's always (a dash when there is none)
    shown = [CALIBRATION] + ([CORRECTION] if any(r.get(CORRECTION.row) is not None for r in doc["nets"]) else [])
    cols = ["net", "table sum µs", *(f"{f.name} µs" for f in shown)]
    for c in (*cols, "measured µs (median, IQR)", "error %", "untuned kernels"):
        t.add_column(c, justify="left" if c == "net" else "right")
    for r in doc["nets"]:
        fits = [r.get(f.row) for f in shown]
        t.add_row(r["net"], fmt_us(r["predicted_us"]), *(fmt_us(v) for v in fits),
                  fmt_timing(r["measured_us"], r["measurement"]["q1"], r["measurement"]["q3"],
                             r["measurement"]["stable"]),
                  f"{r['error_pct']:+.1f}", str(r["untuned_kernels"]))
    return t


def plot(doc: dict, path: Path) -> str:
    """Scatter of measured (median, IQR bars) against predicted latency with the y = x line; returns the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes

    rows = doc["nets"]
    cal = learned(doc)
    additive = np.array([r["predicted_us"] for r in rows])
    p = np.array([r[cal.row] for r in rows]) if cal else additive
    m = np.array([r["measured_us"] for r in rows])
    lo = np.array([r["measured_us"] - r["measurement"]["q1"] for r in rows])
    hi = np.array([r["measurement"]["q3"] - r["measured_us"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    random = np.array([r["net"].startswith("random-") for r in rows])
    ax.errorbar(p[random], m[random], yerr=[lo[random], hi[random]], fmt="o", ms=4, color="#1f77b4", alpha=0.8,
                label="random nets (median, IQR)")
    for i in np.flatnonzero(~random):
        ax.errorbar(p[i], m[i], yerr=[[lo[i]], [hi[i]]], fmt="s", ms=6, color="#d62728")
        ax.annotate(rows[i]["net"], (p[i], m[i]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if cal:
        ax.scatter(additive, m, s=14, facecolors="none", edgecolors="#999", label=f"table sum (no {cal.label})")
    lim = [0.95 * min(p.min(), m.min(), additive.min()), 1.05 * max(p.max(), m.max(), additive.max())]
    ax.plot(lim, lim, "--", color="#555", lw=1, label="measured = predicted")
    ax.fill_between(lim, [v * 0.95 for v in lim], [v * 1.05 for v in lim], color="#999", alpha=0.2, label="±5%")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("predicted latency (µs, " + (f"{cal.label}, leave-one-out)" if cal else "latency table)"))
    ax.set_ylabel("measured latency (µs, compiled module)")
    s = doc["summary"]
    shown = s[cal.key]["leave_one_out"] if cal else s
    ax.set_title(f"{doc['space']['name']} on {doc['target']['name']}: median |err| "
                 f"{shown['median_abs_error_pct']:.1f}%, τ {shown['kendall_tau']:.2f}"
                 + (f" (table sum: {s['median_abs_error_pct']:.1f}%)" if cal else ""), fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name

