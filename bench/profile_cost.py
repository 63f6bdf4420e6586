"""What profiling costs and buys: dedup figures, the budget -> latency curve, the farm, and the full tuned table.

    python bench/profile_cost.py dedup  [--target host]                          # dedup of the shipped spaces
    python bench/profile_cost.py curve  [--space tiny] [--time-budget 10m] [--kernels N]
                                        [--configs r16-p128-g2 r32-p256-g2]      # expected net latency per tuning
                                                                                 #   time, a fresh database per config
    python bench/profile_cost.py farm   [--trials 48] [--boards 3]               # candidates/min, 3 loopback servers
                                                                                 #   vs 1, interleaved
    python bench/profile_cost.py table  [--space proxyless-cifar] [--time-budget 60m] [--threads 1 2]
                                        [--arch runs/<search>/final.arch.json]   # full table, then TVM vs ONNX
                                                                                 #   Runtime vs PyTorch

The full goal of issue 11 on a quiet machine: `table --space proxyless-cifar --time-budget 60m --threads 1 2 --arch
<a searched cifar net>` (two tables, one per thread count: about 2 x 75 min, then the comparisons). Without --arch the
table's fastest net (a latency-only pick, no accuracy search) stands in for the searched net; `--baselines` adds the
reference net (all mbconv_k3_e6). Every figure is printed with the load average beside it: on a shared machine
absolute seconds are noise, compare runs taken side by side. Results: bench/results/profile_cost-<mode>-<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tvm_nas.backend import tuning
from tvm_nas.backend.budget import kernel_usage, op_frequency
from tvm_nas.backend.target import is_gpu, to_tvm_target
from tvm_nas.console import fmt_duration, parse_duration
from tvm_nas.io import atomic_write_json
from tvm_nas.profile.profiler import lower_op
from tvm_nas.space import load_space
from tvm_nas.targets import load_target

RESULTS = Path(__file__).parent / "results"
console = Console()


def load() -> str:
    return "load avg " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def kernels(space_name: str, target):
    """(space, unique kernels, usage per kernel, seconds to lower) of a space on a target."""
    space = load_space(space_name)
    tvm_target = to_tvm_target(target)
    t0 = time.perf_counter()
    by_op = {k.key: tuning.extract_tasks(lower_op(k, tvm_target, prepack=not is_gpu(target)), tvm_target)
             for k in space.unique_op_keys()}
    unique = tuning.dedup(by_op)
    return space, unique, kernel_usage(unique, op_frequency(space)), by_op, time.perf_counter() - t0


# -- dedup ---------------------------------------------------------------------------------------------------------
def mode_dedup(args) -> dict:
    target = load_target(args.target)
    rows = []
    for s in args.spaces:
        space, unique, _, by_op, secs = kernels(s, target)
        n_tasks = sum(len(v) for v in by_op.values())
        rows.append({"space": s, "candidate_ops": len(space.op_keys()), "unique_ops": len(by_op), "tasks": n_tasks,
                     "unique_tasks": len(unique), "task_dedup_ratio": n_tasks / len(unique), "lowering_s": secs})
    t = Table(title=f"deduplication on {target.name} ({load()})")
    for c in ("space", "candidate ops", "unique ops", "tasks", "unique tasks", "task dedup", "lowering s"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r["space"], str(r["candidate_ops"]), str(r["unique_ops"]), str(r["tasks"]), str(r["unique_tasks"]),
                  f"{r['task_dedup_ratio']:.2f}x", f"{r['lowering_s']:.0f}")
    console.print(t)
    return {"dedup": rows}


# -- budget -> latency curve ---------------------------------------------------------------------------------------
def _config(text: str) -> tuning.Settings:
    """`r32-p256-g2`: round size 32, population 256, 2 genetic iterations."""
    vals = {part[0]: int(part[1:]) for part in text.split("-")}
    return tuning.Settings(jobs=None, round_size=vals.get("r"), population=vals.get("p"),
                           genetic_iters=vals.get("g", 2))


def mode_curve(args) -> dict:
    from tvm_nas.backend.tuner import tune_budgeted

    target = load_target(args.target)
    space, unique, usage, _, _ = kernels(args.space, target)
    if args.kernels:  # the most used kernels only: a short run still gets past the first round of each
        unique = dict(sorted(unique.items(), key=lambda kv: -usage[kv[0]])[:args.kernels])
    budget = parse_duration(args.time_budget)
    out = {"space": args.space, "target": target.name, "time_budget_s": budget, "kernels": len(unique), "runs": []}
    console.print(f"{args.space}: {len(unique)} kernels; {len(args.configs)} configs x {fmt_duration(budget)} "
                  f"({load()})")
    for cfg in args.configs:
        points, state = [], {}

        def on_round(e, points=points, state=state):
            state[e.task] = e.best_us * usage[e.task] if e.best_us else 0
            if len(state) == len(unique):  # the curve starts once every kernel has been measured once
                points.append({"s": round(e.elapsed_s, 1), "trials": e.spent_trials,
                               "expected_us": round(sum(state.values()), 2), "load": os.getloadavg()[0]})

        with tempfile.TemporaryDirectory() as d:
            res = tune_budgeted(unique, target, d, time_budget_s=budget, usage=usage, settings=_config(cfg),
                                on_round=on_round, say=lambda m: None)
        out["runs"].append({"config": cfg, "trials": res.trials, "rounds": res.rounds, "seconds": res.seconds,
                            "expected_us": res.expected_us_after, "curve": points})
        console.print(f"  {cfg}: {res.trials} trials in {res.rounds} rounds, {res.seconds:.0f} s -> expected net "
                      f"{res.expected_us_after:.1f} µs ({len(points)} curve points; {load()})")
    t = Table(title=f"budget -> expected net latency (µs), {args.space} on {target.name}")
    t.add_column("config")
    marks = [budget * f for f in (0.25, 0.5, 0.75, 1.0)]
    for m in marks:
        t.add_column(f"at {fmt_duration(m)}", justify="right")
    for r in out["runs"]:
        cells = []
        for m in marks:
            before = [p["expected_us"] for p in r["curve"] if p["s"] <= m]
            cells.append(f"{before[-1]:.1f}" if before else "-")
        t.add_row(r["config"], *cells)
    console.print(t)
    return out


# -- the curve of a profile run, from its log -----------------------------------------------------------------------
_ROUND = (r"\[(\d+)/(\d+)\] (\S+): round (\d+), (\d+) trials, best ([\d.]+) µs.*?; (\d+)(?:/\d+)? trials, "
          r"eta (\S+?)(?:;|\s|$)")


def _seconds(eta: str) -> float:
    import re

    h = re.fullmatch(r"(\d+)h(\d+)m", eta)
    if h:
        return int(h[1]) * 3600 + int(h[2]) * 60
    m = re.fullmatch(r"(?:(\d+)m)?(\d+)s", eta)
    return int(m[1] or 0) * 60 + int(m[2])


def mode_curve_log(args) -> dict:
    """The budget -> latency curve of a `tvm-nas profile --time-budget` run, rebuilt from its progress lines
    (tables written since the curve is recorded hold it in meta.timing.tune_curve; this reads older runs)."""
    import re

    text = " ".join(Path(args.log).read_text().split())  # the console wraps long lines
    budget = parse_duration(args.time_budget)
    target = load_target(args.target)
    _, unique, usage, _, _ = kernels(args.space, target)
    keys = list(unique)
    best: dict[str, float] = {}
    points = []
    for m in re.finditer(_ROUND, text):
        k = keys[int(m[1]) - 1]
        best[k] = min(best.get(k, float("inf")), float(m[6]))
        points.append([round(budget - _seconds(m[8]), 1), int(m[7]), sum(b * usage[q] for q, b in best.items()),
                       len(best)])
    full = next((i for i, p in enumerate(points) if p[3] == len(keys)), None)
    t = Table(title=f"{args.space} on {target.name}: expected net latency while tuning ({load()})")
    for c in ("minute", "trials", "kernels measured", "expected µs of a net"):
        t.add_column(c, justify="right")
    every5 = {min(range(len(points)), key=lambda i, s=s: abs(points[i][0] - s)) for s in range(0, int(budget) + 1, 300)}
    marks = sorted(every5 | ({full} if full is not None else set()) | {len(points) - 1})
    for i in marks:
        p = points[i]
        t.add_row(f"{p[0] / 60:.1f}", str(p[1]), f"{p[3]}/{len(keys)}", f"{p[2]:.0f}")
    console.print(t)
    if full is not None:
        console.print(f"every kernel measured after {points[full][0] / 60:.1f} min at {points[full][2]:.0f} µs; "
                      f"{points[-1][2]:.0f} µs at the end ({points[-1][2] / points[full][2]:.2f}x)")
    return {"kernels": len(keys), "points": points, "all_measured_at": full}


# -- farm ----------------------------------------------------------------------------------------------------------
def _start_farm(n: int, logdir: Path):
    """A real tracker and `n` real servers under key `bench` on 127.0.0.1 (the tests' own helper)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import start_farm

    port, _, procs = start_farm("bench", n, logdir, fork=True)
    return port, procs


def mode_farm(args) -> dict:
    """Candidates measured per minute by the tuning runner with N loopback servers vs 1, interleaved."""
    from tvm_nas.backend.tuner import tune_budgeted
    from tvm_nas.targets import TargetSpec

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import _stop as stop

    host = load_target("host")
    space, unique, usage, _, _ = kernels("tiny", host)
    chosen = dict(sorted(unique.items(), key=lambda kv: -usage[kv[0]])[:args.kernels])
    rows = []
    for rep in range(args.repeats):
        for n in (1, args.boards) if rep % 2 == 0 else (args.boards, 1):
            with tempfile.TemporaryDirectory() as d:
                port, procs = _start_farm(n, Path(d))
                try:
                    spec = TargetSpec.model_validate({
                        "name": "bench-farm", "tvm": {"kind": "llvm", "mcpu": "auto"}, "threads": 1,
                        "runner": {"kind": "rpc", "tracker_host": "127.0.0.1", "tracker_port": port, "key": "bench"},
                        "evaluator": host.evaluator.model_dump()})
                    res = tune_budgeted(chosen, spec, Path(d) / "db", trials=args.trials, usage=usage,
                                        settings=tuning.Settings(round_size=args.trials // len(chosen)),
                                        say=lambda m: None)
                finally:
                    for p in procs:
                        stop(p)
            rate = res.trials / res.seconds * 60
            rows.append({"servers": n, "trials": res.trials, "seconds": res.seconds, "per_min": rate,
                         "load": os.getloadavg()})
            console.print(f"  {n} server(s): {res.trials} candidates in {res.seconds:.0f} s = {rate:.1f}/min "
                          f"({load()})")
    import statistics

    one = [r["per_min"] for r in rows if r["servers"] == 1]
    many = [r["per_min"] for r in rows if r["servers"] == args.boards]
    ratio = statistics.median(many) / statistics.median(one)
    console.print(f"farm: {args.boards} loopback servers measure {ratio:.2f}x the candidates per minute of one "
                  f"(medians of {len(one)}; spread {min(many) / max(one):.2f}-{max(many) / min(one):.2f}x). "
                  f"Loopback servers share this machine's {os.cpu_count()} cores with the builder and the search, "
                  f"so this is a floor for real boards. {load()}")
    return {"rows": rows, "ratio": ratio}


# -- the full table and the deployed nets --------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "tvm_nas", *args], text=True, capture_output=True)
    if r.returncode:
        raise SystemExit(f"tvm-nas {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r


def mode_table(args) -> dict:
    logs = Path(args.logs_dir)
    out = {"space": args.space, "time_budget": args.time_budget, "targets": {}}
    targets = list(args.targets)
    if args.threads:  # this machine's CPU at each thread count: each is its own target with its own database
        base = load_target("host")
        folder = Path(tempfile.mkdtemp())
        targets = []
        for n in args.threads:
            d = {"name": f"host-t{n}", "tvm": {"kind": "llvm", "mcpu": "auto"}, "runner": "local", "threads": n,
                 "evaluator": base.evaluator.model_dump()}
            targets.append(str(folder / f"host-t{n}.yaml"))
            Path(targets[-1]).write_text(json.dumps(d))  # JSON is YAML
    for target in targets:
        spec = load_target(target)
        table = logs / spec.name / f"{args.space}.latency.json"
        if args.no_profile:
            if not table.is_file():
                raise SystemExit(f"--no-profile: {table} does not exist")
            profile_s = json.loads(table.read_text()).get("timing", {})
            console.print(f"using the table {table} ({profile_s})")
        else:
            t0 = time.perf_counter()
            console.print(f"profile {args.space} on {spec.name}, --time-budget {args.time_budget} ({load()})")
            r = _cli("profile", "--space", args.space, "--target", target, "--time-budget", args.time_budget,
                     "--logs-dir", str(logs))
            profile_s = time.perf_counter() - t0
            tail = [ln for ln in r.stderr.splitlines() if ln.startswith("tuning:")]
            console.print(f"  table in {fmt_duration(profile_s)}; {tail[-1] if tail else ''} ({load()})")
        archs = list(args.arch or ["fastest"])  # compare needs one architecture; --baselines adds the reference
        archs = [_fastest_arch(args.space, logs, spec.name, Path(tempfile.mkdtemp())) if a == "fastest" else a
                 for a in archs]
        for n in args.compare_threads or [spec.threads]:
            run_spec, run_target = (spec, target) if n == spec.threads else _at_threads(spec, n, logs)
            js = Path(tempfile.mkdtemp()) / "compare.json"
            cmp_args = ["compare", "--target", run_target, "--baselines",
                        "--logs-dir", str(logs), "--json", str(js)]
            for a in archs:
                cmp_args += ["--arch", str(a)]
            console.print(f"compare on {run_spec.name} ({n} threads, {load()})")
            _cli(*cmp_args)
            rows = json.loads(js.read_text())
            rows = rows.get("rows", rows) if isinstance(rows, dict) else rows
            out["targets"][run_spec.name] = {"profile_s": profile_s, "threads": n, "tuned_for": spec.name,
                                             "rows": rows, "load_after": os.getloadavg()}
            _ratios(rows, run_spec)
    return out


def _at_threads(spec, n: int, logs: Path):
    """The same TVM target and schedules run with `n` threads: a target `<name>-t<n>` whose TVM target string is
    the tuned one (num-cores kept), with a copy of the tuned database. The schedules were tuned for
    `spec.threads` threads, so this measures what a user gets by running the shipped module with fewer."""
    import shutil

    from tvm_nas.backend import database as dbfile

    conf = json.loads(str(to_tvm_target(spec)))
    d = {"name": f"{spec.name}-t{n}", "tvm": {"kind": conf["kind"], "mcpu": conf.get("mcpu", "auto"),
                                               "num-cores": conf.get("num-cores", spec.threads)},
         "runner": "local", "threads": n, "evaluator": spec.evaluator.model_dump()}
    path = Path(tempfile.mkdtemp()) / f"{d['name']}.yaml"
    path.write_text(json.dumps(d))
    dest = logs / d["name"]
    dest.mkdir(parents=True, exist_ok=True)
    for f in (dbfile.WORKLOADS, dbfile.RECORDS, "target.json"):
        shutil.copyfile(logs / spec.name / f, dest / f)
    return load_target(str(path)), str(path)


def _fastest_arch(space_name: str, logs: Path, target: str, where: Path) -> Path:
    """The fastest net under the table (per-block argmin): a latency-only pick when no searched net is given."""
    from tvm_nas.arch import arch_document
    from tvm_nas.profile.table import LatencyTable

    space = load_space(space_name)
    table = LatencyTable.load(logs / target / f"{space_name}.latency.json", space=space)
    ops, _ = table.extremes(space)
    path = where / "fastest.arch.json"
    atomic_write_json(path, arch_document(space, ops, None, None))
    return path


def _ratios(rows: list[dict], spec) -> None:
    t = Table(title=f"{spec.name} ({spec.threads or 'default'} threads): TVM vs peers, µs ({load()})")
    for c in ("architecture", "tvm", "onnxruntime", "pytorch", "tvm/ort", "tvm/pytorch"):
        t.add_column(c, justify="right")
    by_arch: dict[str, dict] = {}
    for r in rows:
        by_arch.setdefault(r["architecture"], {})[r["runtime"]] = r["measured_us"]
    for a, v in by_arch.items():
        tvm, ort, pt = v.get("tvm"), v.get("onnxruntime"), v.get("pytorch")
        t.add_row(a, f"{tvm:.0f}" if tvm else "-", f"{ort:.0f}" if ort else "-", f"{pt:.0f}" if pt else "-",
                  f"{tvm / ort:.2f}x" if tvm and ort else "-", f"{tvm / pt:.2f}x" if tvm and pt else "-")
    console.print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("dedup")
    p.add_argument("--target", default="host")
    p.add_argument("--spaces", nargs="+", default=["proxyless-cifar", "proxyless-imagenet"])
    p = sub.add_parser("curve")
    p.add_argument("--target", default="host")
    p.add_argument("--space", default="tiny")
    p.add_argument("--time-budget", default="10m")
    p.add_argument("--configs", nargs="+", default=["r16-p128-g2", "r32-p256-g2", "r32-p512-g4"])
    p.add_argument("--kernels", type=int, default=0, help="tune only the N most used kernels (0: all)")
    p = sub.add_parser("curve-log")
    p.add_argument("--log", required=True, help="the stderr of a tvm-nas profile --time-budget run")
    p.add_argument("--space", default="proxyless-cifar")
    p.add_argument("--target", default="host")
    p.add_argument("--time-budget", required=True, help="the run's --time-budget")
    p = sub.add_parser("farm")
    p.add_argument("--boards", type=int, default=3)
    p.add_argument("--kernels", type=int, default=2)
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--repeats", type=int, default=2)
    p = sub.add_parser("table")
    p.add_argument("--space", default="proxyless-cifar")
    p.add_argument("--targets", nargs="+", default=["host"],
                   help="targets to profile and compare on (e.g. host and a 1-thread copy of it)")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="instead of --targets: this machine's CPU at these thread counts (e.g. 1 2), each tuned "
                        "with its own --time-budget")
    p.add_argument("--time-budget", default="60m")
    p.add_argument("--arch", action="append", help="searched architecture file(s) to compare, or 'fastest' "
                   "(the default: the table's fastest net, a latency-only pick)")
    p.add_argument("--no-profile", action="store_true", help="use the table already in --logs-dir")
    p.add_argument("--compare-threads", type=int, nargs="+", default=None,
                   help="also run the tuned module at these thread counts (e.g. 1 2) against peers at the same")
    p.add_argument("--logs-dir", default="tuning_logs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    result = {"dedup": mode_dedup, "curve": mode_curve, "farm": mode_farm, "table": mode_table,
              "curve-log": mode_curve_log}[args.mode](args)
    result.update(schema=2, mode=args.mode, args=vars(args), wall_s=time.perf_counter() - t0,
                  loadavg_end=os.getloadavg(), cpus=os.cpu_count())
    tag = {"curve": lambda: args.space, "table": lambda: args.space, "curve-log": lambda: args.space,
           "farm": lambda: f"b{args.boards}", "dedup": lambda: args.target}[args.mode]()
    out = RESULTS / f"profile_cost-{args.mode}-{tag}.json"
    atomic_write_json(out, result)
    console.print(f"written: {out} ({fmt_duration(result['wall_s'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
