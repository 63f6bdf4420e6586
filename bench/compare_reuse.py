"""What the run's compare stage saves by reusing the compile stage's builds, measured on a finished run.

    .venv/bin/python bench/compare_reuse.py RUN_DIR [--rounds 2]

RUN_DIR is a finished `tvm-nas run` directory. Each round times, back to back and alternating which goes first:
the old compare stage (compile the searched net and the reference again, then time the peers) and the current
one (`compare_built`: TVM's figures from the compile stage's manifests, only the peers timed). Prints the medians
with their spread, the ratio, and what the ratio means for the whole run (its other stages' recorded seconds),
with the load average beside every figure. Writes bench/results/compare_reuse-<space>-<target>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from tvm_nas.arch import load_architecture
from tvm_nas.deploy.compare import Built, compare, compare_built
from tvm_nas.io import atomic_write_json
from tvm_nas.targets import load_target


def _load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    run = Path(args.run_dir)
    state = json.loads((run / "run.json").read_text())
    d, cfg = state["done"], state["config"]
    spec = load_target(cfg["target"])
    arch = run / d["search"]["arch"]
    weights = run / d["train"]["weights"]
    ref = next(n for n in d["baselines"]["nets"].values() if n["kind"] == "reference")
    ref_arch = load_architecture(run / ref["arch"])
    ref_arch.label = "reference (mbconv_k3_e6)"
    ref_build = run / "build" / "baselines" / Path(ref["arch"]).name.removesuffix(".arch.json")

    def old() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            compare([arch], [spec], baselines=True, logs_dir=cfg["logs_dir"], trials=0, out=tmp,
                    weights=[weights], untuned=cfg["trials"] == 0)

    def new() -> None:
        compare_built([Built(load_architecture(arch), spec, weights, run / "build" / spec.name),
                       Built(ref_arch, spec, run / ref["weights"], ref_build)])

    times: dict[str, list[float]] = {"recompile": [], "reuse": []}
    for i in range(args.rounds):
        order = [("recompile", old), ("reuse", new)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            print(f"round {i + 1} {name:9}: {times[name][-1]:6.1f} s   ({_load()})", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    other = sum(v["seconds"] for k, v in d.items() if k != "compare")
    print(f"compare stage: recompile {med['recompile']:.1f} s (range {min(times['recompile']):.1f}-"
          f"{max(times['recompile']):.1f}), reuse {med['reuse']:.1f} s (range {min(times['reuse']):.1f}-"
          f"{max(times['reuse']):.1f}); reuse/recompile = {med['reuse'] / med['recompile']:.2f}x   ({_load()})")
    before, after = other + med["recompile"], other + med["reuse"]
    print(f"whole run (other stages {other:.0f} s as recorded): {before:.0f} s -> {after:.0f} s, "
          f"{after / before:.2f}x")
    out = Path(__file__).parent / "results" / f"compare_reuse-{cfg['space']}-{cfg['target']}.json"
    atomic_write_json(out, {"run": str(run), "rounds": times, "median_s": med, "other_stages_s": other,
                            "whole_run_ratio": after / before, "load": os.getloadavg()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
