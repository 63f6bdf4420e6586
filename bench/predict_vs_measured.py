"""Predicted (latency-table sum) vs measured latency of random architectures, and TVM vs its peers.

    .venv/bin/python bench/predict_vs_measured.py [--space proxyless-cifar] [--target host] [--n 10]

Each architecture is compiled with the target's database (profiled first if the table is missing, with
``--profile-trials``), measured with the target's evaluator, and timed in PyTorch eager and ONNX Runtime with the
same thread count. Prints the median and worst absolute prediction error (%) and the TVM / ONNX Runtime and
TVM / PyTorch latency ratios; writes ``bench/results/predict_vs_measured-<space>-<target>-t<threads>-n<N>.json``.
glibc's malloc makes PyTorch eager timings erratic: the script re-executes itself with large malloc thresholds.
"""
# ruff: noqa: E402  (the imports follow the thread settings, which must come first)

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
if any(os.environ.get(k) != v for k, v in _MALLOC.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC})

import numpy as np
from rich.console import Console
from rich.table import Table

from tvm_nas.arch import (
    Arch,
    arch_document,
)
from tvm_nas.deploy.compile import ONNX_FILE, compile_arch
from tvm_nas.deploy.model import build_network_from_arch, example_input
from tvm_nas.deploy.peers import time_onnxruntime, time_torch
from tvm_nas.io import atomic_write_json
from tvm_nas.profile.profiler import profile
from tvm_nas.profile.table import table_path
from tvm_nas.space import load_space
from tvm_nas.targets import load_target


def random_archs(space, n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[b.candidates[int(rng.integers(len(b.candidates)))] for b in space.blocks()] for _ in range(n)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="proxyless-cifar")
    p.add_argument("--target", default="host")
    p.add_argument("--logs-dir", default="tuning_logs")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-trials", type=int, default=0, help="budget if the table must be profiled first")
    p.add_argument("--results", default="bench/results")
    args = p.parse_args()
    console = Console(stderr=True)
    space, spec = load_space(args.space), load_target(args.target)
    if not table_path(args.logs_dir, spec.name, space.name).is_file():
        profile(space, spec, trials=args.profile_trials, logs_dir=args.logs_dir, console=console)
    rows: list[dict] = []
    name = f"predict_vs_measured-{space.name}-{spec.name}-t{spec.threads or 'default'}-n{args.n}.json"
    result = Path(args.results) / name
    with tempfile.TemporaryDirectory() as tmp:
        for i, ops in enumerate(random_archs(space, args.n, args.seed)):
            a = Arch(space, ops, arch_document(space, ops, None, None), None, f"random-{i}")
            out = Path(tmp) / a.label
            m = compile_arch(a, spec, out=out, logs_dir=args.logs_dir, console=console)
            model = build_network_from_arch(a)
            x = example_input(a.input_shape)
            ev = spec.evaluator
            torch_us = time_torch(model, x, spec.threads, ev.number, ev.repeat)
            ort_us = time_onnxruntime(out / ONNX_FILE, x, spec.threads, ev.number, ev.repeat)
            pred, meas = m["predicted_latency_us"], m["measured_latency_us"]
            rows.append({"arch": a.label, "ops": ops, "predicted_us": pred, "measured_us": meas,
                         "error_pct": 100 * (pred - meas) / meas, "tasks_reused": m["tuning"]["reused"],
                         "tasks": m["tuning"]["total"], "pytorch_us": torch_us, "onnxruntime_us": ort_us,
                         "tvm_over_onnxruntime": meas / ort_us, "tvm_over_pytorch": meas / torch_us})
            atomic_write_json(result, {"space": space.name, "target": spec.name, "threads": spec.threads,
                                       "partial": True, "rows": rows})  # a killed run keeps what it measured
    err = np.abs([r["error_pct"] for r in rows])
    summary = {"median_abs_error_pct": float(np.median(err)), "worst_abs_error_pct": float(err.max()),
               "median_tvm_over_onnxruntime": float(np.median([r["tvm_over_onnxruntime"] for r in rows])),
               "median_tvm_over_pytorch": float(np.median([r["tvm_over_pytorch"] for r in rows]))}
    t = Table(title=f"{space.name} on {spec.name}: predicted vs measured (µs, median)")
    for c in ("arch", "predicted", "measured", "error %", "reused/tasks", "PyTorch", "ORT", "TVM/ORT", "TVM/PyTorch"):
        t.add_column(c, justify="left" if c == "arch" else "right")
    for r in rows:
        t.add_row(r["arch"], f"{r['predicted_us']:.0f}", f"{r['measured_us']:.0f}", f"{r['error_pct']:+.1f}",
                  f"{r['tasks_reused']}/{r['tasks']}", f"{r['pytorch_us']:.0f}", f"{r['onnxruntime_us']:.0f}",
                  f"{r['tvm_over_onnxruntime']:.2f}", f"{r['tvm_over_pytorch']:.2f}")
    Console().print(t)
    s = summary
    Console().print(f"prediction error: median {s['median_abs_error_pct']:.1f}%, "
                    f"worst {s['worst_abs_error_pct']:.1f}%; "
                    f"TVM/ONNX Runtime {s['median_tvm_over_onnxruntime']:.2f}×, "
                    f"TVM/PyTorch {s['median_tvm_over_pytorch']:.2f}× (medians)")
    atomic_write_json(result, {"space": space.name, "target": spec.name,
                                                 "threads": spec.threads, "summary": summary, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
