"""Where do the 2× modes of small TVM modules at 2 threads come from? One fresh process per configuration.

    PYTHONPATH=. .venv/bin/python bench/thread_modes.py [--space tiny] [--rounds 3] [--configs a,b,...]

Builds the space's reference net (TVM default schedules, or the target database with ``--logs-dir``) once, then
times it in a fresh subprocess per configuration (thread environment, runtime thread-pool calls, ONNX Runtime or
PyTorch threads started first in the same process), interleaving the configurations round after round. Each child
reports every repeat (mean of 10 runs), so modes within one process and between processes are both visible.
Prints median, IQR, the share of repeats in the slow mode (> 1.5× the fastest decile) and the load average.
Writes ``bench/results/thread_modes-<space>.json``. About 2 minutes with the defaults.
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

# name -> (environment, child actions)
CONFIGS = {
    "unset": ({}, []),
    "t1": ({"TVM_NUM_THREADS": "1"}, []),
    "t2": ({"TVM_NUM_THREADS": "2"}, []),
    "t2-nobind": ({"TVM_NUM_THREADS": "2", "TVM_BIND_THREADS": "0"}, []),
    "t2-excl0": ({"TVM_NUM_THREADS": "2", "TVM_EXCLUDE_WORKER0": "1"}, []),
    "t2-spin0": ({"TVM_NUM_THREADS": "2", "TVM_THREAD_POOL_SPIN_COUNT": "0"}, []),
    "t2-late": ({}, ["late_env"]),  # variable set after the pool started: what set_runtime_threads did
    "t2-config": ({}, ["config_threadpool"]),  # runtime.config_threadpool(1, 2) after the pool started
    "t2-config-pin": ({}, ["config_pin"]),  # config_threadpool(-2, 2, ["0", "1"]): one core per worker
    "t2+ort-spin": ({"TVM_NUM_THREADS": "2"}, ["ort_spin"]),
    "t2+ort-nospin": ({"TVM_NUM_THREADS": "2"}, ["ort_nospin"]),
    "t2+torch": ({"TVM_NUM_THREADS": "2"}, ["torch"]),
    "t2+torch1": ({"TVM_NUM_THREADS": "2"}, ["torch1"]),
}
DEFAULT = ",".join(CONFIGS)


def build(space: str, logs_dir: str | None, out: Path) -> tuple[Path, Path, list[int]]:
    """Compile the reference net to ``out/model.so`` (and its ONNX file); returns paths and input shape."""
    from tvm_nas.arch import reference_arch
    from tvm_nas.backend import measure, pipeline
    from tvm_nas.backend.target import to_tvm_target
    from tvm_nas.deploy.model import build_network_from_arch, example_input
    from tvm_nas.deploy.onnx import export_onnx
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    spec = load_target("host")
    a = reference_arch(load_space(space))
    model = build_network_from_arch(a)
    x = example_input(a.input_shape)
    export_onnx(model, x, out / "model.onnx")
    tgt = to_tvm_target(spec)
    fused = pipeline.lower(pipeline.import_torch(model, a.input_shape), tgt, True)
    db = None
    if logs_dir:
        from tvm_nas.backend import tuning

        db = tuning.open_database(Path(logs_dir) / spec.name, spec)
    measure.export(pipeline.build(fused, tgt, db), out / "model.so", spec)
    return out / "model.so", out / "model.onnx", list(a.input_shape)


def child(cfg: dict) -> None:
    """Run in a fresh process: optional peers first, then TVM's time_evaluator; prints JSON samples."""
    import numpy as np

    acts = cfg["actions"]
    x = np.random.default_rng(0).standard_normal(cfg["shape"], dtype=np.float32)
    keep = []
    if "ort_spin" in acts or "ort_nospin" in acts:
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = 2, 1
        if "ort_nospin" in acts:
            o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        s = ort.InferenceSession(cfg["onnx"], o, providers=["CPUExecutionProvider"])
        for _ in range(200):
            s.run(None, {s.get_inputs()[0].name: x})
        keep.append(s)
    if "torch" in acts or "torch1" in acts:
        import torch

        torch.set_num_threads(1 if "torch1" in acts else 2)
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU()).eval()
        with torch.inference_mode():
            for _ in range(200):
                m(torch.from_numpy(x))
    import tvm
    from tvm import relax

    lib = tvm.runtime.load_module(cfg["lib"])
    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(lib, dev)
    vm.set_input("main", tvm.runtime.tensor(x, dev))
    vm.invoke_stateful("main")  # starts the pool
    if "late_env" in acts:
        os.environ["TVM_NUM_THREADS"] = "2"
    if "config_threadpool" in acts:
        tvm.get_global_func("runtime.config_threadpool")(1, 2)
    if "config_pin" in acts:
        tvm.get_global_func("runtime.config_threadpool")(-2, 2, ["0", "1"])
    f = vm.time_evaluator("invoke_stateful", dev, number=10, repeat=cfg["repeat"], min_repeat_ms=0)
    samples = [float(v) * 1e6 for v in f("main").results]
    if keep and "ort_spin" in acts:  # ORT used between TVM rounds, as compare does
        s = keep[0]
        for _ in range(3):
            for _ in range(50):
                s.run(None, {s.get_inputs()[0].name: x})
            samples += [float(v) * 1e6 for v in f("main").results]
    print(json.dumps({"samples": samples, "num_threads": int(tvm.runtime.num_threads())}))


def stats(v: list[float]) -> dict:
    import numpy as np

    a = np.asarray(v)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    fast = float(np.percentile(a, 10))
    return {"median": float(med), "iqr": float(q3 - q1), "p10": fast, "slow_share": float((a > 1.5 * fast).mean())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="tiny")
    p.add_argument("--logs-dir", default=None, help="compile with this logs dir's host database")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=60)
    p.add_argument("--configs", default=DEFAULT)
    p.add_argument("--results", default="bench/results")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    names = args.configs.split(",")
    with tempfile.TemporaryDirectory() as d:
        lib, onnx_path, shape = build(args.space, args.logs_dir, Path(d))
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(args.rounds):
            for n in names:
                env, acts = CONFIGS[n]
                cfg = {"lib": str(lib), "onnx": str(onnx_path), "shape": shape, "actions": acts,
                       "repeat": args.repeat}
                e = {k: v for k, v in os.environ.items() if not k.startswith("TVM_") or k == "TVM_NAS_CACHE"}
                e.update(env)
                load = os.getloadavg()[0]
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], env=e,
                                     capture_output=True, text=True, timeout=300)
                if out.returncode:
                    print(n, "failed:", out.stderr[-800:], file=sys.stderr)
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                res.update(stats(res["samples"]), load1=load, round=r)
                runs[n].append(res)
                print(f"round {r} {n:14s} threads={res['num_threads']} median {res['median']:7.1f} µs "
                      f"IQR {res['iqr']:6.1f} p10 {res['p10']:7.1f} slow {res['slow_share']:4.0%} "
                      f"(load {load:.2f})", flush=True)
    print(f"\n{args.space} reference net, {'tuned' if args.logs_dir else 'untuned'}: per configuration "
          f"(median of process medians [min..max], IQR of all repeats), load now {os.getloadavg()[0]:.2f}")
    summary = {}
    for n in names:
        if not runs[n]:
            continue
        meds = [x["median"] for x in runs[n]]
        allv = [s for x in runs[n] for s in x["samples"]]
        s = stats(allv)
        summary[n] = {"process_medians": meds, **s, "loads": [x["load1"] for x in runs[n]]}
        print(f"{n:14s} {sorted(meds)[len(meds) // 2]:7.1f} [{min(meds):.1f}..{max(meds):.1f}] IQR {s['iqr']:.1f} "
              f"slow share {s['slow_share']:.0%}")
    res = Path(args.results) / f"thread_modes-{args.space}{'-tuned' if args.logs_dir else ''}.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    from tvm_nas.io import atomic_write_json

    atomic_write_json(res, {"space": args.space, "tuned": bool(args.logs_dir), "rounds": args.rounds,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "configs": summary,
                            "raw": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
