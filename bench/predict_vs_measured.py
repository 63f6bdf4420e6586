"""Does the latency table predict the compiled nets? `tvm-nas validate` on ≥ 20 random nets, against the goals.

    PYTHONPATH=. .venv/bin/python bench/predict_vs_measured.py [--space tiny] [--target host] [--n 20]
        [--logs-dir tuning_logs] [--profile-trials 0] [--twice] [--fresh-seed S] [--rescore RESULT.json]

Profiles the table first if it is missing (``--profile-trials``), then runs validate: N random nets plus the
fastest, slowest and reference nets, compiled with the target's database, timed interleaved under the measurement
protocol. Prints median and worst |error|, the share within ±5% / ±10%, Kendall τ and Spearman ρ with the load
average, and the issue's goals (tuned proxyless-cifar: median ≤ 3%, ≥ 95% within ±5%, τ ≥ 0.9; default space:
τ ≥ 0.8). ``--twice`` runs validate again in a fresh process (a second "stage") and reports how far the same
modules' medians moved between the two (goal ≤ 3%). ``--fresh-seed S`` then validates other random nets: how the
model the first validation fitted (calibration or learned correction) predicts nets it was not fitted on. Goals are
checked for the plain table sum, for the product's prediction (leave-one-out), and on the fresh nets.
``--rescore RESULT.json`` measures nothing and scores today's models on an earlier result's validation. Writes
``bench/results/predict_vs_measured-<space>-<target>-n<N>.json``. Run time: tiny, 20 nets, about 3 minutes
(6 with --twice) on an idle 2-core machine; proxyless-cifar about 15 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from tvm_nas.io import atomic_write_json
from tvm_nas.profile import profile
from tvm_nas.profile.table import table_path
from tvm_nas.space import load_space
from tvm_nas.targets import load_target

GOALS = {"proxyless-cifar": {"median_abs_error_pct": ("<=", 3.0), "within_5pct": (">=", 0.95),
                             "kendall_tau": (">=", 0.9)},
         "default": {"kendall_tau": (">=", 0.8), "stage_drift_pct": ("<=", 3.0)}}


def _validate(args, out: Path, seed: int | None = None) -> dict:
    """validate in a fresh process, threads fixed before its runtime starts."""
    cmd = [sys.executable, "-m", "tvm_nas", "validate", "--space", args.space, "--target", args.target,
           "--nets", str(args.n), "--logs-dir", args.logs_dir, "--out", str(out),
           "--seed", str(args.seed if seed is None else seed)]
    subprocess.run(cmd, check=True)
    return json.loads((out / "validate.json").read_text())


def learned_correction(nets: list[dict], summary: dict | None = None) -> dict:
    """Does a learned correction beat the additive table on nets it was not trained on? Leave-one-out.

    The product's two fits, each scored with every net predicted by a fit on the others: the calibration of the
    table's prediction (measured ≈ a × predicted, or a × predicted + b: whichever form qualifies, see
    ``fit_calibration``) and the learned correction (XGBoost on the net's op counts and table sum, see
    ``fit_correction``). The additive table is the baseline. Reported: median and worst |error|, share within ±5%."""
    from tvm_nas.deploy.validate import statistics
    from tvm_nas.profile.calibration import fit_calibration
    from tvm_nas.profile.correction import baseline_of, fit_correction

    rows = [r for r in nets if r.get("measured_us") and r.get("predicted_us")]
    if len(rows) < 6:
        return {}
    pred = np.array([r["predicted_us"] for r in rows])
    meas = np.array([r["measured_us"] for r in rows])
    cal = fit_calibration(pred, meas)
    plain = 100 * abs(pred / meas - 1)
    cor = fit_correction([r["ops"] for r in rows], pred, meas, baseline_of(cal, np.median(plain), plain.max()))
    guesses = {"additive": pred, "linear": np.array(cal["loo_us"])}
    if cor:
        guesses["xgboost"] = np.array(cor["loo_us"])
    out = {k: statistics(g, meas) for k, g in guesses.items()}
    # used: what validate kept (it also refuses a fit to a validation with many unstable nets)
    kept = summary or {}
    out["linear"]["used"] = bool((kept.get("calibration") or {}).get("better")) if summary else bool(cal["better"])
    if cor:
        out["xgboost"]["used"] = bool((kept.get("correction") or {}).get("better")) if summary else bool(cor["better"])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="tiny")
    p.add_argument("--target", default="host")
    p.add_argument("--logs-dir", default="tuning_logs")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-trials", type=int, default=0, help="budget if the table must be profiled first")
    p.add_argument("--twice", action="store_true", help="validate again in a second process; report the drift")
    p.add_argument("--fresh-seed", type=int, default=None,
                   help="then validate other random nets (this seed): how the model the first validation fitted "
                        "predicts nets it was not fitted on")
    p.add_argument("--rescore", default=None, metavar="RESULT.json",
                   help="measure nothing: score the models on the validation of an earlier result of this bench "
                        "(its 'validate' field)")
    p.add_argument("--results", default="bench/results")
    args = p.parse_args()
    console = Console()
    space, spec = load_space(args.space), load_target(args.target)
    load0 = os.getloadavg()
    if args.rescore:
        earlier = json.loads(Path(args.rescore).read_text())
        first, second, fresh = earlier["validate"], earlier.get("second_stage"), earlier.get("fresh_nets")
        load0 = tuple(earlier["load_before"])
        console.print(f"rescoring {args.rescore}: measured with load average {load0[0]:.2f} before, "
                      f"{earlier['load_after'][0]:.2f} after")
    else:
        if not table_path(args.logs_dir, spec.name, space.name).is_file():
            profile(space, spec, trials=args.profile_trials, logs_dir=args.logs_dir, console=console)
        with tempfile.TemporaryDirectory() as tmp:
            first = _validate(args, Path(tmp) / "1")
            second = _validate(args, Path(tmp) / "2") if args.twice else None
            fresh = _validate(args, Path(tmp) / "3", args.fresh_seed) if args.fresh_seed is not None else None
    s = dict(first["summary"])
    if second:
        m1 = {r["net"]: r["measured_us"] for r in first["nets"]}
        drift = [100 * abs(r["measured_us"] / m1[r["net"]] - 1) for r in second["nets"]]
        s.update(stage_drift_pct=float(np.median(drift)), stage_drift_worst_pct=float(np.max(drift)))
        console.print(f"same modules, two processes: medians moved by {s['stage_drift_pct']:.1f}% (median), "
                      f"{s['stage_drift_worst_pct']:.1f}% (worst) (load average {os.getloadavg()[0]:.2f})")
    # a rescore asks what the product would do with those measurements now: its own fits decide what is used
    learned = learned_correction(first["nets"], None if args.rescore else first["summary"])
    for k, v in learned.items():
        console.print(f"leave-one-out, {k}{' (used)' if v.get('used') else ''}: |error| median "
                      f"{v['median_abs_error_pct']:.1f}%, worst {v['worst_abs_error_pct']:.1f}%; within ±5% "
                      f"{100 * v['within_5pct']:.0f}%; τ {v['kendall_tau']:.2f}")
    # what the product predicts with: the model validate kept (leave-one-out), and that model on fresh nets
    used = next((k for k in ("xgboost", "linear") if learned.get(k, {}).get("used")), None)
    sources = {"table sum": s}
    if used:
        sources[f"product's prediction ({used}, leave-one-out)"] = {**learned[used], **{
            k: v for k, v in s.items() if k.startswith("stage_drift")}}
    in_use = (fresh or {}).get("summary", {}).get("in_use")
    if in_use:
        sources[f"{in_use['model']} on {in_use['nets']} fresh nets (seed {args.fresh_seed})"] = in_use
    goals = GOALS.get(space.name, GOALS["default"])
    verdict = {}
    for name, src in sources.items():
        verdict[name] = {}
        for k, (op, v) in goals.items():
            if k in src:
                ok = src[k] <= v if op == "<=" else src[k] >= v
                verdict[name][k] = {"value": src[k], "goal": f"{op} {v}", "met": bool(ok)}
                console.print(f"{name}: goal {k} {op} {v}: {src[k]:.3f} -> {'met' if ok else 'NOT met'}")
    trials = first["table"]["trials"]
    console.print(f"table trials {trials}, invocation cost {first['table']['invocation_us']} µs; load average "
                  f"before {load0[0]:.2f}, after "
                  f"{(earlier['load_after'] if args.rescore else os.getloadavg())[0]:.2f}"
                  + (" (when it was measured)" if args.rescore else ""))
    name = f"predict_vs_measured-{space.name}-{spec.name}-n{args.n}{'-rescored' if args.rescore else ''}.json"
    atomic_write_json(Path(args.results) / name, {"space": space.name, "target": spec.name, "threads": spec.threads,
                                                 "table_trials": trials, "load_before": list(load0),
                                                 "load_after": list(earlier["load_after"] if args.rescore
                                                                    else os.getloadavg()),
                                                 "rescored_from": args.rescore, "summary": s,
                                                 "goals": verdict, "learned_correction": learned, "validate": first,
                                                 "second_stage": second, "fresh_nets": fresh})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
