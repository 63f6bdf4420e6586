"""Peak memory and time of one search step: binarized (weight / architecture) vs one network vs all paths.

Each case runs in its own process so that one case's allocations cannot hide another's:

* ``single``   — a training step of the largest single network of the space (largest candidate per block);
* ``weight``   — a binarized weight step of the supernet (one path per block: the same largest ops);
* ``arch``     — a binarized architecture step (two paths per block, gate gradients, Adam on α, rescale);
* ``all``      — a DARTS-style step where every block runs the softmax-weighted sum of all its candidates.

Memory is the peak growth during a step above the memory before it: resident set size sampled every 0.2 ms on
CPU, ``torch.cuda.max_memory_allocated`` on a GPU. Usage::

    python bench/search_memory.py --space proxyless-cifar --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

CASES = ("single", "weight", "arch", "all")


def largest_ops(space) -> list[str]:
    """The most expensive candidate of every block (expansion × kernel area; never ``zero``)."""
    from tvm_nas.ops import parse_op

    def cost(op):
        s = parse_op(op)
        return s.expand * s.kernel * s.kernel if s.kind == "mbconv" else -1

    return [max(b.candidates, key=cost) for b in space.blocks()]


class PeakRSS:
    """Samples the process's resident set size in a thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 2e-4):
        import psutil

        self.proc, self.interval, self.peak, self._stop = psutil.Process(), interval, 0, False

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def run_case(case: str, space_name: str, batch_size: int, steps: int, device: str) -> dict:
    """Run one case in this process and return its peak step memory (MiB) and median step time (ms)."""
    import gc

    import torch
    import torch.nn.functional as F

    from tvm_nas.network import Network
    from tvm_nas.search.loss import pair_probs
    from tvm_nas.search.supernet import Supernet
    from tvm_nas.space import load_space

    torch.manual_seed(0)
    space = load_space(space_name)
    ops = largest_ops(space)
    c, r = space.input.channels, space.input.resolution
    x = torch.randn(batch_size, c, r, r, device=device)
    y = torch.randint(0, space.num_classes, (batch_size,), device=device)
    if case == "single":
        net = Network(space, ops).to(device)
        params, arch_opt = list(net.parameters()), None
    else:
        net = Supernet(space).to(device)
        params = net.weight_parameters()
        arch_opt = torch.optim.Adam(net.arch_parameters(), lr=1e-3, betas=(0.0, 0.999))
        # a stand-in latency vector per block (the step's memory does not depend on the values)
        vectors = [torch.arange(1.0, len(m.candidates) + 1, device=device) for m in net.mixed_ops]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True)

    def step():
        net.train()
        net.zero_grad(set_to_none=True)
        if case in ("single", "weight", "all"):
            if case == "weight":
                net.fix(ops)  # the same code path as a sampled path; the largest ops for a fair comparison
            elif case == "all":
                net.set_mode("all")
            F.cross_entropy(net(x), y).backward()
            opt.step()
            return
        for m, op in zip(net.mixed_ops, ops, strict=True):  # arch: the largest op active, another inactive
            m.sample_two()
            m.active = m.candidates.index(op)
            m.inactive = next(i for i in range(len(m.candidates)) if i != m.active)
        for p in params:
            p.requires_grad_(False)
        ce = F.cross_entropy(net(x), y)
        lat = sum(pair_probs(m.alpha, m.pair()) @ v for m, v in zip(net.mixed_ops, vectors, strict=True))
        (ce + 1e-3 * lat).backward()
        for p in params:
            p.requires_grad_(True)
        net.set_alpha_grads()
        arch_opt.step()
        net.rescale_alphas()

    peaks, times = [], []
    for _ in range(steps):
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            peaks.append(torch.cuda.max_memory_allocated() - before)
        else:
            with PeakRSS() as mon:
                before = mon.proc.memory_info().rss
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            peaks.append(mon.peak - before)
    n_params = sum(p.numel() for p in params)
    return {"case": case, "peak_mib": max(peaks) / 2**20, "step_ms": 1e3 * sorted(times)[len(times) // 2],
            "params": n_params}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", default="proxyless-cifar")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default="bench/results", help="folder for the JSON results")
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.case, args.space, args.batch_size, args.steps, args.device)))
        return 0

    results = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for case in CASES:
        cmd = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), "--case", case]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["single"]
    print(f"space {args.space}, batch {args.batch_size}, {args.device}, {args.threads} thread(s); "
          f"ratios against the largest single network ({base['peak_mib']:.1f} MiB, {base['step_ms']:.1f} ms)")
    print(f"{'step':<8} {'peak MiB':>9} {'x memory':>9} {'ms':>9} {'x time':>8}")
    for case, r in results.items():
        r["memory_ratio"] = r["peak_mib"] / base["peak_mib"]
        r["time_ratio"] = r["step_ms"] / base["step_ms"]
        print(f"{case:<8} {r['peak_mib']:>9.1f} {r['memory_ratio']:>9.2f} {r['step_ms']:>9.1f} "
              f"{r['time_ratio']:>8.2f}")
    ok = results["weight"]["memory_ratio"] <= 1.5
    print(f"binarized weight step within 1.5x of the single network's memory: {'yes' if ok else 'NO'}; "
          f"all-paths step: {results['all']['memory_ratio']:.2f}x")
    name = f"search_memory-{args.space}-b{args.batch_size}-{args.device}-t{args.threads}.json"
    from tvm_nas.io import atomic_write_json

    path = atomic_write_json(Path(args.out) / name, {"space": args.space, "batch_size": args.batch_size,
                                                     "device": args.device, "threads": args.threads,
                                                     "results": results})
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
