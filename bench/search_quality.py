"""Search quality against ground truth: does the search find the best net under a budget, better than random?

Reads the ground-truth table of :mod:`bench.nasbench` (every net of the space trained alone, tested on held-out
photographs, timed by TVM) and scores searches in that space against it:

* **budgets** — 25%, 50% and 75% of the way from the space's fastest to its slowest net (measured latency when the
  ground truth has it, else the table's prediction);
* **searches** — for each budget, 3 search seeds, each the product's own search (:class:`ProxylessSearch`, the
  settings of a *variant* below) on the ground truth's training images, derived against the tuned table;
* **regret** — the best ground-truth test accuracy among the nets whose *measured* latency meets the budget,
  minus the searched net's ground-truth test accuracy (a net is one of the table's, so nothing is retrained);
* **rank** — the searched net's place among the nets that meet the budget (1 = best), and whether its measured
  latency meets the budget;
* **random search with the same compute** — nets whose predicted latency meets the budget, drawn without
  replacement, each trained with the short recipe (:data:`SHORT_EPOCHS` epochs) on the search's own training
  split, the best kept by accuracy on the search's validation split, until the images it trained on reach those
  the search processed (weight steps, plus both paths of every architecture step). Compute is counted in images,
  not seconds: this machine is shared, and seconds would measure the other jobs;
* **the supernet's ranking** — every net's validation accuracy with the search's shared weights against its
  ground-truth test accuracy, as a Kendall τ.

The noise floor (the median seed-to-seed spread of one net, from the ground truth) is printed beside every regret.
Results go to ``bench/results/search_quality-<space>-<variant>.json``, rewritten after every search; a start finds
what is done there (``--commit`` also commits it per search). The load average is printed beside each figure.
Random search does not depend on the variant, so its results live in ``search_quality-<space>-random.json`` and
every variant whose search processed the same number of images reuses them; ``--no-random`` leaves them for a
later start (two variants can then run side by side, one core each, or one variant's seeds in two processes).

With the multiplicative loss and every candidate trained alike, α does not depend on the budget (:func:`same_alpha`):
a seed is searched once, at the first budget, and derived at the others (``derived_from`` names the search).

    python bench/search_quality.py --data CIFAR_DIR [--variant default] [--hours H] [--commit] [--no-random]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nasbench import RECIPE, all_nets, canonical, key, load, save, summarize  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75)
SEEDS = (0, 1, 2)
SHORT_EPOCHS = 2
# 25/50/75% of the way from the fastest (20.9 µs) to the slowest (53.9 µs) net as first timed by nasbench.py
FIXED_BUDGETS = {"tiny-cifar": ((0.25, 29.172), (0.5, 37.398), (0.75, 45.624))}
# search settings under test; "default" is what `tvm-nas run` uses
VARIANTS = {
    "default": {},
    # the additive loss the run used before (CE + E[LAT]/T), at two α rates: 1e-3 the ProxylessNAS code's
    "arch-lr-1e-3": {"arch_lr": 1e-3, "loss": "add", "weight_sampling": "alpha"},
    "arch-lr-1e-2": {"arch_lr": 1e-2, "loss": "add", "weight_sampling": "alpha"},
    # no pull towards faster ops once the expected net meets the budget (the run's default α rate, 0.02)
    "hinge": {"loss": "hinge", "weight_sampling": "alpha"},
    # against the collapse onto `zero`: weight steps train every candidate alike (not the paths α favours)
    "hinge-uniform": {"loss": "hinge", "weight_sampling": "uniform"},
    # the multiplicative form pulls the expected net towards the budget from below too (on this ground truth a
    # net under the budget is usually beaten by a slower one that still meets it), with every candidate trained
    "mul-uniform": {"loss": "mul", "weight_sampling": "uniform"},
    # the hinge again, against the re-tuned table, keeping what scores derivations by shared weights
    "hinge-rerun": {"loss": "hinge", "weight_sampling": "alpha"},
    # the issue's "two-path update" candidate: α by REINFORCE on whole sampled nets' shared-weight accuracy (reward
    # acc · (T/LAT)^0.1) instead of the two-path gradient, every candidate trained alike
    "reinforce-uniform": {"arch_update": "reinforce", "weight_sampling": "uniform"},
    # the shared weights rate a block's ops far closer together than the nets trained alone do, the wide ops lowest
    # (`--report`'s per-block gains): weight steps draw each block's op in proportion to its parameter count
    # instead of uniformly (a skipped block as often as its smallest op), so the larger ops train more. A bench-only
    # setting (:func:`sampling_by_size`); it becomes a product option if the ground truth supports it
    "hinge-by-size": {"loss": "hinge", "weight_sampling": "uniform", "bench_sampling": "params"},
    # the "warm-up length" candidate, on the default (multiplicative, every candidate trained alike). The
    # shared weights rate the ops of a block far closer together than the nets trained alone do (the supernet's
    # validation accuracy is 0.40-0.47 after 8 epochs, the nets' own 0.54-0.68): α learns on weights that have not
    # told the ops apart yet. Four more weight-only epochs before the same 6 epochs of α (1.2x the images) ...
    "mul-warmup-6": {"loss": "mul", "weight_sampling": "uniform", "epochs": 12, "warmup_epochs": 6},
    # ... and the same 8 epochs with α learning in the last 4 only (fewer images than the default)
    "mul-warmup-4": {"loss": "mul", "weight_sampling": "uniform", "epochs": 8, "warmup_epochs": 4},
    # α's learning rate under the default loss (the rates scored before were the additive form's): α ends at top
    # probabilities 0.4-0.6 per block, so the derivation, not α, decides most of the net
    "mul-arch-lr-5e-2": {"loss": "mul", "weight_sampling": "uniform", "arch_lr": 0.05},
    "mul-arch-lr-5e-3": {"loss": "mul", "weight_sampling": "uniform", "arch_lr": 0.005},
    # the "batch norm in the supernet" candidate. The shared weights rate a skipped block (`zero`) at a
    # quarter of what it costs a net alone (--report's per-block gains: -0.84 against -3.21 points in block 1):
    # with every block skipped in a quarter of the weight steps, each op's batch-norm scale can shrink its branch
    # until skipping it costs little. The candidate ops' batch norms without learned scale and shift in the
    # supernet (as DARTS searches), so a branch keeps its size; the nets trained alone keep theirs. Bench-only
    # (:func:`fixed_batchnorm`) until the ground truth supports it
    "mul-bn-fixed": {"loss": "mul", "weight_sampling": "uniform", "bench_bn": "fixed"},
    # the "weight of the latency term" candidate: under Adam only the exponent b weighs latency against
    # accuracy in the multiplicative form (a is a constant factor); twice the default 0.3
    "mul-b-0.6": {"loss": "mul", "weight_sampling": "uniform", "mul_b": 0.6},
}
BENCH_ONLY = ("bench_sampling", "bench_bn")
SAMPLING = None  # the variant's bench_sampling, set by main()
BN = None  # the variant's bench_bn, set by main()


def search_config(variant: str, budget_us: float, seed: int):
    from tvm_nas.config import RunConfig, SearchConfig

    run = RunConfig()
    base = run.search(budget_us).model_dump()
    base.update(seed=seed, batch_size=RECIPE["batch_size"], val_fraction=RECIPE["val_fraction"])
    base.update({k: v for k, v in VARIANTS[variant].items() if k not in BENCH_ONLY})
    return SearchConfig(**base)


@contextlib.contextmanager
def sampling_by_size(enabled: bool):
    """While `enabled`: a weight step's "uniform" draw of each block's op is in proportion to the op's parameter
    count (``zero`` weighs as the block's smallest op), in warm-up and after it."""
    if not enabled:
        yield
        return
    import torch

    from tvm_nas.search.supernet import MixedOp

    plain = MixedOp.sample_one

    def sample_one(self, uniform=False, generator=None):
        if not uniform:
            return plain(self, uniform, generator)
        if not hasattr(self, "_size_weights"):
            n = [float(sum(p.numel() for p in op.parameters())) for op in self.ops]
            floor = min(x for x in n if x > 0)
            self._size_weights = torch.tensor([x if x > 0 else floor for x in n])
        self.mode, self.inactive, self.gates = "one", None, None
        self.active = int(torch.multinomial(self._size_weights, 1, generator=generator))
        return self.active

    MixedOp.sample_one = sample_one
    try:
        yield
    finally:
        MixedOp.sample_one = plain


@contextlib.contextmanager
def fixed_batchnorm(enabled: bool):
    """While `enabled`: every supernet built has its candidate ops' batch norms at scale 1 and shift 0, untrained
    (``affine=False`` in effect; the stem's and head's keep theirs)."""
    if not enabled:
        yield
        return
    import torch

    from tvm_nas.search.supernet import Supernet

    plain = Supernet.__init__

    def init(self, *args, **kwargs):
        plain(self, *args, **kwargs)
        for m in self.mixed_ops:
            for bn in (x for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)):
                if bn.affine:
                    bn.weight.requires_grad_(False)
                    bn.bias.requires_grad_(False)

    Supernet.__init__ = init
    try:
        yield
    finally:
        Supernet.__init__ = plain


def budgets(space, doc: dict, table) -> list[tuple[float, float]]:
    """(fraction, budget µs) from the fastest to the slowest net, by measured latency where known.

    A space whose budgets were fixed (:data:`FIXED_BUDGETS`) keeps them: every search and random search already
    recorded ran against those figures, and timing the nets again must not move the goalposts under them (it
    only changes which nets meet them, which :func:`rescore` applies to every search)."""
    if space.name in FIXED_BUDGETS:
        return list(FIXED_BUDGETS[space.name])
    lat = {k: (e.get("latency") or {}).get("measured_us") for k, e in doc["nets"].items()}
    if all(lat.get(key(ops)) for ops in all_nets(space)):
        values = [lat[key(ops)] for ops in all_nets(space)]
    else:
        values = [table.predict(space, ops) for ops in all_nets(space)]
    lo, hi = min(values), max(values)
    return [(f, lo + f * (hi - lo)) for f in FRACTIONS]


def ground_truth(space, doc: dict, table, seeds: tuple[int, ...] | None = None) -> dict[str, dict]:
    """net -> mean test accuracy (over its trainings, or those with one of `seeds`) and latency (measured when
    known, else predicted)."""
    out = {}
    for ops in all_nets(space):
        e = doc["nets"].get(key(ops))
        runs = [r for r in (e or {}).get("runs", []) if seeds is None or r["seed"] in seeds]
        if not runs:
            continue
        lat = (e.get("latency") or {})
        out[key(ops)] = {"ops": ops, "test": statistics.mean(r["test_accuracy"] for r in runs), "trainings": len(runs),
                         "us": lat.get("measured_us") or table.predict(space, ops),
                         "measured": lat.get("measured_us") is not None, "q1": lat.get("measured_q1")}
    return out


def recovered_table(space, doc: dict, table):
    """The table the ground truth was timed against, recovered from the whole-net predictions it stored.

    A table is additive (the fixed layers plus one entry per block's op), so the 39 nets' ``predicted_us`` fix its
    entries by least squares; the fit's worst residual is printed. The searches were run and their nets derived
    against that table, and a table tuned again (another machine, another phase of this one) predicts other µs
    than the nets were measured at: scoring their derivations against it would mix two machines. Only the entries
    change; the returned model is `table` otherwise."""
    import copy

    import numpy as np

    cols = sorted({b.key(op) for b in space.blocks() for op in b.candidates if table.latency(b.key(op)) > 0}, key=str)
    rows, y = [], []
    for e in doc["nets"].values():
        pred = (e.get("latency") or {}).get("predicted_us")
        if pred is None:
            continue
        keys = [b.key(op) for b, op in zip(space.blocks(), e["ops"], strict=True)]
        rows.append([1.0] + [float(sum(k == c for k in keys)) for c in cols])
        y.append(pred)
    a, y = np.array(rows), np.array(y)
    x, *_ = np.linalg.lstsq(a, y, rcond=None)
    worst = float(np.max(np.abs(a @ x - y)))
    values = dict(zip(cols, x[1:], strict=True))
    m = copy.copy(table)
    m.correction = m.calibration = None
    m.latency = lambda key, calibrated=True: float(values.get(key, 0.0))
    m.fixed_latency = lambda space, calibrated=True: float(x[0])
    print(f"table recovered from {len(y)} stored predictions ({doc['latency'].get('table_hash')}): worst residual "
          f"{worst:.3f} µs")
    return m


def meets(g: dict, budget: float) -> bool:
    """A net meets the budget within the protocol's spread: its median, or failing that its lower quartile, is
    under it. One rule for the searched net, the random pick and the set of nets they are ranked among, so a pick
    just over the budget can neither beat the best net that meets it nor be counted as meeting it."""
    return g["us"] <= budget or (g["q1"] is not None and g["q1"] <= budget)


def table_floor(budget: float, gt: dict, space, table) -> float | None:
    """The least regret a search that trusts the table can reach: the best net the table predicts to meet the
    budget, against the best net whose measured latency meets it."""
    pool = [g for g in gt.values() if table.predict(space, g["ops"]) <= budget]
    feasible = [g["test"] for g in gt.values() if meets(g, budget)]
    return None if not pool or not feasible else round(max(feasible) - max(g["test"] for g in pool), 5)


def score(ops: list[str], budget: float, gt: dict, space) -> dict:
    feasible = sorted((g for g in gt.values() if meets(g, budget)), key=lambda g: -g["test"])
    mine = gt[key(canonical(space, ops))]
    best = feasible[0]["test"] if feasible else None
    return {"ops": ops, "test_accuracy": mine["test"], "latency_us": mine["us"], "latency_measured": mine["measured"],
            "budget_met": meets(mine, budget),
            "regret": None if best is None else round(best - mine["test"], 5),
            "rank": 1 + sum(g["test"] > mine["test"] for g in feasible), "feasible": len(feasible),
            "best_feasible": best}


def in_top10(scored: dict) -> bool:
    """A :func:`score` among the top 10% of the nets that meet its budget (at least the best one)."""
    return scored["rank"] <= max(1, round(0.1 * scored["feasible"]))


def run_search(space, table, data, config, workdir: Path):
    from tvm_nas.search import ProxylessSearch

    s = ProxylessSearch(space, table, data, config, workdir)
    t = time.time()
    with sampling_by_size(SAMPLING == "params"), fixed_batchnorm(BN == "fixed"):
        s.fit()
    seconds = time.time() - t
    train_imgs = sum(r["train_images"] for r in s.history_)
    search_epochs = config.epochs - config.warmup_epochs
    arch_imgs = search_epochs * (len(s.train_idx_) // config.batch_size) // config.arch_every * config.arch_steps \
        * config.batch_size * 2  # both sampled paths run forward and backward to their gates
    return s, seconds, train_imgs + arch_imgs


def short_config(seed: int):
    """The short recipe: the ground truth's, for :data:`SHORT_EPOCHS` epochs, on the split of search seed `seed`."""
    from tvm_nas.config import TrainConfig

    return TrainConfig(epochs=SHORT_EPOCHS, batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
                       weight_decay=RECIPE["weight_decay"], label_smoothing=RECIPE["label_smoothing"],
                       val_fraction=RECIPE["val_fraction"], seed=seed)


def short_images(n_data: int) -> int:
    """Images one short training processes."""
    cfg = short_config(0)
    n_train = n_data - int(round(n_data * cfg.val_fraction))
    return SHORT_EPOCHS * (n_train // cfg.batch_size) * cfg.batch_size


def short_train(space, ops, data, seed: int) -> float:
    """Validation accuracy of `ops` trained alone with the short recipe on search seed `seed`'s split."""
    import torch

    from tvm_nas.network import Network
    from tvm_nas.train import train_network

    torch.manual_seed(seed)
    return train_network(Network(space, ops), data, short_config(seed))["val_accuracy"]


def random_order(space, table, budget: float, seed: int) -> list[list[str]]:
    """The nets random search tries, in order: those the table predicts to meet the budget, shuffled by seed."""
    import numpy as np

    rng = np.random.default_rng(1000 + seed)
    pool = [ops for ops in all_nets(space) if table.predict(space, ops) <= budget]
    return [pool[i] for i in rng.permutation(len(pool))]


def random_search(space, table, data, budget: float, seed: int, images: int, gt: dict) -> dict:
    """Nets meeting the budget by the table, each trained SHORT_EPOCHS on the search's training split, the best
    by validation accuracy kept, until the images trained reach ``images``."""
    order = random_order(space, table, budget, seed)
    per_net = short_images(len(data))
    tried, spent, t = [], 0, time.time()
    for ops in order:
        if tried and spent + per_net > images:
            break
        spent += per_net
        tried.append({"ops": ops, "val_accuracy": short_train(space, ops, data, seed)})
    pick = max(tried, key=lambda r: r["val_accuracy"])
    return {"tried": tried, "images": spent, "seconds": round(time.time() - t, 1),
            **score(pick["ops"], budget, gt, space)}


def save_merged(path: Path, res: dict, commit: bool, message: str) -> None:
    """Write the variant's results, keeping the searches another process of the same variant (other --seeds)
    wrote there since this one read the file."""
    from filelock import FileLock

    from tvm_nas.io import read_json

    with FileLock(str(path) + ".lock"):
        if path.exists():
            for name, entry in read_json(path, "search quality")["searches"].items():
                res["searches"].setdefault(name, entry)
        save(path, res, commit, message)


def same_alpha(res: dict, config, space, table, gt: dict, budget: float, frac: float, seed: int) -> dict | None:
    """The search of `seed` at another budget, derived at this one, where the two would end with the same α.

    With the multiplicative loss, the budget T enters α's loss only through ``(log E[LAT] / log T)^b``, a constant
    factor on its gradient, which Adam's steps do not see; with every candidate trained alike, the weights do not
    depend on α either. So one seed's searches at every budget end with the same probabilities and shared weights
    (the 18 searches of ``mul-uniform``, 6 seeds at 3 budgets, run one by one: probabilities equal within the 1e-6
    they are stored to, every net's shared-weight accuracy equal) and differ only in the derivation, done here at
    this budget with the search's own settings. None where that does not hold (another loss, α by REINFORCE,
    α-sampled weight steps, a derivation by shared weights) or no search of this seed has run."""
    if (config.loss != "mul" or config.arch_update != "gradient" or config.weight_sampling != "uniform"
            or config.derive != "argmax" or SAMPLING is not None):
        return None
    import numpy as np

    from tvm_nas.search.derive import derive

    for name, other in sorted(res["searches"].items()):
        if other["seed"] == seed and "probabilities" in other and not other.get("derived_from"):
            probs = [np.asarray(p) for p in other["probabilities"]]
            doc = derive(probs, space, table, budget, config.enforce_budget, config.budget_margin, config.fill_budget)
            keep = ("seconds", "images", "load", "supernet_tau", "top_probability", "entropy", "probabilities",
                    "shared")
            entry = {"budget_us": round(budget, 3), "fraction": frac, "seed": seed, "derived_from": name,
                     **{k: other[k] for k in keep}, "search": score(doc["ops"], budget, gt, space)}
            score_shared(entry, space, table, gt)
            return entry
    return None


def one_search(space, table, data, config, gt: dict, budget: float, frac: float, seed: int) -> dict:
    from tvm_nas.search.ranking import kendall_tau, supernet_accuracies

    with tempfile.TemporaryDirectory() as tmp:
        s, seconds, images = run_search(space, table, data, config, Path(tmp) / "search")
        shared = supernet_accuracies(s.supernet_, data, {k: g["ops"] for k, g in gt.items()},
                                     config.val_fraction, config.seed)
    tau = kendall_tau([shared[k] for k in gt], [gt[k]["test"] for k in gt])
    probs = s.history_[-1]["probabilities"]
    entry = {"budget_us": round(budget, 3), "fraction": frac, "seed": seed, "seconds": round(seconds, 1),
             "images": images, "load": os.getloadavg()[0], "supernet_tau": round(tau, 4),
             "top_probability": [max(p) for p in probs], "entropy": s.history_[-1]["entropy"],
             "probabilities": probs, "shared": {k: round(v, 5) for k, v in shared.items()},
             "search": score(s.arch_["ops"], budget, gt, space)}
    score_shared(entry, space, table, gt)
    return entry


def shared_pick(entry: dict, space, table, k: int) -> list[str]:
    """The net the product's derivation by shared weights (``--derive shared``) keeps with `k` candidates, from the
    shared-weight accuracies the search recorded for every net."""
    import numpy as np

    from tvm_nas.search.derive import derive_by_shared_weights

    probs = [np.asarray(p) for p in entry["probabilities"]]
    doc = derive_by_shared_weights(probs, space, table, entry["budget_us"], k, lambda nets: {
        name: entry["shared"][key(canonical(space, ops))] for name, ops in nets.items()})
    return doc["ops"]


def score_shared(entry: dict, space, table, gt: dict) -> None:
    """Score the derivations by shared weights (among the 3 and the 8 most probable nets meeting the budget, and
    among all of them) of a search that kept its probabilities and shared-weight accuracies."""
    if "shared" not in entry:
        return
    for name, k in (("shared_top3", 3), ("shared_top8", 8), ("shared_all", len(gt))):
        entry[name] = score(shared_pick(entry, space, table, k), entry["budget_us"], gt, space)


def shared_random(path: Path, space, table, data, budget: float, seed: int, images: int, gt: dict, name: str,
                  commit: bool) -> dict:
    """Random search for one (budget, seed) with ``images`` of compute, from the shared file when done before."""
    from filelock import FileLock

    from tvm_nas.io import read_json

    tag = f"{name}/{images}"

    def done() -> dict:
        return read_json(path, "random search") if path.exists() else {"schema": 1, "space": space.name, "runs": {}}

    with FileLock(str(path) + ".lock"):
        before = done()["runs"].get(tag)
    if before is not None:
        return before
    out = random_search(space, table, data, budget, seed, images, gt)
    with FileLock(str(path) + ".lock"):
        now = done()
        now["runs"][tag] = out
        save(path, now, commit, f"bench/search_quality: {space.name} random search {tag}: regret {out['regret']}")
    return out


def margin_pick(entry: dict, space, table, margin_pct: float, fill: bool = False) -> list[str]:
    """The net the product's derivation keeps with a budget margin (``--budget-margin``), from the probabilities
    the search ended with: the loss aimed at the budget itself, the derivation fits to the budget less the margin
    (and with `fill`, spends what the net leaves of it on slower ops, as ``fill_budget`` does)."""
    import numpy as np

    from tvm_nas.search.derive import derive

    probs = [np.asarray(p) for p in entry["probabilities"]]
    return derive(probs, space, table, entry["budget_us"], True, margin_pct, fill)["ops"]


MARGINS = (0.0, 3.0, 5.0)  # --budget-margin values scored offline on every search that kept its probabilities


def measured_pick(entry: dict, space, table, gt: dict, margin_pct: float) -> list[str]:
    """The net the run keeps when it chooses by measurement (``measure_budget``, the default): the product's own
    :func:`settle_by_measurement` on the search's final probabilities, each net's measurement being the ground
    truth's validate timing of it (the same compile and protocol the run uses, taken with nothing else running)."""
    import numpy as np

    from tvm_nas.search.derive import derive
    from tvm_nas.search.measured import settle_by_measurement

    probs = [np.asarray(p) for p in entry["probabilities"]]
    budget = entry["budget_us"]

    def measure(nets):
        return [{"median": gt[key(canonical(space, ops))]["us"], "q1": None, "q3": None, "stable": True,
                 "rounds": 1} for ops in nets]

    doc = derive(probs, space, table, budget, True, margin_pct, True)
    return settle_by_measurement(doc, probs, space, table, budget, margin_pct, True, measure, lambda _: None)["ops"]


def rescore(res: dict, gt: dict, space, table) -> None:
    """Score every finished search (and its random search) again against the ground truth as it is now: a search
    run before the nets were timed by TVM was scored on predicted latency, and is scored on measured latency once
    the ground truth has it."""
    for entry in res["searches"].values():
        entry["search"] = score(entry["search"]["ops"], entry["budget_us"], gt, space)
        entry["table_floor"] = table_floor(entry["budget_us"], gt, space, table)
        score_shared(entry, space, table, gt)
        if "probabilities" in entry:
            entry["margins"] = {f"{m:g}": score(margin_pick(entry, space, table, m), entry["budget_us"], gt, space)
                                for m in MARGINS}
            entry["filled"] = {f"{m:g}": score(margin_pick(entry, space, table, m, True), entry["budget_us"], gt,
                                               space) for m in MARGINS}
            entry["measured"] = {f"{m:g}": score(measured_pick(entry, space, table, gt, m), entry["budget_us"], gt,
                                                 space) for m in MARGINS}
        if entry.get("random"):
            entry["random"].update(score(entry["random"]["ops"], entry["budget_us"], gt, space))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder with train/ (the ground truth's training images)")
    ap.add_argument("--space", default="tiny-cifar")
    ap.add_argument("--target", default="host")
    ap.add_argument("--logs-dir", default=str(ROOT / "tuning_logs"))
    ap.add_argument("--variant", default="default", choices=sorted(VARIANTS))
    ap.add_argument("--ground-truth", help="default bench/results/nasbench-<space>.json")
    ap.add_argument("--gt-seeds", type=lambda v: tuple(int(x) for x in v.split(",")),
                    help="score against the mean of these training seeds only, e.g. 0 (the ground truth as first "
                         "trained, one seed a net); default every seed trained")
    ap.add_argument("--recovered-table", action="store_true",
                    help="search and derive against the table the ground truth was timed against, recovered from its "
                         "stored predictions, not the table in --logs-dir (tuned again elsewhere): the searches "
                         "recorded before ran against that table")
    ap.add_argument("--seeds", type=lambda v: tuple(int(x) for x in v.split(",")), default=SEEDS,
                    help=f"search seeds at each budget (default {','.join(map(str, SEEDS))}); more seeds add searches "
                         "beside those done")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hours", type=float)
    ap.add_argument("--commit", action="store_true")
    ap.add_argument("--no-random", action="store_true", help="skip random search (a later start adds it)")
    ap.add_argument("--report", action="store_true", help="score what is done against the ground truth, print it "
                                                          "and stop (no search)")
    ap.add_argument("--against", metavar="VARIANT", help="with --report: pair each search with the same budget and "
                                                         "seed of VARIANT, both derived as the run derives")
    args = ap.parse_args()
    if args.gt_seeds and not args.report:  # a search is scored against every seed trained
        sys.exit("--gt-seeds: only with --report")

    import torch

    from tvm_nas.data import load_data
    from tvm_nas.io import read_json
    from tvm_nas.profile.model import LatencyModel
    from tvm_nas.profile.table import table_path
    from tvm_nas.space import load_space
    from tvm_nas.targets import load_target

    global SAMPLING, BN
    SAMPLING = VARIANTS[args.variant].get("bench_sampling")
    BN = VARIANTS[args.variant].get("bench_bn")
    torch.set_num_threads(args.threads)
    space, spec = load_space(args.space), load_target(args.target)
    gt_path = Path(args.ground_truth or ROOT / "bench" / "results" / f"nasbench-{space.name}.json")
    doc = read_json(gt_path, "ground truth")
    table = LatencyModel.load(table_path(args.logs_dir, spec.name, space.name), space=space, target=spec)
    if args.recovered_table:
        table = recovered_table(space, doc, table)
    gt = ground_truth(space, doc, table, args.gt_seeds)
    if len(gt) < len(all_nets(space)):
        sys.exit(f"{gt_path}: {len(gt)} of {len(all_nets(space))} nets trained; finish bench/nasbench.py first")
    noise = summarize(doc)["noise_sd"]
    out = ROOT / "bench" / "results" / f"search_quality-{space.name}-{args.variant}.json"
    rnd_out = ROOT / "bench" / "results" / f"search_quality-{space.name}-random.json"
    res = read_json(out, "search quality") if out.exists() else {
        "schema": 1, "space": space.name, "variant": args.variant, "settings": VARIANTS[args.variant],
        "ground_truth": gt_path.name, "noise_sd": noise, "searches": {}}
    rescore(res, gt, space, table)
    if args.report:  # the running benches rewrite the file; this only prints
        runs = [g["trainings"] for g in gt.values()]
        print(f"ground truth {gt_path.name}: {len(gt)} nets, {min(runs)}-{max(runs)} trainings each (mean "
              f"{statistics.mean(runs):.1f})" + (f", seeds {args.gt_seeds}" if args.gt_seeds else ""))
        report(res)
        if args.against:
            other = ROOT / "bench" / "results" / f"search_quality-{space.name}-{args.against}.json"
            theirs = read_json(other, "search quality")
            rescore(theirs, gt, space, table)
            paired(res, theirs)
        return op_gains(res, gt, space)
    data = load_data(f"imagefolder:{args.data}/train", space, max_samples=RECIPE["images"], seed=0)
    deadline = time.time() + args.hours * 3600 if args.hours else None
    for frac, budget in budgets(space, doc, table):
        for seed in args.seeds:
            name = f"{frac:.2f}/{seed}"
            entry = res["searches"].get(name)
            if entry is not None and (entry.get("random") or args.no_random):
                continue
            if deadline and time.time() > deadline:
                print("time is up; start again to continue")
                return report(res)
            config = search_config(args.variant, budget, seed)
            if entry is None:
                entry = (same_alpha(res, config, space, table, gt, budget, frac, seed)
                         or one_search(space, table, data, config, gt, budget, frac, seed))
                entry["table"] = "recovered" if args.recovered_table else table.hash
                res["searches"][name] = entry
                res["config"] = config.model_dump(mode="json", exclude={"latency_budget_us", "seed"})
                save_merged(out, res, args.commit, f"bench/search_quality: {space.name} {args.variant} {name}: "
                                                   f"regret {entry['search']['regret']}")
            if not args.no_random:
                rnd = shared_random(rnd_out, space, table, data, budget, seed, entry["images"], gt, name, args.commit)
                # scored against the ground truth as it is now (the shared file keeps its figures as first scored)
                entry["random"] = {**rnd, **score(rnd["ops"], entry["budget_us"], gt, space)}
                save_merged(out, res, args.commit, f"bench/search_quality: {space.name} {args.variant} {name}: "
                                                   f"random search beside it")
            rnd = entry.get("random")
            print(f"budget {frac:.2f} ({budget:.1f} µs) seed {seed}: searched {key(entry['search']['ops'])} regret "
                  f"{100 * entry['search']['regret']:.2f} rank {entry['search']['rank']}/{entry['search']['feasible']}"
                  + (f"; random regret {100 * rnd['regret']:.2f} ({len(rnd['tried'])} nets)" if rnd else "")
                  + f"; τ {entry['supernet_tau']:+.2f}; noise sd {100 * noise:.2f}; {load()}", flush=True)
    report(res)


def paired(mine: dict, theirs: dict) -> None:
    """Each search against the other variant's of the same budget and seed, both derived as the run derives (by
    measurement, the default margin): better / worse / equal, the two-sided sign test on the untied pairs, the
    medians over the searches both have, and the supernets' τ seed by seed."""
    from scipy import stats

    from tvm_nas.config import BUDGET_MARGIN_PCT

    m = f"{BUDGET_MARGIN_PCT:g}"
    both = sorted(set(mine["searches"]) & set(theirs["searches"]))
    pairs = [(mine["searches"][n]["measured"][m], theirs["searches"][n]["measured"][m]) for n in both
             if "measured" in mine["searches"][n] and "measured" in theirs["searches"][n]]
    if not pairs:
        print(f"  against {theirs['variant']}: no search of both")
        return
    a, b = [p[0]["regret"] for p in pairs], [p[1]["regret"] for p in pairs]
    better = sum(x < y - 1e-9 for x, y in zip(a, b, strict=True))
    worse = sum(x > y + 1e-9 for x, y in zip(a, b, strict=True))
    p = stats.binomtest(better, better + worse).pvalue if better + worse else 1.0
    top = [sum(map(in_top10, side)) for side in zip(*pairs, strict=True)]
    print(f"  against {theirs['variant']} ({len(pairs)} searches of both, derived by measurement, {m}% margin): "
          f"regret median {100 * statistics.median(a):.2f} vs {100 * statistics.median(b):.2f}, worst "
          f"{100 * max(a):.2f} vs {100 * max(b):.2f}, mean {100 * statistics.mean(a):.2f} vs "
          f"{100 * statistics.mean(b):.2f}, top 10% {top[0]} vs {top[1]}; better in {better}, worse in {worse}, "
          f"equal in {len(pairs) - better - worse} (sign test p = {p:.3f})")
    taus = [(mine["searches"][n]["supernet_tau"], theirs["searches"][n]["supernet_tau"]) for n in both]
    print(f"  supernet τ: median {statistics.median(t[0] for t in taus):+.2f} vs "
          f"{statistics.median(t[1] for t in taus):+.2f}, higher in {sum(x > y for x, y in taus)} of {len(taus)}")


def op_gains(res: dict, gt: dict, space) -> None:
    """Per block, what each op gains over the block's first candidate between nets that differ only there: trained
    alone (the ground truth) against the shared weights the searches recorded. Where the two disagree, α (trained
    on the shared weights) leans the wrong way in that block."""
    rows = [r for r in res["searches"].values() if r.get("shared")]
    if not rows:
        return
    for b, block in enumerate(space.blocks()):
        base = block.candidates[0]
        for op in block.candidates[1:]:
            alone, shared = [], []
            for k, g in gt.items():
                if g["ops"][b] != base:
                    continue
                other = key(canonical(space, g["ops"][:b] + [op] + g["ops"][b + 1:]))
                if other == k or other not in gt:
                    continue
                alone.append(gt[other]["test"] - g["test"])
                shared += [r["shared"][other] - r["shared"][k] for r in rows
                           if other in r["shared"] and k in r["shared"]]
            if alone and shared:
                print(f"  block {b}: {op} over {base}, {len(alone)} pairs of nets: trained alone "
                      f"{100 * statistics.mean(alone):+.2f}, shared weights {100 * statistics.mean(shared):+.2f} "
                      "points")


def report(res: dict) -> None:
    rows = list(res["searches"].values())
    if not rows:
        return
    reg = [r["search"]["regret"] for r in rows]
    rnd = [r["random"]["regret"] for r in rows if r.get("random")]
    top = sum(in_top10(r["search"]) for r in rows)
    noise = res["noise_sd"]
    print(f"{res['space']} / {res['variant']}: {len(rows)} searches; {load()}")
    for name, r in sorted(res["searches"].items()):
        se, rn = r["search"], r.get("random")
        print(f"  {name:8s} budget {r['budget_us']:6.1f} µs: searched {key(se['ops']):40s} regret "
              f"{100 * se['regret']:5.2f} rank {se['rank']}/{se['feasible']} met {'yes' if se['budget_met'] else 'NO'}"
              + (f"; random {100 * rn['regret']:5.2f} ({len(rn['tried'])} nets)" if rn else "")
              + f"; τ {r['supernet_tau']:+.2f}; top p {' '.join(f'{x:.2f}' for x in r['top_probability'])}")
    print(f"  search regret: median {100 * statistics.median(reg):.2f}, worst {100 * max(reg):.2f} points "
          f"(noise floor: seed-to-seed sd {100 * noise:.2f})")
    floor = [r["table_floor"] for r in rows if r.get("table_floor") is not None]
    if floor:
        print(f"  the least regret a search trusting the table can reach (the best net it predicts to meet the "
              f"budget): median {100 * statistics.median(floor):.2f}, worst {100 * max(floor):.2f}")
    if rnd:
        print(f"  random search, same images ({len(rnd)} of {len(rows)}): median {100 * statistics.median(rnd):.2f}, "
              f"worst {100 * max(rnd):.2f}")
    for name, what in (("shared_top3", "of the 3 most probable nets"), ("shared_top8", "of the 8 most probable"),
                       ("shared_all", "of every net")):
        picked = [r[name]["regret"] for r in rows if r.get(name)]
        if picked:
            print(f"  derived by shared weights ({what} meeting the budget, best on validation): median "
                  f"{100 * statistics.median(picked):.2f}, worst {100 * max(picked):.2f} ({len(picked)} searches)")
    with_p = [r for r in rows if r.get("margins")]
    for field, how in (("margins", ""), ("filled", ", filling the budget"),
                       ("measured", ", filling it, the nets around it chosen by measured latency")):
        for m in (f"{m:g}" for m in MARGINS):
            if with_p:
                picked = [r[field][m] for r in with_p]
                reg = [p["regret"] for p in picked]
                strict = sum(p["latency_us"] <= r["budget_us"] for p, r in zip(picked, with_p, strict=True))
                top_p = sum(map(in_top10, picked))
                print(f"  derived with a {m}% budget margin{how}: regret median {100 * statistics.median(reg):.2f}, "
                      f"worst {100 * max(reg):.2f}, top 10% {top_p}; measured median under the budget {strict} of "
                      f"{len(picked)}, within the protocol's spread {sum(p['budget_met'] for p in picked)}")
    print(f"  searched net in the top 10% of the nets meeting the budget: {top} of {len(rows)}")
    print(f"  budget met (measured): {sum(r['search']['budget_met'] for r in rows)} of {len(rows)}")
    print(f"  supernet τ against ground truth: median {statistics.median(r['supernet_tau'] for r in rows):+.2f}")


if __name__ == "__main__":
    main()
