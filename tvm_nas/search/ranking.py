"""The supernet's own ranking of nets: the warning light a user can afford when no ground truth exists.

A weight-sharing search is only as good as the order in which its shared weights rank the nets. The nets a run
trains alone (its baselines) give a cheap check: each net's validation accuracy with the supernet's weights
(:func:`supernet_accuracies`), against its accuracy trained alone, as a Kendall τ (:func:`kendall_tau`). A τ near
zero says the search picked by noise, whatever the probabilities it printed.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import FolderData, ImageData, batches, normalize, train_val_split
from ..errors import TvmNasError
from ..space import SearchSpace
from .supernet import Supernet

CHECKPOINT = "checkpoint.pt"
BN_BATCHES = 20  # training batches that re-estimate a sub-net's batch-norm statistics before it is scored


def load_supernet(space: SearchSpace, path: str | os.PathLike) -> Supernet:
    """The supernet of a search run (``RUN_DIR`` or ``RUN_DIR/checkpoint.pt``), on the CPU, tensors only.

    Raises:
        TvmNasError: no checkpoint, or one that is unreadable or of another space.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise TvmNasError(f"{path}: search checkpoint not found (a search run directory holds {CHECKPOINT})")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning on a file it then refuses: the
            warnings.simplefilter("ignore")  # refusal is the one line said
            state = torch.load(path, map_location="cpu", weights_only=True)["supernet"]  # never run a pickle
        net = Supernet(space)
        net.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - unreadable or from another space: one line
        raise TvmNasError(f"{path}: not a search checkpoint of space '{space.name}' "
                          f"({e.__class__.__name__})") from e
    return net


@torch.no_grad()
def supernet_accuracies(net: Supernet, data: ImageData | FolderData, nets: Mapping[str, Sequence[str]],
                        val_fraction: float, seed: int, batch_size: int = 64,
                        bn_batches: int = BN_BATCHES) -> dict[str, float]:
    """Validation accuracy of each net with the supernet's shared weights.

    The split is the search's own (same fraction and seed). Before a net is scored, its batch-norm statistics
    are re-estimated on ``bn_batches`` training batches with that path fixed: the running statistics the search
    kept mix every path, and score no single net fairly (the usual practice of one-shot NAS evaluation).
    """
    train_idx, val_idx = train_val_split(len(data), val_fraction, seed)
    device = next(net.parameters()).device
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = {id(m): (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms}
    out = {}
    try:
        for name, ops in nets.items():
            net.fix(list(ops))
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a plain average over the batches below
            net.train()
            for i, (x, _) in enumerate(batches(data, train_idx, batch_size, seed=seed, train=True, raw=True)):
                if i >= bn_batches:
                    break
                if len(x):
                    net(normalize(x.to(device)))
            net.eval()
            correct = n = 0
            for x, y in batches(data, val_idx, 256, raw=True):
                if len(y):
                    correct += int((net(normalize(x.to(device))).argmax(1).cpu() == y).sum())
                    n += len(y)
            if n == 0:
                raise TvmNasError(f"--data {data.spec}: no validation image could be read")
            out[name] = correct / n
    finally:
        for m in norms:
            m.momentum, mean, var, count = saved[id(m)]
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
    return out


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b between two rankings (ties counted as ties); NaN with fewer than two nets or no order."""
    if len(a) < 2:
        return math.nan
    from scipy import stats

    tau = stats.kendalltau(np.asarray(a, float), np.asarray(b, float)).statistic
    return float(tau) if tau is not None else math.nan
