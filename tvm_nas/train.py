"""Train a derived architecture from scratch, or fine-tune it from the supernet's weights."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .arch import load_architecture
from .config import TrainConfig
from .data import FolderData, ImageData, batches, check_unreadable, load_data, normalize, train_val_split
from .errors import TvmNasError
from .io import atomic_write_bytes, atomic_write_json
from .network import Network
from .search.distributed import autocast, check_precision, grad_scaler
from .search.ranking import load_supernet


def _on(device: torch.device, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ImageData | FolderData, indices: np.ndarray,
             precision: str = "fp32") -> float:
    """Top-1 accuracy of ``model`` (eval mode, on its own device) on the given samples (unreadable ones skipped)."""
    model.eval()
    device = next(model.parameters()).device
    correct = n = 0
    for x, y in batches(data, indices, 256, raw=True):
        if len(y):
            x, y = _on(device, x, y)
            with autocast(device, precision):
                correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    if n == 0:
        raise TvmNasError(f"--data {data.spec}: no validation image could be read")
    return correct / n


def train_network(model: torch.nn.Module, data: ImageData | FolderData, config: TrainConfig, console=None,
                  device: torch.device | str = "cpu") -> dict:
    """Train ``model`` on the training split; returns per-epoch history and the final validation accuracy.

    The split is the same deterministic one the search used (same seed and fraction), so validation images are
    never trained on. ``config.precision`` bf16/fp16 trains under autocast (fp16 with loss scaling).
    """
    device = torch.device(device)
    check_precision(config.precision, device)
    torch.manual_seed(config.seed)
    model.to(device)
    scaler = grad_scaler(device, config.precision)
    train_idx, val_idx = train_val_split(len(data), config.val_fraction, config.seed)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    history = []
    for epoch in range(config.epochs):
        model.train()
        losses, seen = [], 0
        for x, y in batches(data, train_idx, config.batch_size, config.seed, epoch, drop_last=True, train=True,
                            raw=True):
            if not len(y):
                continue
            seen += len(y)
            x, y = _on(device, x, y)
            opt.zero_grad(set_to_none=True)
            with autocast(device, config.precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            losses.append(loss.item())
        if epoch == 0:  # before the scheduler's step: no optimizer step was taken on unreadable data
            check_unreadable(data, seen)
        sched.step()
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                  "val_accuracy": accuracy(model, data, val_idx, config.precision)}
        history.append(record)
        if console is not None:
            console.print(f"epoch {epoch + 1:>3}/{config.epochs} loss {record['train_loss']:.3f} "
                          f"val acc {record['val_accuracy']:.3f}")
    return {"history": history, "val_accuracy": history[-1]["val_accuracy"]}


def load_test_data(spec: str, space, train_data: ImageData | FolderData,
                   workers: int | None = None) -> ImageData | FolderData:
    """The held-out test set: every image of ``spec``, fitted to the space like the training data.

    Raises:
        TvmNasError: its classes are not the training data's (a label would mean another class).
    """
    test = load_data(spec, space, workers=workers)
    if list(test.classes) != list(train_data.classes):
        raise TvmNasError(f"--test-data {spec}: classes {', '.join(test.classes)} differ from the training data's "
                          f"({', '.join(train_data.classes)}); the test set must have the same class folders")
    return test


def test_accuracy(model: torch.nn.Module, test: ImageData | FolderData, precision: str = "fp32") -> float:
    """Top-1 accuracy on every image of a held-out test set."""
    return accuracy(model, test, np.arange(len(test)), precision)


def accuracy_fields(result: dict) -> dict:
    """The accuracy a result is ranked by, and which set it comes from.

    ``{"accuracy": ..., "accuracy_set": "test"}`` when a held-out test set was measured, else the validation
    accuracy labelled ``"validation"``: the split the search trained α on, so it must never rank a searched net
    against others.
    """
    if result.get("test_accuracy") is not None:
        return {"accuracy": result["test_accuracy"], "accuracy_set": "test"}
    return {"accuracy": result.get("val_accuracy"), "accuracy_set": "validation"}


def supernet_weights(space, ops: list[str], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The chosen ops' weights from a search run's checkpoint (``RUN_DIR`` or ``RUN_DIR/checkpoint.pt``)."""
    return load_supernet(space, path).network_state(ops)


def train_arch(arch: str | os.PathLike, data_spec: str, config: TrainConfig, out_dir: str | os.PathLike,
               init_from: str | os.PathLike | None = None, console=None, device: torch.device | str = "cpu",
               workers: int | None = None, test_data: str | None = None) -> dict:
    """Train the net of an architecture file and write ``model.pt`` and ``train.json`` into ``out_dir``.

    Args:
        arch: the ``*.arch.json`` file.
        data_spec: see :func:`tvm_nas.data.load_data`.
        config: training settings.
        out_dir: output folder.
        init_from: a search run (directory or checkpoint) whose supernet weights initialize the net.
        console: a ``rich`` console for per-epoch lines, or None.
        device: where to train.
        workers: DataLoader workers of a streamed image folder.
        test_data: a data spec of held-out images, never trained on: the accuracy the net is judged by.

    Returns:
        The result document (also written to ``out_dir/train.json``) with ``val_accuracy``, ``test_accuracy``
        (None without a test set), and ``accuracy`` / ``accuracy_set`` (:func:`accuracy_fields`).
    """
    a = load_architecture(arch)
    space, ops, doc = a.space, a.ops, a.doc
    data = load_data(data_spec, space, max_samples=config.max_samples, seed=config.seed, workers=workers)
    test = None if test_data is None else load_test_data(test_data, space, data, workers)
    torch.manual_seed(config.seed)
    model = Network(space, ops, where=str(arch))
    if init_from is not None:
        model.load_state_dict(supernet_weights(space, ops, init_from))
    result = train_network(model, data, config, console, device)
    result["test_accuracy"] = None if test is None else test_accuracy(model, test, config.precision)
    result.update(accuracy_fields(result))
    out_dir = Path(out_dir)
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(out_dir / "model.pt", buf.getvalue())
    result = {"schema": 1, "arch": str(arch), "ops": ops, "space": space.name, "data": data.describe(),
              "test_data": None if test is None else test.describe(),
              "init_from": None if init_from is None else str(init_from),
              "device": torch.device(device).type, "skipped_images": data.skipped,
              "config": config.model_dump(mode="json"),
              "predicted_latency_us": doc.get("predicted_latency_us"), **result}
    atomic_write_json(out_dir / "train.json", result)
    return result
