"""The deployable network of an architecture: trained or seeded weights, batch norm folded, a test input."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..arch import Arch, load_architecture
from ..errors import TvmNasError
from ..network import Network
from ..ops import prepare_for_deploy


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load trained weights (a state dict, read with ``weights_only=True``) into an un-folded network.

    Raises:
        TvmNasError: unreadable file, or keys/shapes that do not match the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise TvmNasError(f"{path}: weights file not found")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning on a file it then refuses: the
            warnings.simplefilter("ignore")  # refusal is the one line said
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, unsupported globals, truncated files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        if msg.startswith("Weights only load failed"):  # then torch's advice to load it unsafely: not ours to give
            msg = "damaged, or holding objects other than tensors and plain data, which are never unpickled"
        raise TvmNasError(f"{path}: not a weights file torch.load(weights_only=True) can read ({msg[:160]})") from None
    for k in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(k), dict):
            state = state[k]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TvmNasError(f"{path}: expected a state dict of tensors (torch.save(model.state_dict(), ...))")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or extra or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
        raise TvmNasError(f"{path}: weights do not match the architecture: "
                          + ", ".join(p for p in parts if p) + "; were they trained for another architecture?")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TvmNasError(f"{path}: field '{bad[0]}': weights hold NaN or infinite values "
                          f"({len(bad)} tensor(s)); a net with them computes nothing")
    model.load_state_dict(state)


def build_network_from_arch(arch: str | os.PathLike | Arch, weights: str | os.PathLike | None = None,
                            seed: int = 0) -> torch.nn.Module:
    """The standalone network of an architecture, ready to deploy (eval mode, batch norm folded).

    Args:
        arch: an ``*.arch.json`` path or a loaded :class:`Arch`.
        weights: trained weights (state dict of :class:`~tvm_nas.network.Network`); None: seeded random weights.
        seed: seed of the random weights (and of the batch-norm statistics, so folding is not trivial).
    """
    a = load_architecture(arch)
    torch.manual_seed(seed)
    model = Network(a.space, a.ops, where=str(a.path or a.label))
    if weights is not None:
        load_weights(model, weights)
    else:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
    return prepare_for_deploy(model)


def example_input(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32)


def torch_forward(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()
