"""Does the supernet rank nets better the longer it trains? Kendall τ against the ground truth, epoch by epoch.

With ``weight_sampling: uniform`` (the run's default) every weight step trains a path drawn uniformly, so the shared
weights, and the ranking they give, do not depend on α or the budget. This bench trains the product's own search
(:class:`ProxylessSearch`, the run's settings, the ground truth's training images and split) for ``--epochs`` and at
each epoch of ``--at`` scores every net of the space with the shared weights on the search's validation split
(batch-norm statistics re-estimated per net, as the run's report does), then:

* **τ** — Kendall τ between those accuracies and the ground truth's test accuracies (every net trained alone);
* **top-5 overlap** — how many of the ground truth's 5 best nets are among the supernet's 5 best;
* **α's net** — the net the product derives from α at that epoch (budget halfway, filling it, 0% and 3% margin)
  and its regret against the ground truth.

One file per seed, ``bench/results/supernet_ranking-<space>-s<seed>.json``, rewritten after every scored epoch; a
start carries on from the first seed not finished (a seed cut short is trained again). Two processes with
different ``--seeds`` use both cores. ``--report`` prints every file's trajectory with the load average.

    python bench/supernet_ranking.py --data CIFAR_DIR [--seeds 0 1 2] [--epochs 16] [--at 2 4 8 12 16]
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

from nasbench import RECIPE, key, load, save, summarize  # noqa: E402
from search_quality import budgets, ground_truth, score, search_config  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def top_overlap(shared: dict, gt: dict, k: int = 5) -> int:
    best = set(sorted(gt, key=lambda n: -gt[n]["test"])[:k])
    return len(best & set(sorted(shared, key=lambda n: -shared[n])[:k]))


def run_seed(space, table, data, gt: dict, budget: float, seed: int, epochs: int, at: list[int], path: Path) -> dict:
    import numpy as np

    from tvm_nas.search import ProxylessSearch
    from tvm_nas.search.derive import derive
    from tvm_nas.search.ranking import kendall_tau, supernet_accuracies

    config = search_config("default", budget, seed).model_copy(update={"epochs": epochs})
    doc = {"schema": 1, "space": space.name, "seed": seed, "budget_us": round(budget, 3), "epochs": epochs,
           "config": config.model_dump(mode="json"), "points": []}

    class Scored(ProxylessSearch):
        def _print_epoch(self, r: dict) -> None:
            super()._print_epoch(r)
            if self.epoch_ not in at:
                return
            t = time.time()
            shared = supernet_accuracies(self.supernet_, data, {k: g["ops"] for k, g in gt.items()},
                                         config.val_fraction, config.seed)
            probs = [p.detach().cpu().numpy().astype(np.float64) for p in self.supernet_.probs()]
            picks = {f"fill_m{m:g}": score(derive(probs, space, table, budget, True, m, True)["ops"], budget, gt, space)
                     for m in (0.0, 3.0)}
            point = {"epoch": self.epoch_, "tau": round(kendall_tau([shared[k] for k in gt], [gt[k]["test"]
                                                                                                for k in gt]), 4),
                     "top5_overlap": top_overlap(shared, gt), "shared_mean": round(statistics.mean(shared.values()), 4),
                     "shared_spread": round(max(shared.values()) - min(shared.values()), 4),
                     "val_accuracy_supernet": r["val_accuracy"], "picks": picks,
                     "top_probability": [round(float(max(p)), 4) for p in probs],
                     "shared": {k: round(v, 5) for k, v in shared.items()}, "scoring_s": round(time.time() - t, 1),
                     "load": os.getloadavg()[0]}
            doc["points"].append(point)
            save(path, doc, False, "")
            print(f"seed {seed} epoch {self.epoch_}/{epochs}: τ {point['tau']:+.3f}, top-5 overlap "
                  f"{point['top5_overlap']}, shared accuracy {point['shared_mean']:.3f} (spread "
                  f"{point['shared_spread']:.3f}); α's net {key(picks['fill_m3']['ops'])} regret "
                  f"{100 * picks['fill_m3']['regret']:.2f} (3% margin), {100 * picks['fill_m0']['regret']:.2f} "
                  f"(none); {load()}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        Scored(space, table, data, config, Path(tmp) / "search").fit()
    doc["seconds"] = round(time.time() - t, 1)
    doc["finished"] = True
    save(path, doc, False, "")
    return doc


def report(space_name: str) -> None:
    files = sorted(RESULTS.glob(f"supernet_ranking-{space_name}-s*.json"))
    if not files:
        return
    from tvm_nas.io import read_json

    docs = [read_json(f, "supernet ranking") for f in files]
    print(f"{space_name}: supernet ranking against the ground truth, {len(docs)} seeds; {load()}")
    epochs = sorted({p["epoch"] for d in docs for p in d["points"]})
    for e in epochs:
        pts = [p for d in docs for p in d["points"] if p["epoch"] == e]
        taus = [p["tau"] for p in pts]
        r3 = [p["picks"]["fill_m3"]["regret"] for p in pts]
        r0 = [p["picks"]["fill_m0"]["regret"] for p in pts]
        print(f"  epoch {e:3d} ({len(pts)} seeds): τ median {statistics.median(taus):+.3f} "
              f"(range {min(taus):+.3f}..{max(taus):+.3f}), top-5 overlap "
              f"{statistics.median(p['top5_overlap'] for p in pts):g}, shared accuracy "
              f"{statistics.median(p['shared_mean'] for p in pts):.3f}; α's net regret (budget halfway, filled) "
              f"{100 * statistics.median(r3):.2f} with the 3% margin, {100 * statistics.median(r0):.2f} with none; "
              f"load at scoring {statistics.median(p['load'] for p in pts):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="folder with train/ (the ground truth's training images)")
    ap.add_argument("--space", default="tiny-cifar")
    ap.add_argument("--target", default="host")
    ap.add_argument("--logs-dir", default=str(ROOT / "tuning_logs"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--at", type=int, nargs="+", default=[2, 4, 8, 12, 16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="print what is done and stop")
    args = ap.parse_args()
    if args.report:
        return report(args.space)
    if not args.data:
        sys.exit("--data is required (or --report)")

    import torch

    from tvm_nas.data import load_data
    from tvm_nas.io import read_json
    from tvm_nas.profile.model import LatencyModel
    from tvm_nas.profile.table import table_path
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    torch.set_num_threads(args.threads)
    space, spec = load_space(args.space), load_target(args.target)
    doc = read_json(RESULTS / f"nasbench-{space.name}.json", "ground truth")
    table = LatencyModel.load(table_path(args.logs_dir, spec.name, space.name), space=space, target=spec)
    gt = ground_truth(space, doc, table)
    budget = dict(budgets(space, doc, table))[0.5]
    print(f"budget {budget:.1f} µs (halfway); noise floor {100 * summarize(doc)['noise_sd']:.2f} points; {load()}")
    data = load_data(f"imagefolder:{args.data}/train", space, max_samples=RECIPE["images"], seed=0)
    for seed in args.seeds:
        path = RESULTS / f"supernet_ranking-{space.name}-s{seed}.json"
        if path.exists() and read_json(path, "supernet ranking").get("finished"):
            continue
        run_seed(space, table, data, gt, budget, seed, args.epochs, sorted(set(args.at)), path)
    report(space.name)


if __name__ == "__main__":
    main()
