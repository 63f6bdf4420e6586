"""What running `main` as machine code instead of Relax VM bytecode buys, side by side on the same kernels.

    .venv/bin/python bench/vm_mode.py [--space tiny-cifar] [--arch A.arch.json] [--target host] [--rounds 15]

Lowers one net (default: the space's reference) once, applies the target's tuning database, and builds it twice:
``exec_mode="bytecode"`` (the Relax VM interprets `main` instruction by instruction: what tvm-nas shipped until
pipeline version 3) and ``exec_mode="compiled"`` (`main` lowered to one native function that calls the kernels;
what it ships now). Both libraries are exported and loaded as a user loads them, checked against PyTorch, then
timed in interleaved rounds (the order alternates round by round) two ways: TVM's ``time_evaluator`` on
``invoke_stateful`` (what the latency table and ``validate`` use) and a Python loop calling ``vm["main"](x)`` on a
device tensor (what ``compare`` and the peers bench use). Prints each mode's median (IQR), the ratio of medians and
the range of the per-round ratios, with the load average. Writes ``bench/results/vm_mode-<space>-<net>.json``.
Run it with nothing else on the machine; the kernels are identical, so only the calls between them differ.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nasbench import load  # noqa: E402  (the load average, as every bench prints it)

MODES = ("bytecode", "compiled")
PY_CALLS = 200  # calls per Python-loop sample
SAMPLES = 5  # samples per mode and way each round


def quartiles(v) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return float(med), float(q1), float(q3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="tiny-cifar")
    ap.add_argument("--arch", help="an *.arch.json (default: the space's reference net)")
    ap.add_argument("--target", default="host")
    ap.add_argument("--logs-dir", default=str(ROOT / "tuning_logs"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", help="default bench/results/vm_mode-<space>-<net>.json")
    args = ap.parse_args()

    from tvm_nas.backend.target import set_runtime_threads
    from tvm_nas.targets import load_target

    spec = load_target(args.target)
    set_runtime_threads(spec)  # before anything starts TVM's thread pool

    import tvm
    from tvm import relax

    from tvm_nas.arch import load_architecture, reference_arch
    from tvm_nas.backend.measure import export
    from tvm_nas.backend.pipeline import build
    from tvm_nas.backend.target import to_tvm_target
    from tvm_nas.backend.trust import open_library
    from tvm_nas.deploy.compile import lower_network, schedule_tasks
    from tvm_nas.deploy.model import build_network_from_arch, example_input, torch_forward
    from tvm_nas.io import atomic_write_json
    from tvm_nas.space import load_space

    space = load_space(args.space)
    arch = load_architecture(args.arch) if args.arch else reference_arch(space)
    net = "reference" if not args.arch else Path(args.arch).name.removesuffix(".arch.json")
    out = Path(args.out or ROOT / "bench" / "results" / f"vm_mode-{space.name}-{net}.json")
    model = build_network_from_arch(arch, None, 0)
    x = example_input(arch.input_shape, 0)
    expected = torch_forward(model, x)
    tgt = to_tvm_target(spec)
    fused = lower_network(model, arch, None, tgt, prepack=True)
    db, tasks = schedule_tasks(fused, spec, args.logs_dir, 0)
    print(f"{space.name} {net} ({' '.join(arch.ops)}) on {spec.name}, {spec.threads} thread(s): {tasks.total} "
          f"kernels, {len(tasks.reused)} tuned in the database, {len(tasks.untuned)} untuned; {load()}", flush=True)

    dev = tvm.cpu()
    vms, errs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            path = Path(tmp) / f"{mode}.so"
            export(build(fused, tgt, db, vm_mode=mode), path, spec)  # recorded as built here, as compile does
            vms[mode] = relax.VirtualMachine(open_library(path), dev)
            got = vms[mode]["main"](tvm.runtime.tensor(x, dev))
            got = got[0] if not hasattr(got, "numpy") else got
            errs[mode] = float(np.abs(got.numpy() - expected).max())
    xt = tvm.runtime.tensor(x, dev)
    ev = spec.evaluator
    samples = {(m, w): [] for m in MODES for w in ("evaluator", "python")}
    per_round = {w: [] for w in ("evaluator", "python")}
    t0 = time.time()
    for r in range(args.rounds):
        medians = {}
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            vm = vms[mode]
            vm.set_input("main", xt)
            f = vm.time_evaluator("invoke_stateful", dev, number=ev.number, repeat=SAMPLES,
                                  min_repeat_ms=ev.min_repeat_ms)
            s = list(np.asarray(f("main").results) * 1e6)
            fn = vm["main"]
            p = []
            for _ in range(SAMPLES):
                t = time.perf_counter()
                for _ in range(PY_CALLS):
                    fn(xt)
                p.append((time.perf_counter() - t) / PY_CALLS * 1e6)
            samples[(mode, "evaluator")] += s
            samples[(mode, "python")] += p
            medians[(mode, "evaluator")], medians[(mode, "python")] = float(np.median(s)), float(np.median(p))
        for w in per_round:
            per_round[w].append(medians[("compiled", w)] / medians[("bytecode", w)])
    doc = {"schema": 1, "space": space.name, "net": net, "ops": arch.ops, "target": spec.name,
           "threads": spec.threads, "rounds": args.rounds, "seconds": round(time.time() - t0, 1),
           "load": list(os.getloadavg()), "max_abs_err": errs, "tvm_version": tvm.__version__, "ways": {}}
    lines = []
    for w in ("evaluator", "python"):
        b, c = quartiles(samples[("bytecode", w)]), quartiles(samples[("compiled", w)])
        lo, hi = min(per_round[w]), max(per_round[w])
        doc["ways"][w] = {"bytecode_us": b, "compiled_us": c, "ratio": c[0] / b[0],
                          "round_ratios": per_round[w]}
        lines.append(f"  {w:9}  bytecode {b[0]:9.1f} µs ({b[1]:.1f}–{b[2]:.1f})  compiled {c[0]:9.1f} µs "
                     f"({c[1]:.1f}–{c[2]:.1f})  compiled/bytecode {c[0] / b[0]:.3f} (rounds {lo:.3f}–{hi:.3f})")
    print("\n".join(lines))
    print(f"outputs against PyTorch: {errs}; {args.rounds} rounds in {doc['seconds']} s; {load()}")
    atomic_write_json(out, doc)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
