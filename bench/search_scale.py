"""Search at scale: memory against folder size, one process against two (torchrun), CUDA against CPU.

Three measurements, each search a real ``tvm-nas search`` subprocess over a generated image folder (the ``tiny``
space, 16x16 inputs, images streamed by a DataLoader):

* **memory** — peak memory of a one-epoch search over 1,000 and over 10,000 images, each in a fresh process
  tree: the proportional set size (PSS: shared pages divided among the processes that share them) of the search
  process plus its DataLoader workers, summed and sampled every 50 ms; the ratio should stay near 1 because
  only the file list grows with the folder;
* **processes** — images/s of the weight steps in one process against two under torchrun (gloo), one torch
  thread per process, interleaved rounds, medians and spread; two cores bound this on the development machine;
* **cuda** — images/s on the GPU against the CPU when torch sees one, and of two GPU processes (nccl) when it
  sees two (skipped otherwise): the GPU check to run whenever a machine has GPUs.

The load average is printed beside every figure. Results go to ``bench/results/search_scale-<conditions>.json``.
A rerun takes about 5 minutes on 2 cores (plus 80 s once to profile the latency table)::

    python bench/search_scale.py [--rounds 3] [--sizes 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def load() -> str:
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def make_folder(root: Path, n: int, classes: int = 10, size: int = 40) -> Path:
    """``n`` generated JPEG images (smooth colour gradients with noise, ``size`` px) in ``classes`` folders."""
    import numpy as np
    from PIL import Image

    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(n)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        c = i % classes
        d = root / f"class{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        base = np.stack([np.sin(xx * (c + 1) * 3), np.cos(yy * (c + 2) * 2), xx * yy], -1)
        img = (base * 100 + 128 + rng.normal(0, 20, (size, size, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i:06d}.jpg", quality=90)
    done.touch()
    return root


def ensure_table(logs: Path) -> None:
    if not (logs / "host" / "tiny.latency.json").is_file():
        print(f"profiling the tiny space on host into {logs} (once, about 80 s)", flush=True)
        subprocess.run([sys.executable, "-m", "tvm_nas", "profile", "--space", "tiny", "--target", "host",
                        "--logs-dir", str(logs)], check=True, cwd=ROOT)


def search_cmd(folder: Path, logs: Path, out: Path, epochs: int, device: str = "cpu", threads: int = 1,
               workers: int = 1, nproc: int = 1) -> list[str]:
    args = ["search", "--space", "tiny", "--target", "host", "--logs-dir", str(logs), "--latency-ms", "0.1",
            "--data", f"imagefolder:{folder}", "--out", str(out), "--epochs", str(epochs), "--warmup-epochs", "0",
            "--batch-size", "64", "--device", device, "--threads", str(threads), "--workers", str(workers),
            "--quiet"]
    if nproc == 1:
        return [sys.executable, "-m", "tvm_nas", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(29500 + os.getpid() % 1000), "-m", "tvm_nas",
            *args]


def run_tree(cmd: list[str], env: dict, sample: bool = True) -> tuple[int, float]:
    """Run ``cmd``; returns (peak PSS in bytes of the process and all its descendants together, seconds)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    top, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [top, *top.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss if sample else 0
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            break
        peak = max(peak, total)
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return peak, time.perf_counter() - t0


def last_epoch(out: Path) -> dict:
    return json.loads((out / "log.jsonl").read_text().splitlines()[-1])


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[1000, 10000])
    ap.add_argument("--throughput-images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "tvm-nas-bench-search-scale"),
                    help="generated folders and the latency table (kept between reruns)")
    args = ap.parse_args()
    work = Path(args.work)
    logs = work / "logs"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    ensure_table(logs)
    import torch

    from tvm_nas.io import atomic_write_json

    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}

    # -- memory against folder size ------------------------------------------------------------------------
    mem = {}
    for n in args.sizes:
        folder = make_folder(work / f"folder-{n}", n)
        out = work / f"mem-{n}"
        shutil.rmtree(out, ignore_errors=True)
        peak, secs = run_tree(search_cmd(folder, logs, out, epochs=1, workers=2), env)
        rec = last_epoch(out)
        mem[n] = {"peak_pss_mib": round(peak / 2**20, 1), "seconds": round(secs, 1),
                  "train_images": rec["train_images"], "load_after": load()}
        print(f"memory: {n:>6} images: peak PSS {peak / 2**20:7.1f} MiB (search + 2 workers), {secs:5.1f} s  "
              f"[{load()}]", flush=True)
    small, large = (mem[n]["peak_pss_mib"] for n in args.sizes)
    result["memory"] = {"sizes": mem, "ratio_large_over_small": round(large / small, 3)}
    print(f"memory: ratio {args.sizes[1]}/{args.sizes[0]} images = {large / small:.3f} (goal <= 1.1)  [{load()}]")

    # -- one process against two -----------------------------------------------------------------------
    folder = make_folder(work / f"folder-{args.throughput_images}", args.throughput_images)
    cases = {"1 process": dict(nproc=1, threads=1), "2 processes (torchrun, gloo)": dict(nproc=2, threads=1)}
    if torch.cuda.is_available():
        cases["cuda, 1 process"] = dict(nproc=1, threads=1, device="cuda")
    if torch.cuda.device_count() >= 2:
        cases["cuda, 2 processes (torchrun, nccl)"] = dict(nproc=2, threads=1, device="cuda")
    rates: dict[str, list[float]] = {k: [] for k in cases}
    loads: dict[str, list[str]] = {k: [] for k in cases}
    for r in range(args.rounds):  # interleaved: every case once per round
        for name, kw in cases.items():
            out = work / "tp"
            shutil.rmtree(out, ignore_errors=True)
            run_tree(search_cmd(folder, logs, out, epochs=2, workers=1, **kw), env, sample=False)
            rate = last_epoch(out)["images_per_second"]  # epoch 2: workers and caches warm
            rates[name].append(rate)
            loads[name].append(load())
            print(f"round {r + 1}: {name:<30} {rate:8.1f} images/s  [{load()}]", flush=True)
    result["throughput"] = {k: {**spread(v), "loads": loads[k]} for k, v in rates.items()}
    base = statistics.median(rates["1 process"])
    for name, v in rates.items():
        print(f"throughput: {name:<30} median {statistics.median(v):8.1f} images/s (min {min(v):.1f}, "
              f"max {max(v):.1f}), x{statistics.median(v) / base:.2f} of one CPU process  [{load()}]")
    if not torch.cuda.is_available():
        print("cuda: skipped (torch sees no GPU)")
    result["load_end"] = load()
    tag = f"{os.cpu_count()}cpu" + ("-" + torch.cuda.get_device_name(0).replace(" ", "_") if
                                    torch.cuda.is_available() else "-nogpu")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"search_scale-{platform.node()}-{tag}.json"
    atomic_write_json(path, result)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
