"""Datasets for search and training and a deterministic train/validation split.

A data spec is one string:

* ``builtin`` — scikit-learn's handwritten digits (1797 gray 8x8 images, 10 classes), shipped inside the
  installed scikit-learn, resized to the space's input resolution and channel count, held in memory;
* ``imagefolder:PATH`` — one sub-folder per class, images readable by PIL. Photographs larger than the space's
  input are streamed from disk by a ``DataLoader`` with workers (random-resized crop + flip for training, resize +
  centre crop for validation; only the file list is held in memory). Thumbnails no larger than the input (CIFAR-10
  at 32x32, say) are decoded once and held in memory when they fit in :data:`MEMORY_LIMIT` bytes, and train with
  the small-image recipe (4-pixel padded random crop + flip, scaled to the resolution): a random-resized crop of a
  32x32 photograph throws most of it away. Unreadable images are skipped and counted either way;
* ``cifar10:PATH`` — the CIFAR-10 "python version" folder (``data_batch_1`` … ``data_batch_5``), in memory.

Every problem with the data (missing, empty, one class, corrupt, wrongly shaped, more classes than the space has
outputs) is a :class:`~tvm_nas.errors.TvmNasError` with one line naming the file.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import TvmNasError
from .imagefolder import IMAGE_SUFFIXES, ImageFolder, collate, train_transforms, val_transforms
from .space import SearchSpace

__all__ = ["IMAGE_SUFFIXES", "MEMORY_LIMIT", "FolderData", "ImageData", "batches", "crop_flip", "endless_batches",
           "load_data", "normalize", "train_val_split"]

MEMORY_LIMIT = 2 << 30  # bytes of decoded images up to which a folder of thumbnails is held in memory
MAX_UNREADABLE = 0.05  # share of unreadable images above which a data set is refused rather than silently thinned


def check_unreadable(data, seen: int) -> None:
    """Refuse data of which more than :data:`MAX_UNREADABLE` of the images met so far could not be read.

    ``seen``: the images read (successfully) so far; ``data.skipped`` those that could not be.
    """
    bad = data.skipped
    if bad and bad > MAX_UNREADABLE * (bad + seen):
        raise TvmNasError(f"--data {data.spec}: {bad} of {bad + seen} images could not be read (more than "
                          f"{MAX_UNREADABLE:.0%}; e.g. {', '.join(data.bad_examples[:2]) or 'none listed'}); "
                          "repair or remove them")


@dataclass
class ImageData:
    """Images of one dataset held in memory, already at the space's input size.

    Attributes:
        images: uint8 tensor ``(N, C, H, W)``.
        labels: int64 tensor ``(N,)`` with values in ``[0, len(classes))``.
        classes: class names, index = label.
        spec: the data spec string it was loaded from.
        augment: training augmentation of :func:`batches` (``"crop+flip"``: :func:`crop_flip`; None: none, as
            for the digits, which a mirror would turn into other digits).
        skipped: images that could not be read while loading (left out).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    spec: str
    skipped: int = 0
    augment: str | None = None
    bad_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> dict:
        return {"spec": self.spec, "samples": len(self), "classes": len(self.classes),
                "shape": list(self.images.shape[1:]), "augment": self.augment}


@dataclass
class FolderData:
    """An image folder streamed from disk (see :mod:`tvm_nas.imagefolder`).

    Attributes:
        folder: the dataset (file list and labels).
        resolution: the side of the square images a batch holds.
        spec: the data spec string.
        workers: DataLoader worker processes (0: load in this process).
        skipped: unreadable images met so far; ``bad_examples`` the first few of their paths.
    """

    folder: ImageFolder
    resolution: int
    spec: str
    workers: int = 0
    skipped: int = 0
    bad_examples: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.folder.targets.astype(np.int64))

    def __len__(self) -> int:
        return len(self.folder)

    def describe(self) -> dict:
        return {"spec": self.spec, "samples": len(self), "classes": len(self.classes),
                "shape": [self.folder.channels, self.resolution, self.resolution], "streamed": True}


def default_workers(world: int = 1) -> int:
    """DataLoader workers per process: the cores left to each process, at least 1, at most 8."""
    return max(1, min(8, (os.cpu_count() or 1) // max(1, world) - 1))


# -- loading -------------------------------------------------------------------------------------------
def load_data(spec: str, space: SearchSpace, max_samples: int | None = None, seed: int = 0,
              workers: int | None = None) -> ImageData | FolderData:
    """Load a dataset by spec and fit it to the space's input (resolution, channels) and number of classes.

    Args:
        spec: ``builtin``, ``imagefolder:PATH`` or ``cifar10:PATH``.
        space: the search space whose input the images must match.
        max_samples: keep a deterministic random subset of this many samples (quick runs).
        seed: seed of that subset.
        workers: DataLoader workers of a streamed folder (default :func:`default_workers`).

    Raises:
        TvmNasError: unknown spec, missing/empty/one-class/corrupt/wrongly shaped data, too many classes.
    """
    if workers is not None and workers < 0:
        raise TvmNasError(f"--workers: must be 0 (load in the main process) or more, got {workers}")
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder" and arg:
        folder = ImageFolder(Path(arg), space.input.channels)
        _check_classes(spec, folder.classes, space)
        if max_samples is not None and max_samples < len(folder):
            keep = np.sort(np.random.default_rng(seed).permutation(len(folder))[:max_samples])
            folder.files, folder.targets = folder.files[keep], folder.targets[keep]
        workers = default_workers() if workers is None else workers
        res = space.input.resolution
        if thumbnails(folder, res) and len(folder) * folder.channels * res * res <= MEMORY_LIMIT:
            return _decode(folder, res, spec, workers)
        return FolderData(folder, res, spec, workers)
    if kind == "builtin" and not arg:
        images, labels, classes = _load_builtin()
    elif kind == "cifar10" and arg:
        images, labels, classes = _load_cifar10(Path(arg))
    else:
        raise TvmNasError(f"--data: unknown data spec {spec!r}; accepted: builtin, imagefolder:PATH, "
                          "cifar10:PATH")
    _check_classes(spec, classes, space)
    if max_samples is not None and max_samples < len(labels):
        keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:max_samples])
        images, labels = images[keep], labels[keep]
    tensor = fit_images(torch.from_numpy(np.ascontiguousarray(images)), space.input.resolution,
                        space.input.channels)
    return ImageData(tensor, torch.from_numpy(labels.astype(np.int64)), classes, spec,
                     augment="crop+flip" if kind == "cifar10" else None)


def thumbnails(folder: ImageFolder, resolution: int, probes: int = 32) -> bool:
    """Whether the folder holds images no larger than ``resolution`` on either side (judged on ``probes`` files
    spread over the folder; their headers only are read)."""
    from PIL import Image

    picks = np.unique(np.linspace(0, len(folder) - 1, min(probes, len(folder))).astype(int))
    seen = 0
    for i in picks:
        try:
            with Image.open(folder.path(int(i))) as im:
                if max(im.size) > resolution:
                    return False
                seen += 1
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # unreadable: counted when the folder is decoded
    return seen > 0


class _FitTo:
    """Resize to exactly ``size`` x ``size`` (a thumbnail smaller than the input, or not square)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img, rng=None):
        from PIL import Image

        return img if img.size == (self.size, self.size) else img.resize((self.size, self.size), Image.BILINEAR)


def _decode(folder: ImageFolder, resolution: int, spec: str, workers: int) -> ImageData:
    """Every image of a folder of thumbnails, decoded once into memory (unreadable ones left out and counted)."""
    dataset = folder.with_transforms([_FitTo(resolution)])
    loader = torch.utils.data.DataLoader(dataset, batch_size=512, num_workers=workers, collate_fn=collate)
    images, labels, bad = [], [], []
    for x, y, b in loader:
        if len(y):
            images.append(x)
            labels.append(y)
        bad.extend(b)
    if not labels:
        raise TvmNasError(f"{spec}: none of the {len(folder)} images could be read (e.g. {bad[0]})")
    data = ImageData(torch.cat(images), torch.cat(labels), folder.classes, spec, skipped=len(bad),
                     augment="crop+flip", bad_examples=bad[:5])
    check_unreadable(data, len(data))
    return data


def _check_classes(spec: str, classes: list[str], space: SearchSpace) -> None:
    if len(classes) > space.num_classes:
        raise TvmNasError(f"--data {spec}: {len(classes)} classes, but space '{space.name}' has only "
                          f"num_classes={space.num_classes} outputs; use a space with enough classes")


def fit_images(images: torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    """Resize uint8 ``(N, C, H, W)`` images to ``resolution`` and convert 1 <-> 3 channels (gray <-> RGB)."""
    x = images
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)
            x = (x[:, :3].float() * w).sum(1, keepdim=True).round().to(torch.uint8)
        else:
            raise TvmNasError(f"images have {x.shape[1]} channels; cannot convert to the space's {channels}")
    if x.shape[-2:] != (resolution, resolution):
        out = []
        for chunk in x.split(4096):
            y = F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear", antialias=True,
                              align_corners=False)
            out.append(y.round().clamp(0, 255).to(torch.uint8))
        x = torch.cat(out)
    return x.contiguous()


def _load_builtin() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return images, d.target.astype(np.int64), [str(c) for c in d.target_names]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches hold dicts of numpy arrays and lists; refuse any other class a pickle could name."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype", "scalar",
                                                         "_frombuffer"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden class {module}.{name}")


def _load_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not root.is_dir():
        raise TvmNasError(f"{root}: CIFAR-10 folder not found (expected data_batch_1 ... data_batch_5)")
    files = sorted(root.glob("data_batch_*"))
    if not files:
        raise TvmNasError(f"{root}: no data_batch_* files (is this the CIFAR-10 python version?)")
    images, labels = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                d = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
            data = np.asarray(d[b"data"], dtype=np.uint8)
            lab = np.asarray(d[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError) as e:
            raise TvmNasError(f"{f}: corrupt CIFAR-10 batch ({e.__class__.__name__}: {e})") from e
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise TvmNasError(f"{f}: field 'data': expected shape (N, 3072) with N labels, got {data.shape} "
                              f"and {len(lab)} labels")
        if lab.size and (lab.min() < 0 or lab.max() > 9):
            raise TvmNasError(f"{f}: field 'labels': values must be 0..9")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    meta = root / "batches.meta"
    classes = [str(i) for i in range(10)]
    if meta.is_file():
        try:
            with open(meta, "rb") as fh:
                names = _NumpyOnlyUnpickler(fh, encoding="bytes").load()[b"label_names"]
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except Exception:  # noqa: BLE001 - the names are cosmetic
            pass
    images_all = np.concatenate(images)
    if len(images_all) == 0:
        raise TvmNasError(f"{root}: CIFAR-10 batches are empty")
    return images_all, np.concatenate(labels), classes


# -- splitting and batching ----------------------------------------------------------------------------
def train_val_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of ``range(n)`` into (train, validation) indices, both sorted.

    Raises:
        TvmNasError: either part would be empty.
    """
    n_val = int(round(n * val_fraction))
    if n_val < 1 or n - n_val < 1:
        raise TvmNasError(f"--data: {n} samples cannot be split with validation fraction {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def order(indices: np.ndarray, seed: int | None, epoch: int) -> np.ndarray:
    """``indices`` shuffled by ``(seed, epoch)``, or as given when ``seed`` is None."""
    idx = np.asarray(indices)
    return idx if seed is None else idx[np.random.default_rng([seed, epoch]).permutation(len(idx))]


def sample_seed(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """The augmentation seed of each sample: a function of (seed, epoch, sample) only."""
    high = np.int64(seed % 1_000_003) * 1009 + epoch % 1009  # < 2**30, so the shifted value fits in int64
    return (high << np.int64(32)) + index.astype(np.int64)


def batches(data: ImageData | FolderData, indices: np.ndarray, batch_size: int, seed: int | None = None,
            epoch: int = 0, drop_last: bool = False, train: bool = False, rank: int = 0, world: int = 1,
            raw: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches; shuffled by ``(seed, epoch)`` when ``seed`` is given.

    The order depends only on ``seed`` and ``epoch``, so a resumed run sees the same batches. With ``world``
    processes, each global batch of ``batch_size`` is split into ``world`` consecutive shares and this process
    gets share ``rank``. ``x`` is normalized float, or the uint8 images with ``raw``. A streamed folder applies
    the training transforms when ``train`` (else the validation ones) and drops unreadable images, counting
    them in ``data.skipped``; its batches may therefore be smaller, even empty.
    """
    idx = order(indices, seed, epoch)
    stop = len(idx) - (len(idx) % batch_size if drop_last and len(idx) >= batch_size else 0)
    shares = (np.array_split(idx[i:i + batch_size], world)[rank] for i in range(0, stop, batch_size))
    if isinstance(data, ImageData):
        augment = train and data.augment == "crop+flip"
        for share in shares:
            b = torch.from_numpy(share)
            x = data.images[b]
            if augment:
                x = crop_flip(x, sample_seed(0 if seed is None else seed, epoch, share))
            yield (x if raw else normalize(x)), data.labels[b]
        return
    yield from _stream(data, shares, 0 if seed is None else seed, epoch, train, raw)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 of each value: well-spread random bits from a sample's seed, vectorised."""
    z = z.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def crop_flip(x: torch.Tensor, seeds: np.ndarray) -> torch.Tensor:
    """The small-image training augmentation: pad by 1/8 of the side (4 pixels at 32x32) with zeros, crop back to
    the side at a random offset, and mirror half of the images; each sample's draw is a function of its seed.

    Args:
        x: uint8 ``(N, C, H, W)`` images.
        seeds: one integer per image (:func:`sample_seed`).
    """
    n, c, h, w = x.shape
    if n == 0:
        return x
    pad = max(1, min(h, w) // 8)
    with np.errstate(over="ignore"):
        bits = _mix(np.asarray(seeds))
    dy = torch.from_numpy((bits % np.uint64(2 * pad + 1)).astype(np.int64))
    dx = torch.from_numpy(((bits >> np.uint64(8)) % np.uint64(2 * pad + 1)).astype(np.int64))
    flip = torch.from_numpy(((bits >> np.uint64(16)) & np.uint64(1)).astype(bool))
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h)[None]
    cols = dx[:, None] + torch.where(flip[:, None], torch.arange(w - 1, -1, -1)[None], torch.arange(w)[None])
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows[:, None, :, None],
                  cols[:, None, None, :]]


def _stream(data: FolderData, shares, seed: int, epoch: int, train: bool, raw: bool):
    transforms = (train_transforms if train else val_transforms)(data.resolution)
    dataset = data.folder.with_transforms(transforms)
    keys = ([(int(i), int(s)) for i, s in zip(share, sample_seed(seed, epoch, share), strict=True)]
            for share in shares)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=keys, num_workers=data.workers,
                                         collate_fn=collate, pin_memory=torch.cuda.is_available())
    for x, y, bad in loader:
        if bad:
            data.skipped += len(bad)
            data.bad_examples.extend(bad[:max(0, 5 - len(data.bad_examples))])
        if not len(y):
            c = data.folder.channels
            x = torch.empty(0, c, data.resolution, data.resolution, dtype=torch.uint8)
        yield (x if raw else normalize(x)), y


def endless_batches(data: ImageData | FolderData, indices: np.ndarray, batch_size: int, seed: int,
                    epoch: int, rank: int = 0, world: int = 1,
                    raw: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled batches that start over (with a new order) when the indices run out."""
    rnd = 0
    while True:
        yield from batches(data, indices, batch_size, seed=seed + 7919 * (rnd + 1), epoch=epoch, rank=rank,
                           world=world, raw=raw)
        rnd += 1
