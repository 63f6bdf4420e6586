"""Every net of a space trained alone with the short recipe, once per search seed: what a finalist stage would see.

Random search (:mod:`bench.search_quality`) trains the nets it draws with the short recipe (the ground truth's
recipe cut to :data:`~search_quality.SHORT_EPOCHS` epochs) on the split of its search seed and keeps the best by
validation accuracy. That accuracy is a cheap ranking of nets trained alone; this bench records it for every net
of the space and every search seed, so that any strategy that trains a few nets briefly (random search at any
compute, or finalists proposed by the search's probabilities) can be scored offline against the ground truth with
numbers of the kind it would have seen (training is seeded, but float rounding differs between CPUs and a short
training amplifies it, so a net random search trained on another machine scores about as here, not exactly).

Results go to ``bench/results/short_recipe-<space>.json``, one entry per (net, seed), written under a lock after
each training (``--commit`` commits it), so a stopped run resumes and shards (``--shard i/n``) share the file.

    python bench/short_recipe.py --data CIFAR_DIR [--shard 0/2] [--commit]
    python bench/short_recipe.py --data CIFAR_DIR --report [VARIANT ...]    # the finalist strategies, offline
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nasbench import RECIPE, all_nets, canonical, key, load, save  # noqa: E402
from search_quality import (  # noqa: E402
    SEEDS,
    SHORT_EPOCHS,
    ground_truth,
    in_top10,
    measured_pick,
    meets,
    random_order,
    recovered_table,
    score,
    short_images,
    short_train,
)

FINALISTS = (2, 3, 4, 6)


def results_path(space) -> Path:
    return ROOT / "bench" / "results" / f"short_recipe-{space.name}.json"


def read(path: Path, space) -> dict:
    from tvm_nas.io import read_json

    if not path.exists():
        return {"schema": 1, "space": space.name, "space_hash": space.hash, "epochs": SHORT_EPOCHS,
                "images": RECIPE["images"], "runs": {}}
    doc = read_json(path, "short-recipe results")
    if doc.get("space_hash") != space.hash or doc.get("epochs") != SHORT_EPOCHS:
        sys.exit(f"{path}: written for another space or recipe; move it away")
    return doc


def net_probabilities(space, probabilities) -> dict[str, float]:
    """Each net's probability under the search's final α (the product of its blocks' probabilities, summed over
    the spellings of one net)."""
    import itertools
    import math

    out: dict[str, float] = {}
    blocks = space.blocks()
    for ops in itertools.product(*(b.candidates for b in blocks)):
        p = math.prod(probabilities[i][b.candidates.index(op)]
                      for i, (b, op) in enumerate(zip(blocks, ops, strict=True)))
        k = key(canonical(space, list(ops)))
        out[k] = out.get(k, 0.0) + p
    return out


def finalist_picks(entry: dict, space, table, gt: dict, short: dict, k: int) -> dict[str, str]:
    """The net each finalist strategy keeps for one search with `k` nets trained briefly: the nets are those whose
    measured latency meets the budget (a finalist is measured before it is trained: seconds against minutes), the
    best of the `k` by short-recipe validation accuracy on the search's split.

    * ``alpha``: the `k` most probable under the search's α;
    * ``alpha-full``: the `k` most probable among the `2k` slowest;
    * ``fullest``: the `k` slowest, α unused (what filling the budget alone gives);
    * ``run+alpha``: the run's own measured choice, then the `k`-1 most probable others."""
    budget, seed = entry["budget_us"], entry["seed"]
    pool = [g for g in gt.values() if meets(g, budget)]
    p = net_probabilities(space, entry["probabilities"])
    by_p = sorted(pool, key=lambda g: -p[key(g["ops"])])
    slow = sorted(pool, key=lambda g: -g["us"])
    run = gt[key(canonical(space, measured_pick(entry, space, table, gt, 3.0)))]
    sets = {"alpha": by_p[:k],
            "alpha-full": sorted(slow[:2 * k], key=lambda g: -p[key(g["ops"])])[:k],
            "fullest": slow[:k],
            "run+alpha": [run] + [g for g in by_p if g is not run][:k - 1]}
    return {name: key(max(nets, key=lambda g: short[f"{key(g['ops'])}/{seed}"])["ops"]) for name, nets in sets.items()}


def random_pick(entry: dict, space, table, short: dict, n: int) -> str:
    """Random search's pick with `n` nets trained briefly: its own order, the best by short-recipe validation."""
    order = random_order(space, table, entry["budget_us"], entry["seed"])[:n]
    return key(max(order, key=lambda ops: short[f"{key(ops)}/{entry['seed']}"]))


def report(space, variant: str, table, gt: dict, short: dict) -> None:
    import statistics

    from tvm_nas.io import read_json

    res = read_json(ROOT / "bench" / "results" / f"search_quality-{space.name}-{variant}.json", "search quality")
    # the searches on a seed whose split the short recipe was trained on (later seeds have no short figures)
    rows = [r for r in res["searches"].values() if r.get("probabilities") and r["seed"] in SEEDS]
    per_net = short_images(RECIPE["images"])

    def line(label, picks):
        scored = [score(gt[k]["ops"], r["budget_us"], gt, space) for r, k in zip(rows, picks, strict=True)]
        reg = [100 * s["regret"] for s in scored]
        top = sum(map(in_top10, scored))
        print(f"  {label:58s} regret median {statistics.median(reg):5.2f}, worst {max(reg):5.2f}; top 10% {top} of "
              f"{len(rows)}; " + " ".join(f"{x:.2f}" for x in reg))

    print(f"{space.name} / {variant}: {len(rows)} searches; a short training = {per_net} images, a search "
          f"{statistics.median(r['images'] for r in rows):.0f}")
    line("the run's measured choice (no net trained)", [key(canonical(space, measured_pick(r, space, table, gt, 3.0)))
                                                        for r in rows])
    for k in FINALISTS:
        picks = [finalist_picks(r, space, table, gt, short, k) for r in rows]
        for name in picks[0]:
            line(f"search + {k} finalists ({name})", [p[name] for p in picks])
        n = [(r["images"] + k * per_net) // per_net for r in rows]
        line(f"random search, same compute ({min(n)}-{max(n)} nets)",
             [random_pick(r, space, table, short, m) for r, m in zip(rows, n, strict=True)])
    n = [r["images"] // per_net for r in rows]
    line(f"random search, the search's compute ({min(n)}-{max(n)} nets)",
         [random_pick(r, space, table, short, m) for r, m in zip(rows, n, strict=True)])
    line("every net meeting the budget trained briefly (the short recipe's own ceiling)",
         [key(max((g for g in gt.values() if meets(g, r["budget_us"])),
                  key=lambda g: short[f"{key(g['ops'])}/{r['seed']}"])["ops"]) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder with train/ (the ground truth's training images)")
    ap.add_argument("--space", default="tiny-cifar")
    ap.add_argument("--shard", default="0/1", help="i/n: train every n-th (net, seed) from the i-th")
    ap.add_argument("--commit", action="store_true")
    ap.add_argument("--report", metavar="VARIANT", nargs="*",
                    help="score finalist strategies on these search_quality variants' stored searches (default "
                         "hinge-uniform mul-uniform) and stop")
    ap.add_argument("--logs-dir", default=str(ROOT / "tuning_logs"))
    args = ap.parse_args()

    import torch
    from filelock import FileLock

    from tvm_nas.data import load_data
    from tvm_nas.space import load_space

    torch.set_num_threads(1)
    space = load_space(args.space)
    i, n = (int(v) for v in args.shard.split("/"))
    path = results_path(space)
    if args.report is not None:
        from tvm_nas.io import read_json
        from tvm_nas.profile.model import LatencyModel
        from tvm_nas.profile.table import table_path
        from tvm_nas.targets import load_target

        spec = load_target("host")
        doc = read_json(ROOT / "bench" / "results" / f"nasbench-{space.name}.json", "ground truth")
        table = recovered_table(space, doc, LatencyModel.load(table_path(args.logs_dir, spec.name, space.name),
                                                              space=space, target=spec))
        gt = ground_truth(space, doc, table)
        short = {t: r["val_accuracy"] for t, r in read(path, space)["runs"].items()}
        missing = len(all_nets(space)) * len(SEEDS) - len(short)
        if missing:
            sys.exit(f"{path}: {missing} trainings still to run")
        for v in args.report or ["hinge-uniform", "mul-uniform"]:
            report(space, v, table, gt, short)
        return
    todo = [(ops, seed) for seed in SEEDS for ops in all_nets(space)][i::n]
    data = load_data(f"imagefolder:{args.data}/train", space, max_samples=RECIPE["images"], seed=0)
    for ops, seed in todo:
        tag = f"{key(ops)}/{seed}"
        with FileLock(str(path) + ".lock"):
            if tag in read(path, space)["runs"]:
                continue
        t = time.time()
        acc = short_train(space, ops, data, seed)
        run = {"ops": ops, "seed": seed, "val_accuracy": acc, "images": short_images(len(data)),
               "seconds": round(time.time() - t, 1), "load_after": os.getloadavg()[0]}
        with FileLock(str(path) + ".lock"):
            doc = read(path, space)
            doc["runs"][tag] = run
            save(path, doc, args.commit, f"bench/short_recipe: {space.name} {len(doc['runs'])}/"
                                         f"{len(all_nets(space)) * len(SEEDS)} trainings")
        print(f"{tag}: val {100 * acc:.2f} in {run['seconds']:.0f} s; {load()}", flush=True)


if __name__ == "__main__":
    main()
