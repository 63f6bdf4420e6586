"""Datasets: builtin digits, streamed image folders, CIFAR-10 batches, the split, the batch order; every bad input."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tvm_nas.data import FolderData, batches, load_data, train_val_split
from tvm_nas.errors import TvmNasError
from tvm_nas.imagefolder import CenterCrop, RandomResizedCrop, Resize
from tvm_nas.space import load_space


@pytest.fixture(scope="module")
def tiny():
    return load_space("tiny")


def test_builtin_fits_the_space(tiny):
    d = load_data("builtin", tiny)
    assert d.images.shape == (1797, 3, 16, 16) and d.images.dtype == torch.uint8
    assert sorted(d.labels.unique().tolist()) == list(range(10)) and len(d.classes) == 10
    assert d.images.float().std() > 10  # real pictures, not blank
    gray_space = tiny.model_copy(update={"input": tiny.input.model_copy(update={"channels": 1})})
    gray = load_data("builtin", gray_space)
    assert gray.images.shape == (1797, 1, 16, 16)
    a, b = (load_data("builtin", tiny, max_samples=100, seed=3) for _ in range(2))
    assert torch.equal(a.images, b.images) and len(a) == 100


def test_split_and_batches_are_deterministic():
    tr, va = train_val_split(100, 0.2, seed=1)
    assert len(va) == 20 and len(tr) == 80 and not set(tr) & set(va) and set(tr) | set(va) == set(range(100))
    tr2, va2 = train_val_split(100, 0.2, seed=1)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not np.array_equal(va, train_val_split(100, 0.2, seed=2)[1])
    with pytest.raises(TvmNasError):
        train_val_split(1, 0.2, seed=0)


def test_batch_order_depends_on_seed_and_epoch(tiny):
    d = load_data("builtin", tiny, max_samples=50)
    idx = np.arange(50)

    def order(seed, epoch):
        return torch.cat([y for _, y in batches(d, idx, 16, seed, epoch)])

    assert torch.equal(order(0, 1), order(0, 1))
    assert not torch.equal(order(0, 1), order(0, 2))
    x, _ = next(batches(d, idx, 16))
    assert x.dtype == torch.float32 and -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert sum(len(y) for _, y in batches(d, idx, 16, 0, 0, drop_last=True)) == 48


def _folder(root, classes=("cat", "dog"), n=3, size=(20, 12), mode="RGB"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    return root


def test_imagefolder(tiny, tmp_path):
    root = _folder(tmp_path / "imgs", mode="L")
    (root / "dog" / "nested").mkdir()
    Image.fromarray(np.zeros((12, 20), np.uint8), "L").save(root / "dog" / "nested" / "deep.png")
    (root / ".hidden").mkdir()  # not a class
    d = load_data(f"imagefolder:{root}", tiny, workers=0)
    assert isinstance(d, FolderData) and d.classes == ["cat", "dog"] and len(d) == 7
    assert d.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert d.describe()["shape"] == [3, 16, 16] and d.describe()["streamed"]
    idx = np.arange(7)
    (x, y), = batches(d, idx, 8, raw=True)  # validation transforms: resize + centre crop, deterministic
    assert x.shape == (7, 3, 16, 16) and x.dtype == torch.uint8 and y.tolist() == d.labels.tolist()
    assert torch.equal(x, next(batches(d, idx, 8, raw=True))[0])
    # training transforms: random-resized crop + flip, the same for a (seed, epoch) whatever the workers ...
    x0, y0 = next(batches(d, idx, 8, seed=1, epoch=0, train=True, raw=True))
    d.workers = 2
    x2, y2 = next(batches(d, idx, 8, seed=1, epoch=0, train=True, raw=True))
    assert x0.shape == (7, 3, 16, 16) and torch.equal(x0, x2) and torch.equal(y0, y2)
    # ... and different in another epoch
    order = np.argsort(y0.numpy(), kind="stable")
    x3, y3 = next(batches(d, idx, 8, seed=1, epoch=1, train=True, raw=True))
    assert not torch.equal(x0[order], x3[np.argsort(y3.numpy(), kind="stable")])
    # two processes: the shares of a global batch are its consecutive halves
    halves = [next(batches(d, idx, 6, seed=1, rank=r, world=2, raw=True)) for r in (0, 1)]
    whole = next(batches(d, idx, 6, seed=1, raw=True))
    assert torch.equal(torch.cat([h[1] for h in halves]), whole[1])
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])


def test_imagefolder_skips_and_counts_bad_images(tiny, tmp_path):
    root = _folder(tmp_path / "imgs", n=4)
    (root / "cat" / "9.png").write_bytes(b"not a png")
    (root / "dog" / "8.jpg").write_bytes(b"\xff\xd8\xff truncated jpeg")
    d = load_data(f"imagefolder:{root}", tiny, workers=1)
    assert len(d) == 10
    got = [y for _, y in batches(d, np.arange(10), 4, seed=0, train=True)]
    assert sum(len(y) for y in got) == 8 and d.skipped == 2
    assert {os.path.basename(p) for p in d.bad_examples} == {"9.png", "8.jpg"}


def test_transforms_follow_torchvision():
    import random

    img = Image.fromarray(np.arange(40 * 30 * 3, dtype=np.uint8).reshape(30, 40, 3) % 251)
    rng = random.Random(0)
    crop = RandomResizedCrop(16)
    for _ in range(200):
        left, top, w, h = crop.params(40, 30, rng)
        assert 0 <= left and left + w <= 40 and 0 <= top and top + h <= 30
        assert 0.08 * 1200 * 0.75 <= w * h <= 1200  # rounding can take the area a little under 8 %
    assert crop(img, rng).size == (16, 16)
    assert Resize(18)(img).size == (24, 18)  # shorter side to 18, aspect kept
    out = CenterCrop(16)(Resize(18)(img))
    assert out.size == (16, 16)
    assert np.array_equal(np.asarray(out), np.asarray(Resize(18)(img))[1:17, 4:20])


def _cifar(root, n=8, data=None, labels=None):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8) if data is None else data,
             b"labels": list(rng.integers(0, 10, n)) if labels is None else labels}
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump(batch, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def test_cifar10(tiny, tmp_path):
    root = _cifar(tmp_path / "cifar")
    d = load_data(f"cifar10:{root}", tiny)
    assert d.images.shape == (8, 3, 16, 16) and d.classes[0] == "c0" and len(d.labels) == 8


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _bad_cases(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    noimg = tmp_path / "noimg"
    (noimg / "a").mkdir(parents=True)
    (noimg / "b").mkdir()
    one = _folder(tmp_path / "one", classes=["only"])
    many = _folder(tmp_path / "many", classes=[f"k{i}" for i in range(11)], n=1)
    evil = tmp_path / "evil"
    evil.mkdir()
    with open(evil / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil()}, f)
    trunc = _cifar(tmp_path / "trunc")
    (trunc / "data_batch_1").write_bytes((trunc / "data_batch_1").read_bytes()[:100])
    return [
        ("mnist", "unknown data spec"),
        ("imagefolder:", "unknown data spec"),
        (f"imagefolder:{tmp_path / 'missing'}", "not found"),
        (f"imagefolder:{empty}", "no class sub-folders"),
        (f"imagefolder:{noimg}", "has no images"),
        (f"imagefolder:{one}", "only one class"),
        (f"imagefolder:{many}", "11 classes"),
        (f"cifar10:{tmp_path / 'missing'}", "not found"),
        (f"cifar10:{empty}", "no data_batch"),
        (f"cifar10:{evil}", "corrupt CIFAR-10 batch"),
        (f"cifar10:{trunc}", "corrupt CIFAR-10 batch"),
        (f"cifar10:{_cifar(tmp_path / 'shape', data=np.zeros((4, 100), np.uint8), labels=[0] * 4)}", "shape"),
        (f"cifar10:{_cifar(tmp_path / 'labels', n=4, labels=[0, 1, 2, 99])}", "labels"),
    ]


def test_bad_data_is_one_clear_line(tiny, tmp_path, capfd):
    for spec, match in _bad_cases(tmp_path):
        with pytest.raises(TvmNasError, match=match) as e:
            load_data(spec, tiny)
        assert "\n" not in str(e.value), spec
    assert "pwned" not in capfd.readouterr().out  # the pickle's code never ran


def test_thumbnails_are_held_in_memory_with_the_small_image_recipe(tmp_path):
    """A folder of images no larger than the input (CIFAR-like) is decoded once; larger photographs stream."""
    from conftest import photo_folders

    from tvm_nas.data import ImageData

    tiny = load_space("tiny")
    train, _ = photo_folders(tmp_path / "p", train=8, test=1, size=16, classes=3)
    (train / "class01" / "bad.png").write_bytes(b"not a png")
    d = load_data(f"imagefolder:{train}", tiny, workers=0)
    assert isinstance(d, ImageData) and d.augment == "crop+flip" and len(d) == 24 and d.skipped == 1
    assert d.images.shape == (24, 3, 16, 16) and d.classes == ["class00", "class01", "class02"]
    first = np.asarray(Image.open(train / "class00" / "000.png").convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(d.images[0].numpy(), first)  # decoded as is, not resized or cropped
    # validation batches are the images; training batches are padded crops and mirrors, fixed by (seed, epoch)
    idx = np.arange(len(d))
    assert torch.equal(next(batches(d, idx, 24, raw=True))[0], d.images)
    a = next(batches(d, idx, 24, seed=1, epoch=0, train=True, raw=True))
    b = next(batches(d, idx, 24, seed=1, epoch=0, train=True, raw=True))
    c = next(batches(d, idx, 24, seed=1, epoch=1, train=True, raw=True))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    # bigger photographs are streamed with the random-resized-crop recipe
    big = _folder(tmp_path / "big", size=(40, 30))
    assert isinstance(load_data(f"imagefolder:{big}", tiny, workers=0), FolderData)


def test_crop_flip_is_a_shifted_window_of_the_padded_image():
    from tvm_nas.data import crop_flip

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.int64).reshape(2, 3, 8, 8).to(torch.uint8)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))  # 8 // 8 = 1 pixel
    flips = 0
    for seed in range(40):
        out = crop_flip(x, np.array([seed, seed + 1000]))
        for i in range(2):
            windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
            plain = any(torch.equal(out[i], w) for w in windows)
            mirrored = any(torch.equal(out[i], w.flip(-1)) for w in windows)
            assert plain or mirrored
            flips += mirrored and not plain
    assert 20 <= flips <= 60  # about half of the 80 draws are mirrored


def test_unreadable_images_beyond_a_share_are_refused(tmp_path):
    """A few unreadable images are skipped and counted; more than 5% of a folder refuses the data in one line."""
    from conftest import photo_folders

    tiny = load_space("tiny")
    train, _ = photo_folders(tmp_path / "p", train=4, test=1, size=16, classes=2)
    for i in range(2):
        (train / "class00" / f"bad{i}.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(TvmNasError, match=r"2 of 10 images could not be read \(more than 5%"):
        load_data(f"imagefolder:{train}", tiny, workers=0)


def test_directory_symlinks_back_into_the_folder_are_not_followed(tmp_path):
    """A link back into the folder (or a loop) would count images twice under another class, or never end."""
    tiny = load_space("tiny")
    root = _folder(tmp_path / "imgs", n=3)
    os.symlink(root, root / "cat" / "loop")  # the whole folder again, inside 'cat'
    os.symlink(root / "cat", root / "dog" / "cats")  # another class's images, inside 'dog'
    os.symlink(root / "dog" / "x", root / "dog" / "x")  # a link to itself
    (root / "dog" / "sub").mkdir()
    os.symlink(root / "dog", root / "dog" / "sub" / "up")  # a loop through a real sub-folder
    outside = _folder(tmp_path / "elsewhere", classes=("more",), n=2)
    os.symlink(outside / "more", root / "dog" / "more")  # outside the folder: followed
    d = load_data(f"imagefolder:{root}", tiny, workers=0)
    assert d.labels.tolist() == [0, 0, 0] + [1] * 5


def test_a_skipped_block_has_one_spelling():
    """(X, zero) and (zero, X) in interchangeable blocks are one net: its canonical spelling puts the zeros last."""
    import itertools

    from tvm_nas.space import canonical_ops

    space = load_space("tiny-cifar")
    assert canonical_ops(space, ["mbconv_k3_e3", "zero", "mbconv_k5_e3"]) == ["mbconv_k3_e3", "mbconv_k5_e3", "zero"]
    assert canonical_ops(space, ["mbconv_k3_e3", "mbconv_k3_e6", "mbconv_k5_e3"]) == [
        "mbconv_k3_e3", "mbconv_k3_e6", "mbconv_k5_e3"]  # order of real blocks is kept
    nets = {tuple(canonical_ops(space, ops)) for ops in itertools.product(*(b.candidates for b in space.blocks()))}
    assert len(nets) == 39  # 48 spellings: 3 x (16 - 3)
