"""`tvm-nas validate`: does the latency table predict the compiled networks on this target?

Compiles random architectures of a space (plus its fastest, slowest and reference nets and any given ones) with the
target's tuning database, no new tuning; checks their outputs; times them interleaved under the measurement
protocol (locally or through the RPC tracker); and compares the table's predictions with the measurements:
median and worst |error|, share within ±5% and ±10%, Kendall τ and Spearman ρ. Writes ``validate.json`` and a
scatter plot ``validate.png``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from ..errors import TvmNasError
from ..io import atomic_write_json
from ..timing import format_us

SCHEMA = 1
RESULT, FIGURE = "validate.json", "validate.png"


def random_archs(space, n: int, seed: int = 0) -> list[list[str]]:
    """`n` architectures drawn uniformly (one candidate per block), seeded."""
    rng = np.random.default_rng(seed)
    return [[b.candidates[int(rng.integers(len(b.candidates)))] for b in space.blocks()] for _ in range(n)]


def nets_to_validate(space, table, n: int, archs: Sequence = (), seed: int = 0) -> list:
    """The nets of a validation: `n` random ones, the fastest and slowest under the table, the reference, `archs`.

    Duplicated architectures are kept once (the first label wins).
    """
    from ..arch import Arch, arch_document, load_architecture, reference_arch

    fast, slow = table.extremes(space)
    nets = [Arch(space, fast, arch_document(space, fast, None, None), None, "fastest"),
            Arch(space, slow, arch_document(space, slow, None, None), None, "slowest")]
    try:
        nets.append(reference_arch(space))
    except TvmNasError:
        pass  # a space whose blocks do not all offer the reference op
    for a in archs:
        a = load_architecture(a)
        if a.space.hash != space.hash:
            raise TvmNasError(f"{a.path}: field 'space': architecture of space '{a.space.name}' (hash "
                              f"{a.space.hash}), not '{space.name}' (hash {space.hash})")
        nets.append(a)
    nets += [Arch(space, ops, arch_document(space, ops, None, None), None, f"random-{i}")
             for i, ops in enumerate(random_archs(space, n, seed))]
    seen, out = set(), []
    for a in nets:
        if tuple(a.ops) not in seen:
            seen.add(tuple(a.ops))
            out.append(a)
    return out


def statistics(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """Agreement of predictions with measurements: errors in % of the measured latency, rank correlations."""
    from scipy import stats

    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    err = 100 * (p - m) / m
    a = np.abs(err)
    tau = stats.kendalltau(p, m).statistic if len(p) > 1 else float("nan")
    rho = stats.spearmanr(p, m).statistic if len(p) > 1 else float("nan")
    return {"nets": len(p), "median_abs_error_pct": float(np.median(a)), "worst_abs_error_pct": float(a.max()),
            "mean_error_pct": float(err.mean()), "within_5pct": float((a <= 5).mean()),
            "within_10pct": float((a <= 10).mean()), "kendall_tau": float(tau), "spearman_rho": float(rho)}


def validate(space, target, n: int = 20, archs: Sequence = (), logs_dir: str | os.PathLike = "tuning_logs",
             out: str | os.PathLike = "validate", seed: int = 0, console: Console | None = None) -> dict:
    """Predicted against measured latency of compiled nets on a target; see the module docstring.

    Args:
        space: a space name or path.
        target: a target name or path (local or RPC runner).
        n: random architectures to add to the fastest, slowest and reference nets.
        archs: further ``*.arch.json`` files (e.g. a searched net).
        logs_dir: root of the per-target tables and databases (`<logs_dir>/<target>/`).
        out: folder for ``validate.json`` and ``validate.png``.
        seed: seed of the random architectures and their weights.

    Returns:
        The result document (also written to ``out/validate.json``).
    """
    from ..backend import measure, tuning
    from ..backend.target import is_gpu
    from ..profile.table import LatencyTable, table_path
    from ..space import load_space
    from ..targets import load_target
    from ..timing import Protocol
    from .model import build_network_from_arch, example_input, torch_forward

    console = console or Console(stderr=True)
    space, spec = load_space(space), load_target(target)
    if n < 0:
        raise TvmNasError(f"--nets must be >= 0, got {n}")
    path = table_path(logs_dir, spec.name, space.name)
    if not path.is_file():
        raise TvmNasError(f"{path}: no latency table of space '{space.name}' on target '{spec.name}'; run: "
                          f"tvm-nas profile --space {space.name} --target {spec.name} --logs-dir {logs_dir}")
    table = LatencyTable.load(path, space=space, target=spec)
    if spec.cross_compiler:
        spec.check_cross_compiler()
    if spec.is_rpc:
        from ..backend.remote import check_tracker

        check_tracker(spec)
    if is_gpu(spec) and not spec.is_rpc:
        from ..backend.library import cuda_device_present

        if not cuda_device_present():
            raise TvmNasError(f"target '{spec.name}': no CUDA device here to measure on; use its RPC runner")
    nets = nets_to_validate(space, table, n, archs, seed)
    work = Path(logs_dir) / spec.name
    db = tuning.open_database(work, spec) if (work / "database_workload.json").is_file() else None
    console.print(f"validate [bold]{space.name}[/] on [bold]{spec.name}[/]: {len(nets)} nets, database "
                  f"{'none (default schedules)' if db is None else work}")
    t0 = time.perf_counter()
    rows, loaded = [], {}
    with tempfile.TemporaryDirectory() as tmp, measure.target_session(spec) as sess:
        for a in nets:
            model = build_network_from_arch(a, None, seed)
            x = example_input(a.input_shape, seed)
            exe, untuned = _compile(model, a, spec, db)
            lib = measure.export(exe, Path(tmp) / f"{_slug(a.label)}.so", spec)
            m = measure.load(lib, [x], spec, sess)
            y = torch_forward(model, x)
            err = float(np.abs(m.outputs()[0].reshape(y.shape) - y).max())
            if not err <= 1e-4:
                raise TvmNasError(f"target '{spec.name}': net '{a.label}' computes wrong outputs (max abs err "
                                  f"{err:.2e}); the latency of a wrong module means nothing")
            loaded[a.label] = m
            rows.append({"net": a.label, "ops": a.ops, "predicted_us": table.predict(space, a.ops, calibrated=False),
                         "untuned_kernels": untuned, "max_abs_err": err})
        compile_s = time.perf_counter() - t0
        console.print(f"compiled {len(nets)} nets in {compile_s:.0f} s; measuring them interleaved")
        protocol = Protocol.of(spec.evaluator)
        timings = measure.time_loaded(loaded, spec, protocol=protocol)
        loaded.clear()
    for r in rows:
        t = timings[r["net"]]
        r.update(measured_us=t.median, measured_q1=t.q1, measured_q3=t.q3, stable=t.stable,
                 error_pct=100 * (r["predicted_us"] - t.median) / t.median, measurement=t.to_json())
    summary = statistics([r["predicted_us"] for r in rows], [r["measured_us"] for r in rows])
    summary["unstable"] = [r["net"] for r in rows if not r["stable"]]
    summary["load_avg"] = list(os.getloadavg())
    summary["in_use"] = _in_use(table, space, rows, console)
    summary["calibration"] = _calibrate(table, path, rows, summary, console)
    summary["correction"] = _correct(table, path, rows, summary, console)
    doc = {"schema": SCHEMA, "space": {"name": space.name, "hash": space.hash},
           "target": {"name": spec.name, "hash": spec.hash, "threads": spec.threads},
           "table": {"path": str(path), "hash": table.hash, "trials": table.meta.get("settings", {}).get("trials"),
                     "invocation_us": table.meta.get("invocation", {}).get("median")},
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


def _in_use(table, space, rows: list[dict], console) -> dict | None:
    """How the model already fitted to this table (the learned correction, else the calibration) predicts the nets
    of this validation that it was not fitted on: the out-of-sample check a leave-one-out score stands for. None
    without such a model, or with fewer than 2 new nets (the same seed validates the same nets). Each new net's
    row gets that prediction (``in_use_us``)."""
    model = table.correction if table.correction is not None else table.calibration
    if model is None or not isinstance(model.get("trained_on"), list):
        return None  # none, or fitted before its nets were recorded: which nets are new is unknown
    seen = {tuple(o) for o in model["trained_on"]}
    fresh = [r for r in rows if tuple(r["ops"]) not in seen]
    if len(fresh) < 2:
        return None
    name = "learned correction" if table.correction is not None else "calibrated table"
    for r in fresh:
        r["in_use_us"] = table.predict(space, r["ops"])
    st = statistics([r["in_use_us"] for r in fresh], [r["measured_us"] for r in fresh])
    st.update(model=name, fitted_on=model.get("nets"), fitted=model.get("fitted"))
    console.print(f"the {name} in use (fitted on {model.get('nets')} nets) on {len(fresh)} nets it was not fitted "
                  f"on: |error| median {st['median_abs_error_pct']:.1f}%, worst {st['worst_abs_error_pct']:.1f}%; "
                  f"within ±5% {100 * st['within_5pct']:.0f}%; Kendall τ {st['kendall_tau']:.2f}")
    return st


def _calibrate(table, path: Path, rows: list[dict], summary: dict, console) -> dict | None:
    """Fit measured ≈ scale × table sum (+ offset) on these nets; score it leave-one-out (each net predicted by a
    fit on the others). When that beats the plain sum's median without worsening its worst net, write it beside the
    table: every later prediction of the table (search, compile, compare) uses it. Each row gets its leave-one-out
    prediction."""
    from ..profile.table import calibration_path, fit_calibration

    fit = fit_calibration([r["predicted_us"] for r in rows], [r["measured_us"] for r in rows])
    if fit is None:
        return None
    for r, v in zip(rows, fit["loo_us"], strict=True):
        r["calibrated_us"] = v
    return _keep(fit, "calibration", calibration_path(path), table, rows, summary, console,
                 f"measured ≈ {fit['scale']:.3f} × table sum {fit['offset_us']:+.1f} µs",
                 f"the plain sum's {fit['additive_median_abs_error_pct']:.1f}% median without exceeding its "
                 f"{fit['additive_worst_abs_error_pct']:.1f}% worst")


def _correct(table, path: Path, rows: list[dict], summary: dict, console) -> dict | None:
    """Fit the learned correction (XGBoost on each net's op counts and table sum, see
    :mod:`~tvm_nas.profile.correction`) on these nets; score it leave-one-out against the best linear model (the
    calibration when it qualified here, else the plain sum). When it beats that model's median without exceeding
    its worst, write it beside the table: every later whole-net prediction uses it. Each row gets its leave-one-out
    prediction (``corrected_us``)."""
    from ..profile.correction import baseline_of, correction_path, fit_correction

    base = baseline_of(summary.get("calibration"), summary["median_abs_error_pct"], summary["worst_abs_error_pct"])
    fit = fit_correction([r["ops"] for r in rows], [r["predicted_us"] for r in rows],
                         [r["measured_us"] for r in rows], base)
    if fit is None:
        return None
    for r, v in zip(rows, fit["loo_us"], strict=True):
        r["corrected_us"] = v
    of = "sum" if fit["form"] == "sum" else "sum and op counts"
    return _keep(fit, "correction", correction_path(path), table, rows, summary, console,
                 f"measured ≈ table sum × an XGBoost ratio of the {of}",
                 f"the {base['name']}'s {base['median_abs_error_pct']:.1f}% median without exceeding its "
                 f"{base['worst_abs_error_pct']:.1f}% worst")


def _keep(fit: dict, what: str, where: Path, table, rows: list[dict], summary: dict, console, form: str,
          beat: str) -> dict:
    """Write a fitted model beside the table when it qualified on stable nets; remove an earlier one when stable
    nets are predicted better without it. Returns the fit as recorded in the summary (no per-net lists, no
    model)."""
    loo = fit.pop("loo_us")
    stats = statistics(loo, [r["measured_us"] for r in rows])
    fit.update(leave_one_out=stats, table_hash=table.hash, load_avg=summary["load_avg"],
               fitted=time.strftime("%Y-%m-%dT%H:%M:%S%z"), unstable_nets=len(summary["unstable"]),
               trained_on=[list(r["ops"]) for r in rows])
    # A machine that changes speed mid-validation slows every net in the same rounds, so many nets turn unstable
    # (10 of 23 in the case in docs/measurement.md); a fit to that would learn the machine's state. One unstable
    # net among several is that net's own noise.
    if fit["better"] and len(summary["unstable"]) > len(rows) // 4:
        fit["better"] = False
        fit["not_used"] = f"{len(summary['unstable'])} net(s) unstable"
        console.print(f"{what} not used: {len(summary['unstable'])} of {len(rows)} nets were unstable (the machine "
                      "changed speed while they were timed), and a fit to them would learn the machine's state, not "
                      f"the table's error; leave-one-out it gave {fit['loo_median_abs_error_pct']:.1f}% median")
    elif fit["better"]:
        atomic_write_json(where, fit)
        console.print(f"{what}: {form}; leave-one-out |error| {fit['loo_median_abs_error_pct']:.1f}% median, "
                      f"{fit['loo_worst_abs_error_pct']:.1f}% worst, beating {beat}: written to {where}, used by "
                      "every later prediction of this table")
    else:
        console.print(f"{what} not used: leave-one-out |error| {fit['loo_median_abs_error_pct']:.1f}% median, "
                      f"{fit['loo_worst_abs_error_pct']:.1f}% worst does not beat {beat}")
        # stable nets that are predicted better without it overrule an earlier fit of this table (a refusal for
        # unstable nets above says nothing about the table, and keeps it)
        if where.is_file():
            where.unlink()
            fit["removed"] = str(where)
            console.print(f"removed the earlier {what} {where}: these nets are predicted better without it")
    fit.pop("booster", None)
    fit.pop("trained_on")
    return fit


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
    for what in ("calibration", "correction"):
        c = s.get(what)
        if not c or not c.get("better"):
            continue
        lo = c["leave_one_out"]
        out += (f"\n{'calibrated' if what == 'calibration' else 'learned correction'} (leave-one-out): |error| "
                f"median {lo['median_abs_error_pct']:.1f}%, worst {lo['worst_abs_error_pct']:.1f}%; within ±5% "
                f"{100 * lo['within_5pct']:.0f}%, ±10% {100 * lo['within_10pct']:.0f}%; Kendall τ "
                f"{lo['kendall_tau']:.2f}")
    u = s.get("in_use")
    if u:
        out += (f"\n{u['model']} in use, on {u['nets']} nets it was not fitted on: |error| median "
                f"{u['median_abs_error_pct']:.1f}%, worst {u['worst_abs_error_pct']:.1f}%; within ±5% "
                f"{100 * u['within_5pct']:.0f}%; Kendall τ {u['kendall_tau']:.2f}")
    return out


def learned(doc: dict) -> tuple[str, str] | None:
    """The row field and name of the model validate would predict these nets with from now on (the correction
    before the calibration), or None when the plain sum is kept."""
    s = doc["summary"]
    if (s.get("correction") or {}).get("better"):
        return "corrected_us", "learned correction"
    if (s.get("calibration") or {}).get("better"):
        return "calibrated_us", "calibrated table"
    return None


def result_table(doc: dict) -> Table:
    t = Table(title=f"predicted (table) against measured (compiled) on {doc['target']['name']}")
    cols = ["net", "table sum µs", "calibrated µs"]
    corrected = any(r.get("corrected_us") is not None for r in doc["nets"])
    cols += ["corrected µs"] if corrected else []
    for c in (*cols, "measured µs (median, IQR)", "error %", "untuned kernels"):
        t.add_column(c, justify="left" if c == "net" else "right")
    for r in doc["nets"]:
        fits = [r.get("calibrated_us")] + ([r.get("corrected_us")] if corrected else [])
        t.add_row(r["net"], f"{r['predicted_us']:,.1f}", *("—" if v is None else f"{v:,.1f}" for v in fits),
                  format_us(r["measured_us"], r["measured_q1"], r["measured_q3"], r["stable"]).replace(" µs", ""),
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
    p = np.array([r[cal[0]] for r in rows]) if cal else additive
    m = np.array([r["measured_us"] for r in rows])
    lo = np.array([r["measured_us"] - r["measured_q1"] for r in rows])
    hi = np.array([r["measured_q3"] - r["measured_us"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    random = np.array([r["net"].startswith("random-") for r in rows])
    ax.errorbar(p[random], m[random], yerr=[lo[random], hi[random]], fmt="o", ms=4, color="#1f77b4", alpha=0.8,
                label="random nets (median, IQR)")
    for i in np.flatnonzero(~random):
        ax.errorbar(p[i], m[i], yerr=[[lo[i]], [hi[i]]], fmt="s", ms=6, color="#d62728")
        ax.annotate(rows[i]["net"], (p[i], m[i]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if cal:
        ax.scatter(additive, m, s=14, facecolors="none", edgecolors="#999", label=f"table sum (no {cal[1]})")
    lim = [0.95 * min(p.min(), m.min(), additive.min()), 1.05 * max(p.max(), m.max(), additive.max())]
    ax.plot(lim, lim, "--", color="#555", lw=1, label="measured = predicted")
    ax.fill_between(lim, [v * 0.95 for v in lim], [v * 1.05 for v in lim], color="#999", alpha=0.2, label="±5%")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("predicted latency (µs, " + (f"{cal[1]}, leave-one-out)" if cal else "latency table)"))
    ax.set_ylabel("measured latency (µs, compiled module)")
    s = doc["summary"]
    shown = s[{"corrected_us": "correction", "calibrated_us": "calibration"}[cal[0]]]["leave_one_out"] if cal else s
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

