"""Ground truth for a search space: every net trained alone, tested on held-out photographs, timed by TVM.

A NAS-Bench of our own for one space and one target. For each net of the space (``tiny-cifar``: 48 op lists, 39
distinct nets, since a skipped block may sit in either of two interchangeable positions):

* **train** — the product's own training loop (:func:`tvm_nas.train.train_network`, the recipe below), on a fixed
  subset of the training folder (the same images for every net), then top-1 accuracy on the whole test folder,
  which neither training nor any search ever sees. Every net is trained with seed 0; a spread of nets (every
  fifth by their order in the table) again with seeds 1 and 2, to measure the noise floor: the seed-to-seed
  standard deviation of a net's test accuracy;
* **measure** — every net compiled with the target's tuned database and timed interleaved under the measurement
  protocol, by ``tvm-nas validate`` on the list of all the nets (run it on a quiet machine: ``--phase measure``);
* **export** — the ground truth written beside the target's latency table
  (``<logs_dir>/<target>/<space>.groundtruth.json``), where ``tvm-nas run`` finds it and draws its front.

The benchmark resumes: the results file is rewritten atomically after every net, and a start finds what is done
there. ``--commit`` also commits the file to git after each net, so a session that ends mid-way leaves its nets
for the next machine. ``--shard 0/2`` and ``--shard 1/2`` split the trainings between two processes of one thread
each (about twice the nets an hour on two idle cores); they merge into the one file under a lock.
``--hours H`` stops cleanly after H hours. Which machine trained each net (CPU or GPU, its
name, torch threads) is recorded beside it.

Cost of the recipe on this project's 2-core development VM, one torch thread: 60-160 ms per batch of 128 images,
so 2-3 minutes a net on an idle core and about 2 hours for the 39 + 16 trainings (two shards). ``--all-seeds``
adds the other 31 nets' two noise seeds (62 trainings, 77 minutes on two shards), so that every net's accuracy is
a mean of three and the best net under a budget is not merely the luckiest seed.

    python bench/nasbench.py --data CIFAR_DIR [--phase train|measure|report] [--all-seeds] [--hours H] [--commit]

``CIFAR_DIR`` holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``: CIFAR-10 as an image folder (50,000
training and 10,000 test photographs), unpacked outside the repository.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

# The recipe: one for every net, short enough to train the whole space on a CPU, long enough that the nets
# differ by more than the noise floor (the report prints both).
RECIPE = {"images": 20000, "epochs": 10, "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4,
          "label_smoothing": 0.1, "val_fraction": 0.2}
NOISE_SEEDS = (1, 2)
NOISE_EVERY = 5  # every fifth distinct net of the space (8 of 39) is trained again with each noise seed


def load() -> str:
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def key(ops) -> str:
    return ",".join(ops)


def canonical(space, ops) -> list[str]:
    """The one spelling of a net (:func:`tvm_nas.space.canonical_ops`)."""
    from tvm_nas.space import canonical_ops

    return canonical_ops(space, ops)


def all_nets(space) -> list[list[str]]:
    """Every distinct net of the space, each once (:func:`canonical`): tiny-cifar's 48 op lists are 39 nets."""
    seen, out = set(), []
    for ops in itertools.product(*(b.candidates for b in space.blocks())):
        c = canonical(space, ops)
        if key(c) not in seen:
            seen.add(key(c))
            out.append(c)
    return out


def machine(device: str, threads: int) -> dict:
    import torch

    where = {"device": device, "host": platform.node(), "cpu": platform.processor() or platform.machine(),
             "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads}
    if device == "cuda":
        where["gpu"] = torch.cuda.get_device_name(0)
    return where


def read_results(path: Path, space, recipe: dict) -> dict:
    from tvm_nas.io import read_json

    if not path.exists():
        return {"schema": 1, "space": space.name, "space_hash": space.hash, "recipe": recipe, "nets": {},
                "latency": None}
    doc = read_json(path, "nasbench results")
    if doc.get("space_hash") != space.hash or doc.get("recipe") != recipe:
        sys.exit(f"{path}: written for another space or recipe; move it away or use --out")
    for k in list(doc["nets"]):  # a net trained under another spelling joins its canonical entry
        c = key(canonical(space, doc["nets"][k]["ops"]))
        if c != k:
            e = doc["nets"].pop(k)
            dest = doc["nets"].setdefault(c, {"ops": canonical(space, e["ops"]), "runs": []})
            for run in e["runs"]:
                if any(r["seed"] == run["seed"] for r in dest["runs"]):
                    dest.setdefault("same_net_again", []).append({"spelled": e["ops"], **run})
                else:
                    dest["runs"].append(run)
    return doc


def save(path: Path, doc: dict, commit: bool, message: str) -> None:
    from tvm_nas.io import atomic_write_json

    atomic_write_json(path, doc)
    if commit:
        for _ in range(10):  # another process may hold the index a moment
            r = subprocess.run(["git", "-C", str(ROOT), "commit", "-q", "-m", message, "--only", "--", str(path)],
                               capture_output=True, text=True)
            if r.returncode == 0 or "nothing to commit" in r.stdout + r.stderr:
                return
            if "index.lock" not in r.stderr:
                r2 = subprocess.run(["git", "-C", str(ROOT), "add", "--", str(path)], capture_output=True)
                if r2.returncode != 0:
                    break
            time.sleep(3)
        print(f"warning: could not commit {path}", file=sys.stderr)


def merge_run(path: Path, space, recipe: dict, ops: list[str], run: dict, commit: bool, message: str) -> dict:
    """Add one training to the results file under a lock, so that several shards can write to it."""
    from filelock import FileLock

    with FileLock(str(path) + ".lock"):
        doc = read_results(path, space, recipe)
        entry = doc["nets"].setdefault(key(ops), {"ops": ops, "runs": []})
        if not any(r["seed"] == run["seed"] for r in entry["runs"]):
            entry["runs"].append(run)
        save(path, doc, commit, message)
    return doc


def seed0_accuracy(entry: dict) -> float | None:
    """A net's seed-0 test accuracy (the recipe's first training), or None."""
    return next((r["test_accuracy"] for r in entry["runs"] if r["seed"] == 0), None)


def front_gap(doc: dict, ops) -> float:
    """How far a net's seed-0 test accuracy lies under the best of the nets measured at most as slow (0: on the
    accuracy-latency front, a contender at some budget). Nets not yet trained or timed come last."""
    e = doc["nets"].get(key(ops))
    us = ((e or {}).get("latency") or {}).get("measured_us")
    if not e or seed0_accuracy(e) is None or us is None:
        return float("inf")
    best = max(seed0_accuracy(o) for o in doc["nets"].values()
               if seed0_accuracy(o) is not None and ((o.get("latency") or {}).get("measured_us") or float("inf")) <= us)
    return best - seed0_accuracy(e)


def train_phase(args, space, doc: dict, path: Path) -> None:
    import numpy as np
    import torch

    from tvm_nas.config import TrainConfig
    from tvm_nas.data import load_data
    from tvm_nas.network import Network
    from tvm_nas.train import accuracy, train_network

    device = "cuda" if args.device == "cuda" else "cpu"
    torch.set_num_threads(args.threads)
    r = doc["recipe"]
    t0 = time.time()
    train = load_data(f"imagefolder:{args.data}/train", space, max_samples=r["images"], seed=0)
    test = load_data(f"imagefolder:{args.data}/test", space)
    print(f"data: {len(train)} training images ({train.describe().get('augment')}), {len(test)} test images, "
          f"decoded in {time.time() - t0:.0f} s; {load()}", flush=True)
    nets = all_nets(space)
    jobs = [(ops, 0) for ops in nets] + [(ops, s) for s in NOISE_SEEDS for ops in nets[::NOISE_EVERY]]
    if args.all_seeds:  # then every other net again, those nearest the front first
        spread = {key(ops) for ops in nets[::NOISE_EVERY]}
        rest = sorted((ops for ops in nets if key(ops) not in spread), key=lambda ops: front_gap(doc, ops))
        jobs += [(ops, s) for ops in rest for s in NOISE_SEEDS]
    shard, shards = args.shard
    deadline = time.time() + args.hours * 3600 if args.hours else None
    for j, (ops, seed) in enumerate(jobs):
        if j % shards != shard:
            continue
        doc = read_results(path, space, r)  # other shards may have added nets since
        entry = doc["nets"].get(key(ops), {"runs": []})
        if any(run["seed"] == seed for run in entry["runs"]):
            continue
        if deadline and time.time() > deadline:
            print("time is up; start again to continue", flush=True)
            return
        cfg = TrainConfig(epochs=r["epochs"], batch_size=r["batch_size"], lr=r["lr"], weight_decay=r["weight_decay"],
                          label_smoothing=r["label_smoothing"], val_fraction=r["val_fraction"], seed=seed)
        torch.manual_seed(seed)
        model = Network(space, ops)
        t = time.time()
        res = train_network(model, train, cfg, device=device)
        test_acc = accuracy(model, test, np.arange(len(test)))
        run = {"seed": seed, "test_accuracy": round(test_acc, 5), "val_accuracy": round(res["val_accuracy"], 5),
               "seconds": round(time.time() - t, 1), "machine": machine(device, args.threads),
               "load_after": os.getloadavg()[0]}
        done = sum(len(e["runs"]) for e in read_results(path, space, r)["nets"].values()) + 1
        msg = f"bench/nasbench: {space.name} {done}/{len(jobs)} trainings ({key(ops)} seed {seed}: test {test_acc:.4f})"
        doc = merge_run(path, space, r, ops, run, args.commit, msg)
        print(f"[{done}/{len(jobs)}] {key(ops):<40} seed {seed} test {test_acc:.4f} val {res['val_accuracy']:.4f} "
              f"{time.time() - t:.0f} s; {load()}", flush=True)


def measure_phase(args, space, doc: dict, path: Path) -> None:
    """Every net compiled with the target's database and timed interleaved by the product's validate."""
    import tempfile

    from tvm_nas.arch import arch_document, write_arch
    from tvm_nas.deploy.validate import validate
    from tvm_nas.profile.model import LatencyModel
    from tvm_nas.profile.table import table_path
    from tvm_nas.targets import load_target

    spec = load_target(args.target)
    tpath = table_path(args.logs_dir, spec.name, space.name)
    if not tpath.is_file():
        sys.exit(f"{tpath}: profile the space first: tvm-nas profile --space {space.name} --target {args.target} "
                 f"--logs-dir {args.logs_dir} --time-budget 20m")
    table = LatencyModel.load(tpath, space=space, target=spec)
    print(f"measuring {len(all_nets(space))} nets on {spec.name}; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        archs = [write_arch(Path(tmp) / f"net{i:02d}.arch.json", arch_document(space, ops, None, table))
                 for i, ops in enumerate(all_nets(space))]
        t = time.time()
        v = validate(space, spec, n=0, archs=archs, logs_dir=args.logs_dir, out=Path(tmp) / "validate")
    rows = {key(r["ops"]): r for r in v["nets"]}
    doc["latency"] = {"target": spec.name, "table_hash": table.hash, "load_before": load(),
                      "seconds": round(time.time() - t), "summary": v.get("summary")}
    for k, e in doc["nets"].items():
        r = rows.get(k)
        if r:
            t = r["measurement"]  # this file's own keys (the nets timed before validate wrote only `measurement`)
            e["latency"] = {"measured_us": r["measured_us"], "measured_q1": t["q1"], "measured_q3": t["q3"],
                            "stable": t["stable"], "predicted_us": r["predicted_us"]}
    missing = [k for k in map(key, all_nets(space)) if k not in rows]
    if missing:
        print(f"warning: validate measured no figure for {len(missing)} nets", file=sys.stderr)
    save(path, doc, args.commit, f"bench/nasbench: {space.name} measured on {spec.name}")


def export_phase(args, space, doc: dict) -> None:
    """The ground truth beside the target's table, where `tvm-nas run` draws its front in the report."""
    from tvm_nas.groundtruth import SCHEMA, GroundTruth, groundtruth_path
    from tvm_nas.io import atomic_write_json

    nets = []
    for e in doc["nets"].values():
        accs = [r["test_accuracy"] for r in e["runs"]]
        lat = (e.get("latency") or {}).get("measured_us")
        if accs and lat:
            nets.append({"ops": e["ops"], "test_accuracy": statistics.mean(accs), "seeds": len(accs),
                         "test_sd": statistics.stdev(accs) if len(accs) > 1 else None, "measured_us": lat})
    if not nets:
        sys.exit("no net has both a test accuracy and a measured latency: run --phase train and --phase measure")
    gt = GroundTruth.model_validate({
        "schema": SCHEMA, "space": space.name, "space_hash": space.hash, "target": doc["latency"]["target"],
        "recipe": doc["recipe"], "data": "CIFAR-10 (bench/nasbench.py)", "noise_sd": summarize(doc)["noise_sd"],
        "nets": nets})
    path = groundtruth_path(args.logs_dir, gt.target, space.name)
    atomic_write_json(path, gt.model_dump(mode="json", by_alias=True))
    print(f"{path}: {len(nets)} nets")


def summarize(doc: dict) -> dict:
    """Per net: mean and spread of test accuracy; the noise floor; the spread between nets."""
    rows = []
    for k, e in doc["nets"].items():
        accs = [r["test_accuracy"] for r in e["runs"]]
        if not accs:
            continue
        lat = e.get("latency") or {}
        rows.append({"net": k, "seeds": len(accs), "test_mean": statistics.mean(accs),
                     "test_sd": statistics.stdev(accs) if len(accs) > 1 else None,
                     "seed0": seed0_accuracy(e),
                     "measured_us": lat.get("measured_us")})
    sds = [r["test_sd"] for r in rows if r["test_sd"] is not None]
    seed0 = [r["seed0"] for r in rows if r["seed0"] is not None]
    return {"rows": sorted(rows, key=lambda r: -r["test_mean"]),
            "noise_sd": statistics.median(sds) if sds else None,  # the typical seed-to-seed sd of one net
            "between_sd": statistics.stdev(seed0) if len(seed0) > 1 else None,
            "range": (min(seed0), max(seed0)) if seed0 else None}


def report(doc: dict) -> None:
    s = summarize(doc)
    print(f"{doc['space']}: {len(s['rows'])} nets trained; recipe {doc['recipe']}; {load()}")
    print(f"{'net':<42} {'seeds':>5} {'test acc':>17} {'measured µs':>12}")
    for r in s["rows"]:
        sd = f" ± {100 * r['test_sd']:.2f}" if r["test_sd"] is not None else "       "
        lat = f"{r['measured_us']:.1f}" if r["measured_us"] else "-"
        print(f"{r['net']:<42} {r['seeds']:>5} {100 * r['test_mean']:>9.2f}{sd} {lat:>12}")
    if s["noise_sd"] is not None:
        print(f"noise floor (median seed-to-seed sd of one net): {100 * s['noise_sd']:.2f} points; "
              f"between nets (sd of seed-0 accuracies): {100 * s['between_sd']:.2f} points; "
              f"range {100 * s['range'][0]:.2f}-{100 * s['range'][1]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="folder with train/ and test/ image folders (CIFAR-10)")
    ap.add_argument("--space", default="tiny-cifar")
    ap.add_argument("--target", default="host")
    ap.add_argument("--logs-dir", default=str(ROOT / "tuning_logs"))
    ap.add_argument("--phase", choices=("train", "measure", "export", "report"), default="train",
                    help="train every net; measure them with TVM (quiet machine); export the ground truth beside "
                         "the target's table for the run's report; report")
    ap.add_argument("--out", help="results file (default bench/results/nasbench-<space>.json)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--hours", type=float, help="stop after this many hours (resume later)")
    ap.add_argument("--commit", action="store_true", help="git-commit the results file after every net")
    ap.add_argument("--all-seeds", action="store_true",
                    help="after the recipe's trainings, train every other net with the noise seeds too (nearest the "
                         "accuracy-latency front first), so that every net's accuracy is a mean of 3 seeds")
    ap.add_argument("--shard", default="0/1", type=lambda v: tuple(int(x) for x in v.split("/")),
                    help="I/N: train every N-th job from the I-th, so N processes (one core each) share the space; "
                         "they merge into the one results file under a lock")
    args = ap.parse_args()

    from tvm_nas.space import load_space

    space = load_space(args.space)
    path = Path(args.out) if args.out else RESULTS / f"nasbench-{space.name}.json"
    doc = read_results(path, space, RECIPE)
    if args.phase == "train":
        if not args.data:
            sys.exit("--data: the folder holding train/ and test/")
        train_phase(args, space, doc, path)
    elif args.phase == "measure":
        measure_phase(args, space, doc, path)
    elif args.phase == "export":
        export_phase(args, space, doc)
    report(doc)


if __name__ == "__main__":
    main()
