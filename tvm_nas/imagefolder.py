"""A streaming image folder: ``torchvision.datasets.ImageFolder`` semantics with torch + PIL transforms.

torchvision is not a dependency: the PyPI wheel that matches our torch is built against CUDA torch and does not
import beside the CPU build (``operator torchvision::nms does not exist``), and the matching CUDA torch is a
multi-GB download. The few transforms a search needs are written here with the signatures and algorithms of
torchvision's (``RandomResizedCrop``, ``RandomHorizontalFlip``, ``Resize``, ``CenterCrop``), so a folder reads the
same as with ``torchvision.datasets.ImageFolder``: one sub-folder per class, class names sorted, images found
recursively inside each class folder (hidden entries skipped).

Only the file list is held in memory, as one numpy byte-string array (no Python object per file, so DataLoader
workers do not copy it page by page through reference counts). Every sample carries its own random seed, so an
augmented epoch is the same whatever the number of workers or processes.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from .errors import TvmNasError

# torchvision's IMG_EXTENSIONS plus .gif
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class RandomResizedCrop:
    """Crop a random area (``scale`` of the image, aspect ``ratio``) and resize it to ``size`` (torchvision's)."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        self.size, self.scale, self.ratio = size, scale, ratio

    def params(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """(left, top, w, h) of the crop: ten tries inside the image, else the central crop of a legal ratio."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, width - w), rng.randint(0, height - h), w, h
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img, rng: random.Random):
        from PIL import Image

        left, top, w, h = self.params(*img.size, rng)
        return img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))


class RandomHorizontalFlip:
    """Mirror the image with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img, rng: random.Random):
        from PIL import Image

        return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < self.p else img


class Resize:
    """Resize the shorter side to ``size``, keeping the aspect ratio."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img, rng: random.Random | None = None):
        from PIL import Image

        w, h = img.size
        if w <= h:
            new = (self.size, max(1, int(self.size * h / w)))
        else:
            new = (max(1, int(self.size * w / h)), self.size)
        return img if new == (w, h) else img.resize(new, Image.BILINEAR)


class CenterCrop:
    """The central ``size`` x ``size`` square (the image must be at least that large: follow a Resize)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img, rng: random.Random | None = None):
        w, h = img.size
        left, top = int(round((w - self.size) / 2)), int(round((h - self.size) / 2))
        return img.crop((left, top, left + self.size, top + self.size))


def train_transforms(resolution: int) -> list:
    """Random-resized crop and horizontal flip (the ImageNet training recipe)."""
    return [RandomResizedCrop(resolution), RandomHorizontalFlip()]


def val_transforms(resolution: int) -> list:
    """Resize the shorter side to resolution / 0.875, then the central crop (224 <- 256 on ImageNet)."""
    return [Resize(int(resolution / 0.875)), CenterCrop(resolution)]


def find_classes(root: Path) -> list[str]:
    """Class names: the sorted sub-folders of ``root``, hidden ones skipped."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


class ImageFolder(torch.utils.data.Dataset):
    """Images under ``root/<class>/...``, decoded on demand.

    ``dataset[(index, seed)]`` returns ``(uint8 tensor (C, H, W), label)`` or ``(None, path)`` for an image that
    cannot be read, so that a batch can drop it; ``dataset[index]`` is the same with seed 0.

    Args:
        root: the folder.
        channels: 1 (gray) or 3 (RGB).

    Raises:
        TvmNasError: missing folder, no class folders, fewer than two classes, a class folder without images.
    """

    def __init__(self, root: str | os.PathLike, channels: int = 3):
        root = Path(root)
        if not root.is_dir():
            raise TvmNasError(f"{root}: image folder not found (expected one sub-folder per class)")
        self.root, self.channels = root, channels
        self.classes = find_classes(root)
        if not self.classes:
            raise TvmNasError(f"{root}: no class sub-folders (expected {root}/<class>/<image>.png ...)")
        if len(self.classes) < 2:
            raise TvmNasError(f"{root}: only one class ('{self.classes[0]}'); a classifier needs at least two "
                              "class sub-folders")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        files, labels = [], []
        for label, name in enumerate(self.classes):
            found = sorted(_images_under(root / name, root))
            if not found:
                raise TvmNasError(f"{root / name}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
            labels.append(np.full(len(found), label, dtype=np.int32))
        self.files = np.array([os.fsencode(f) for f in files])  # relative paths, one fixed-width array
        del files
        self.targets = np.concatenate(labels)
        self.transforms: list = []

    def __len__(self) -> int:
        return len(self.targets)

    def with_transforms(self, transforms: list) -> ImageFolder:
        """A view of this folder (sharing the file list) that applies ``transforms``."""
        view = object.__new__(ImageFolder)
        view.__dict__.update(self.__dict__)
        view.transforms = list(transforms)
        return view

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(self.files[index])

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        from PIL import Image, UnidentifiedImageError

        path = self.path(index)
        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                rng = random.Random(seed)
                for t in self.transforms:
                    im = t(im, rng)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None, str(path)
        x = torch.from_numpy(arr.copy())
        return (x[None] if x.ndim == 2 else x.permute(2, 0, 1).contiguous()), int(self.targets[index])


def _images_under(folder: Path, root: Path):
    """Image files under ``folder`` (recursively, hidden entries skipped), following a directory symlink only when
    it leads outside ``root`` and to a directory not walked yet: a link back into the folder would count its images
    twice, under another class, and a loop would never end."""
    root_real = os.path.realpath(root)
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if os.path.islink(full) and (real == root_real or real.startswith(root_real + os.sep) or real in seen):
                continue  # back into the folder, or walked already
            if real in seen:
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES):
                yield os.path.relpath(os.path.join(dirpath, f), root)


def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack the readable samples; returns ``(images, labels, paths of the unreadable ones)``."""
    good = [(x, y) for x, y in samples if x is not None]
    bad = [y for x, y in samples if x is None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.int64), bad
