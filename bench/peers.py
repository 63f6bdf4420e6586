"""TVM's compiled net against the runtimes a deployment engineer would pick instead, each at its best.

    .venv/bin/python bench/peers.py [--space tiny-cifar] [--arch A.arch.json] [--threads 1 2] [--trials N]

Builds one net (default: the space's reference, MobileNetV2's ``mbconv_k3_e6`` everywhere) for ``host`` with the
target's tuning database (``--trials`` tunes what it lacks; ``tvm-nas profile`` fills it first), then, at each
thread count, times it with every installed peer through ``compare``'s own path (:func:`compare_built`): each
runtime in its best configuration (ONNX Runtime: the Clip graph, ``ORT_ENABLE_ALL``, spinning on and off, the
faster kept and named; PyTorch eager and ``torch.compile``; OpenVINO with the latency hint; ExecuTorch with
XNNPACK), in blocks with a cool-down between runtimes, once in forward and once in reversed order, so a ranking
that depends on the order shows. The same module runs at every thread count: only the runtime's pool changes.

Prints, per thread count and order, each runtime's median (IQR) and its ratio to the fastest peer, and whether
the ranking is the same in both orders, with the load average beside every figure. Writes
``bench/results/peers-<space>-<net>.json``. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nasbench import load  # noqa: E402  (the load average, as every bench prints it)

ORDERS = ("forward", "reverse")


def with_threads(spec_path: Path, threads: int, folder: Path) -> Path:
    """A copy of the target definition whose runtimes use `threads` threads (same codegen, other name)."""
    import yaml

    doc = yaml.safe_load(spec_path.read_text())
    doc["name"] = f"{doc['name']}-t{threads}"
    doc["threads"] = threads
    out = folder / f"{doc['name']}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="tiny-cifar")
    ap.add_argument("--arch", help="an *.arch.json (default: the space's reference net)")
    ap.add_argument("--weights", help="its trained weights (default: seeded random; latency does not depend on them)")
    ap.add_argument("--target", default="host")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--trials", type=int, default=0, help="tune what the target's database lacks for this net")
    ap.add_argument("--time-budget", help="tune this net's own kernels further for this long (compile --time-budget)")
    ap.add_argument("--untuned", action="store_true", help="TVM's default schedules (a smoke test of the bench)")
    ap.add_argument("--logs-dir", default=str(ROOT / "tuning_logs"))
    ap.add_argument("--peers", help="comma-separated runtimes (default: every one installed)")
    ap.add_argument("--out", help="default bench/results/peers-<space>-<net>.json")
    ap.add_argument("--report", metavar="FILE", help="print (and rewrite) the report of a finished results file")
    args = ap.parse_args()
    if args.report:
        return reprint(Path(args.report))

    from rich.console import Console

    from tvm_nas.arch import load_architecture, reference_arch
    from tvm_nas.deploy import compile_arch
    from tvm_nas.deploy.compare import Built, compare_built, compare_table
    from tvm_nas.io import atomic_write_json
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    console = Console()
    space = load_space(args.space)
    arch = load_architecture(args.arch) if args.arch else reference_arch(space)
    net = "reference" if not args.arch else Path(args.arch).name.removesuffix(".arch.json")
    from tvm_nas.specfile import resolve

    base, base_path = load_target(args.target), resolve(args.target, "targets")
    out = Path(args.out or ROOT / "bench" / "results" / f"peers-{space.name}-{net}.json")
    doc = {"schema": 1, "space": space.name, "net": net, "ops": arch.ops, "target": base.name, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build = tmp / "build"
        m = compile_arch(arch, base, weights=args.weights, out=build, trials=args.trials, logs_dir=args.logs_dir,
                         measure=False, untuned=args.untuned, console=console, time_budget=args.time_budget)
        doc["tuning"] = {k: m["tuning"][k] for k in ("reused", "tuned", "untuned", "total", "time_budget_s",
                                                      "tuning_seconds") if k in m["tuning"]}
        doc["table_tuning"] = table_tuning(args.logs_dir, space, base)
        doc["tvm_version"] = m["tvm_version"]
        for threads in args.threads:
            spec = load_target(with_threads(base_path, threads, tmp))
            for order in ORDERS:
                t0 = time.time()
                rows = compare_built([Built(arch, spec, args.weights, build)], which=args.peers, order=order)
                console.print(compare_table(rows))
                run = {"threads": threads, "order": order, "seconds": round(time.time() - t0, 1),
                       "load": list(os.getloadavg()), "rows": rows}
                doc["runs"].append(run)
                print(summary_line(run), flush=True)
                atomic_write_json(out, doc)
    print(report(doc))
    atomic_write_json(out, {**doc, "report": report(doc)})
    print(f"written: {out}")


def table_tuning(logs_dir: str, space, target) -> dict | None:
    """How the space's table under `logs_dir` was tuned (trials, time budget, seconds spent): the tuning a user
    gives before this net's own (``--time-budget``)."""
    from tvm_nas.profile.model import LatencyModel
    from tvm_nas.profile.table import table_path

    path = table_path(logs_dir, target.name, space.name)
    if not path.is_file():
        return None
    meta = LatencyModel.load(path, space=space, target=target).meta
    settings, timing = meta.get("settings") or {}, meta.get("timing") or {}
    return {"trials": settings.get("trials"), "time_budget_s": settings.get("time_budget_s"),
            "tune_seconds": timing.get("tune_s"), "tune_trials": timing.get("tune_trials")}


def reprint(path: Path) -> None:
    """The report of a finished results file, written again by this version of the bench."""
    from tvm_nas.io import atomic_write_json, read_json

    doc = read_json(path, "peers bench")
    doc["report"] = report(doc)
    print(doc["report"])
    atomic_write_json(path, doc)


def timed(rows: list[dict]) -> dict[str, dict]:
    """runtime -> row, with TVM's module called from Python as the peers are (``tvm-python``): the like-for-like
    figure for the ratios, since each peer's figure includes one Python call per run and TVM's own loop does
    not."""
    out = {r["runtime"]: r for r in rows if r["measured_us"] is not None}
    tvm = out.get("tvm")
    for o in (tvm or {}).get("tried") or ():
        if "called from Python" in o["setting"]:
            out["tvm-python"] = {"runtime": "tvm-python", "measured_us": o["median"], "setting": o["setting"],
                                 "measurement": {k: o.get(k, o["median"]) for k in ("median", "q1", "q3")}}
    return out


def quartile(row: dict, q: str) -> float:
    """A row's quartile (``q1``/``q3``): from its ``measurement``, or as results written before it had one kept it
    (``measured_q1_us``)."""
    return (row.get("measurement") or {}).get(q) or row[f"measured_{q}_us"]


def fastest_peer(rows: list[dict]) -> str | None:
    peers = {k: r for k, r in timed(rows).items() if not k.startswith("tvm")}
    return min(peers, key=lambda k: peers[k]["measured_us"]) if peers else None


def summary_line(run: dict) -> str:
    t = timed(run["rows"])
    best = fastest_peer(run["rows"])
    ranked = sorted(t, key=lambda k: t[k]["measured_us"])
    mine = "tvm-python" if "tvm-python" in t else "tvm"
    ratio = f"{mine} / {best} = {t[mine]['measured_us'] / t[best]['measured_us']:.2f}" if best and mine in t else ""
    return (f"{run['threads']} thread(s), {run['order']}: " + " < ".join(ranked) + f"; {ratio}; load "
            + " ".join(f"{v:.2f}" for v in run["load"]))


def swapped(rankings: list[tuple]) -> str:
    """The pairs of runtimes whose order differs between two rankings."""
    if len(rankings) < 2:
        return ""
    a, b = rankings[0], rankings[1]
    pairs = [f"{x}/{y}" for i, x in enumerate(a) for y in a[i + 1:] if x in b and y in b and b.index(x) > b.index(y)]
    return f" (swapped: {', '.join(pairs)})" if pairs else ""


def tvm_place(runs: list[dict]) -> str:
    """TVM's module called from Python against the fastest peer, per order: the like-for-like answer."""
    out = []
    for r in runs:
        t = timed(r["rows"])
        best = fastest_peer(r["rows"])
        mine = "tvm-python" if "tvm-python" in t else "tvm"
        if best and mine in t:
            out.append(f"{r['order']}: TVM {t[mine]['measured_us'] / t[best]['measured_us']:.2f}× {best}")
    return ", ".join(out)


def report(doc: dict) -> str:
    """Per thread count: each runtime's median over both orders, its ratio to the fastest peer, and whether the
    orders agree on the ranking."""
    from tvm_nas.console import fmt_duration

    tuned = (doc.get("table_tuning") or {}).get("tune_seconds")
    own = doc["tuning"].get("tuning_seconds")
    spent = ("" if tuned is None else f"; tuning: the table {fmt_duration(tuned)}"
             + ("" if own is None else f" + this net's own {fmt_duration(own)}"))
    lines = [f"{doc['space']} {doc['net']} on {doc['target']} (TVM {doc['tvm_version']}; kernels: "
             f"{doc['tuning']['reused'] + doc['tuning']['tuned']} tuned of {doc['tuning']['total']}{spent}); {load()}"]
    for threads in sorted({r["threads"] for r in doc["runs"]}):
        runs = [r for r in doc["runs"] if r["threads"] == threads]
        rankings = [tuple(sorted(timed(r["rows"]), key=lambda k: timed(r["rows"])[k]["measured_us"])) for r in runs]
        names = sorted({k for r in runs for k in timed(r["rows"])},
                       key=lambda k: statistics.median(timed(r["rows"])[k]["measured_us"] for r in runs
                                                       if k in timed(r["rows"])))
        med = {k: statistics.median(timed(r["rows"])[k]["measured_us"] for r in runs if k in timed(r["rows"]))
               for k in names}
        peers = [k for k in names if not k.startswith("tvm")]  # tvm-python is TVM too
        best = peers[0] if peers else None
        lines.append(f"  {threads} thread(s), orders {'/'.join(r['order'] for r in runs)}: ranking "
                     f"{'the same in both' if len(set(rankings)) == 1 else 'DIFFERS between orders'}"
                     + swapped(rankings) + "; " + tvm_place(runs))
        for k in names:
            spread = [timed(r["rows"])[k] for r in runs if k in timed(r["rows"])]
            iqr = f"{min(quartile(s, 'q1') for s in spread):,.1f}–{max(quartile(s, 'q3') for s in spread):,.1f}"
            setting = spread[0]["setting"]
            lines.append(f"    {k:16s} {med[k]:10,.1f} µs ({iqr})  "
                         + (f"{med[k] / med[best]:.2f}× {best}" if best else "") + f"  [{setting}]")
        for r in runs:
            lines.append(f"    load during {r['order']}: " + " ".join(f"{v:.2f}" for v in r["load"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
