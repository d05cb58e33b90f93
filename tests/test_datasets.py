"""Dataset loaders: official layouts, class-disjoint splits, 224 transforms, one-line errors, genuine MNIST."""

from __future__ import annotations

import gzip
import hashlib
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_dml import datasets
from robustbench_dml.datasets import DATASETS
from robustbench_dml.errors import UserError

try:
    from tests import fixtures_datasets as fx
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import fixtures_datasets as fx

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Loaders must never download: any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def one_line_error(fn, *needles) -> str:
    """Run ``fn``; it must raise UserError whose message is one line containing every needle."""
    with pytest.raises(UserError) as info:
        fn()
    msg = str(info.value)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, f"{needle!r} not in {msg!r}"
    return msg


# ================================================================================== MNIST / Fashion
@pytest.mark.parametrize("name", ["mnist", "fashion"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_flat_layout(tmp_path, name, gz):
    truth = fx.make_idx(tmp_path, gz=gz)
    for split in ("train", "test"):
        ds = datasets.create(name, root=str(tmp_path), split=split)
        images, labels = truth[split]
        assert len(ds) == len(labels)
        assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(labels),)
        np.testing.assert_array_equal(ds.labels, labels)
        for i in (0, len(ds) - 1):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
            assert y == labels[i] and isinstance(y, int)
            np.testing.assert_allclose(x[0].numpy(), images[i] / 255.0, rtol=0, atol=1e-7)
        x0 = ds[0][0]
        assert x0[0, 0, 0] == 0.0 and x0[0, 0, 1] == 1.0


@pytest.mark.parametrize("name,sub", [("mnist", "MNIST/raw"), ("fashion", "FashionMNIST/raw")])
def test_idx_torchvision_layout(tmp_path, name, sub):
    truth = fx.make_idx(tmp_path / sub, n_train=10, n_test=4, gz=True)
    ds = datasets.create(name, root=tmp_path, split="test")
    np.testing.assert_array_equal(ds.labels, truth["test"][1])
    np.testing.assert_array_equal((ds.images[:, 0]).numpy(), truth["test"][0])


def test_idx_plain_preferred_and_gzip_detected_by_content(tmp_path):
    plain = fx.make_idx(tmp_path, seed=1)
    fx.make_idx(tmp_path, gz=True, seed=2)            # different content under the .gz names
    ds = datasets.create("mnist", root=tmp_path, split="train")
    np.testing.assert_array_equal(ds.labels, plain["train"][1])
    # a gzip stream saved without the .gz suffix is still read
    other = tmp_path / "other"
    truth = fx.make_idx(other, seed=3)
    for f in other.iterdir():
        f.write_bytes(gzip.compress(f.read_bytes()))
    np.testing.assert_array_equal(datasets.create("mnist", root=other, split="test").labels, truth["test"][1])


def test_idx_dataset_subfolder_beside_the_other(tmp_path):
    m = fx.make_idx(tmp_path / "mnist", seed=4)
    f = fx.make_idx(tmp_path / "fashion-mnist", seed=5)
    np.testing.assert_array_equal(datasets.create("mnist", root=tmp_path).labels, m["train"][1])
    np.testing.assert_array_equal(datasets.create("fashion", root=tmp_path).labels, f["train"][1])


def _idx_case(tmp_path, case):
    """Build a broken MNIST folder; return the file the error must name and a phrase it must contain."""
    fx.make_idx(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte"
    lab = tmp_path / "train-labels-idx1-ubyte"
    if case == "missing labels":
        lab.unlink()
        return lab, "not found"
    if case == "wrong magic":       # a labels file where the images belong
        img.write_bytes(fx.idx_bytes(np.zeros(12, np.uint8)))
        return img, "magic number 0x00000801, expected 0x00000803"
    if case == "type byte":         # int32 data type instead of unsigned byte
        img.write_bytes(fx.idx_bytes(np.zeros((12, 28, 28), np.uint8), type_byte=0x0C))
        return img, "magic number 0x00000c03"
    if case == "truncated":
        img.write_bytes(img.read_bytes()[:-10])
        return img, "truncated"
    if case == "trailing":
        img.write_bytes(img.read_bytes() + b"\0")
        return img, "trailing bytes"
    if case == "short header":
        img.write_bytes(b"\0\0\x08\x03\0\0\0\x0c\0\0")
        return img, "truncated IDX header"
    if case == "empty":
        img.write_bytes(b"")
        return img, "too short"
    if case == "count mismatch":
        lab.write_bytes(fx.idx_bytes(np.zeros(11, np.uint8)))
        return img, "12 images but 11 labels"
    if case == "label range":
        lab.write_bytes(fx.idx_bytes(np.full(12, 10, np.uint8)))
        return lab, "label 10 out of range"
    if case == "image size":
        img.write_bytes(fx.idx_bytes(np.zeros((12, 32, 32), np.uint8)))
        return img, "32x32"
    if case == "bad gzip":
        img.unlink()
        gz = fx.write_bytes(img, fx.idx_bytes(np.zeros((12, 28, 28), np.uint8)), gz=True)
        gz.write_bytes(gz.read_bytes()[:40])
        return gz, "damaged gzip"
    raise AssertionError(case)


IDX_CASES = ["missing labels", "wrong magic", "type byte", "truncated", "trailing", "short header", "empty",
             "count mismatch", "label range", "image size", "bad gzip"]


@pytest.mark.parametrize("case", IDX_CASES)
def test_idx_malformed_one_line(tmp_path, case):
    path, phrase = _idx_case(tmp_path, case)
    one_line_error(lambda: datasets.create("mnist", root=tmp_path), path, phrase, "yann.lecun.com")


def test_idx_missing_everything(tmp_path):
    one_line_error(lambda: datasets.create("mnist"), "--data-root")
    one_line_error(lambda: datasets.create("fashion", root=tmp_path / "nope"), "Fashion-MNIST not found",
                   "train-images-idx3-ubyte", tmp_path / "nope" / "FashionMNIST" / "raw", "zalandoresearch")
    fx.make_idx(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    one_line_error(lambda: datasets.create("mnist", root=tmp_path, split="test"),
                   tmp_path / "t10k-images-idx3-ubyte")


def test_idx_mixup_guard(tmp_path):
    """Full-size label files tell the two datasets apart (Fashion: exactly 6000 per class)."""
    balanced = np.repeat(np.arange(10, dtype=np.uint8), 6000)
    img = np.zeros((1, 28, 28), np.uint8)     # the guard fires on the labels, before the images are read
    fx.write_bytes(tmp_path / "a" / "train-images-idx3-ubyte", fx.idx_bytes(img))
    fx.write_bytes(tmp_path / "a" / "train-labels-idx1-ubyte", fx.idx_bytes(balanced))
    one_line_error(lambda: datasets.create("mnist", root=tmp_path / "a"), "holds Fashion-MNIST labels")
    unbalanced = balanced.copy()
    unbalanced[0] = 1
    fx.write_bytes(tmp_path / "b" / "train-images-idx3-ubyte", fx.idx_bytes(img))
    fx.write_bytes(tmp_path / "b" / "train-labels-idx1-ubyte", fx.idx_bytes(unbalanced))
    one_line_error(lambda: datasets.create("fashion", root=tmp_path / "b"), "holds MNIST labels")
    # a 60000-image balanced set is fine for fashion: it fails only later on the image count
    one_line_error(lambda: datasets.create("fashion", root=tmp_path / "a"), "1 images but 60000 labels")


# ------------------------------------------------------------------- genuine files (../shared/data)
@pytest.fixture(scope="module")
def genuine():
    """Each genuine split parsed once per module (a few seconds for the 47 MB of images)."""
    cache = {}

    def get(name, split):
        folder = SHARED_DATA / ("mnist" if name == "mnist" else "fashion-mnist")
        if not (folder / "train-images-idx3-ubyte.gz").is_file():
            pytest.skip(f"genuine {name} files absent from {folder}")
        if (name, split) not in cache:
            cache[name, split] = datasets.create(name, root=folder, split=split)
        return cache[name, split]

    return get


def _sha256_idx(array: np.ndarray, magic: int) -> str:
    """sha256 of the decompressed official file, rebuilt from the parsed array (header + row-major bytes)."""
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return hashlib.sha256(header + np.ascontiguousarray(array).tobytes()).hexdigest()


def test_genuine_mnist(genuine):
    train, test = genuine("mnist", "train"), genuine("mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    # the published sha256 of the decompressed files (README: first 8 and last 4 hex digits)
    for ds, img_sha, lab_sha in ((train, ("ba891046", "76db"), ("65a50cbb", "01c5")),
                                 (test, ("0fa7898d", "4ce7"), ("ff7bcfd4", "33f2"))):
        h = _sha256_idx(ds.images[:, 0].numpy(), 0x803)
        assert h.startswith(img_sha[0]) and h.endswith(img_sha[1])
        h = _sha256_idx(ds.labels.astype(np.uint8), 0x801)
        assert h.startswith(lab_sha[0]) and h.endswith(lab_sha[1])
    x, y = train[0]
    assert x.shape == (1, 28, 28) and y == 5 and float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_genuine_fashion(genuine):
    train, test = genuine("fashion", "train"), genuine("fashion", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8


def test_genuine_mixup_detected():
    folder = SHARED_DATA / "mnist"
    if not (folder / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("genuine MNIST files absent")
    one_line_error(lambda: datasets.create("fashion", root=folder), "holds MNIST labels, not Fashion-MNIST")


# ======================================================================================== 224 data
def _check_items(ds, expected, split):
    """Labels, paths, shapes, range; the test transform equals an independent PIL reference."""
    assert len(ds) == len(expected)
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [c for _, c in expected]
    assert ds.paths == [p for p, _ in expected]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert y == expected[i][1]
        if split == "test":
            np.testing.assert_allclose(x.numpy(), fx.reference_eval(expected[i][0]), rtol=0, atol=1e-6)
            assert torch.equal(x, ds[i][0])     # deterministic


@pytest.mark.parametrize("nested", [True, False])
def test_cub_split_and_items(tmp_path, nested):
    truth = fx.make_cub(tmp_path, nested=nested)
    root = tmp_path if nested else truth["folder"]
    train = datasets.create("cub", root=root, split="train")
    test = datasets.create("cub", root=root, split="test")
    assert set(train.labels) == {1, 2, 100} and set(test.labels) == {101, 102, 200}
    assert train.augment and not test.augment
    _check_items(test, truth["test"], "test")
    _check_items(train, truth["train"], "train")
    assert train.info == datasets.info("cub")


def test_grayscale_becomes_three_equal_channels(tmp_path):
    truth = fx.make_cub(tmp_path)
    ds = datasets.create("cub", root=tmp_path, split="train", augment=False)
    gray_index = [i for i, (p, _) in enumerate(truth["train"]) if Image.open(p).mode == "L"]
    assert gray_index == [2]
    x = ds[2][0]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def _crop_params(x: np.ndarray) -> tuple[int, int, bool]:
    """(top, left, flipped) of a 224 crop of the coordinate image, checked pixel by pixel."""
    x = np.rint(x * 255).astype(np.int64)
    flip = bool(x[0, 0, 0] > x[0, 0, 1])
    top, left = int(x[1, 0, 0]), int(x[0, 0, -1] if flip else x[0, 0, 0])
    cols = np.arange(224)
    np.testing.assert_array_equal(x[0], np.broadcast_to(left + (cols[::-1] if flip else cols), (224, 224)))
    np.testing.assert_array_equal(x[1], np.broadcast_to((top + cols)[:, None], (224, 224)))
    assert not x[2].any()
    return top, left, flip


def test_train_transform_is_a_random_crop_and_flip(tmp_path):
    """The coordinate image (R = column, G = row, 256x256) reveals each crop's offset and orientation."""
    fx.make_cub(tmp_path)
    ds = datasets.create("cub", root=tmp_path, split="train", generator=torch.Generator().manual_seed(0))
    draws = [_crop_params(ds[0][0].numpy()) for _ in range(40)]
    assert all(0 <= t <= 32 and 0 <= l <= 32 for t, l, _ in draws)
    assert len({t for t, _, _ in draws}) > 8 and len({l for _, l, _ in draws}) > 8
    assert 0 < sum(f for *_, f in draws) < 40
    # the same generator seed replays the same augmentation
    again = datasets.create("cub", root=tmp_path, split="train", generator=torch.Generator().manual_seed(0))
    assert [_crop_params(again[0][0].numpy()) for _ in range(5)] == draws[:5]
    # without a generator the global torch generator drives it
    torch.manual_seed(5)
    a = datasets.create("cub", root=tmp_path, split="train")[0][0]
    torch.manual_seed(5)
    b = datasets.create("cub", root=tmp_path, split="train")[0][0]
    assert torch.equal(a, b)


def test_to_tensor_matches_torchvision():
    from torchvision.transforms import functional as TF

    from robustbench_dml.datasets.images import to_tensor

    rng = np.random.default_rng(3)
    for img in (fx.photo(rng), fx.photo(rng, gray=True).convert("RGB"), fx.coordinate_image()):
        ours, ref = to_tensor(img), TF.to_tensor(img)
        assert ours.dtype == ref.dtype == torch.float32 and ours.is_contiguous()
        assert torch.equal(ours, ref)


def test_train_transform_offsets_cover_the_whole_range():
    """RandomCrop(224) of a 256x256 image: both offsets take every value 0..32; the flip is a fair coin."""
    from robustbench_dml.datasets.images import train_transform

    img, g = fx.coordinate_image(), torch.Generator().manual_seed(1)
    tops, lefts, flips = [], [], 0
    for _ in range(600):
        x = (train_transform(img, g)[:2, 0] * 255).round().int()   # first row of R and G
        flip = bool(x[0, 0] > x[0, 1])
        tops.append(int(x[1, 0]))
        lefts.append(int(x[0, -1] if flip else x[0, 0]))
        flips += flip
    assert set(tops) == set(range(33)) and set(lefts) == set(range(33))
    assert 240 <= flips <= 360        # 600 fair coins: mean 300, sd 12.2


def _cub_case(tmp_path, case):
    truth = fx.make_cub(tmp_path)
    folder = truth["folder"]
    images, labels = folder / "images.txt", folder / "image_class_labels.txt"
    if case == "no labels file":
        labels.unlink()
        return labels, "not found"
    if case == "field count":
        lines = images.read_text().splitlines()
        lines[1] = lines[1].replace(" ", " extra ", 1)
        images.write_text("\n".join(lines) + "\n")
        return images, "line 2 has 3 fields, expected 2"
    if case == "not an integer":
        labels.write_text(labels.read_text().replace("1 1\n", "1 one\n", 1))
        return labels, "line 1 field 2 is 'one', expected an integer"
    if case == "class range":
        labels.write_text(labels.read_text() + "13 201\n")
        return labels, "class 201, expected 1..200"
    if case == "no class":
        images.write_text(images.read_text() + "13 201.X/x.jpg\n")
        return labels, "image id 13 from images.txt has no class"
    if case == "label without image":
        labels.write_text(labels.read_text() + "13 5\n")
        return labels, "image id 13 is not in images.txt"
    if case == "duplicate":
        images.write_text(images.read_text() + "1 001.Bird_1/again.jpg\n")
        return images, "image id 1 is listed twice"
    if case == "missing image":
        truth["test"][1][0].unlink()
        return truth["test"][1][0], "1 of 6 images listed"
    if case == "empty split":
        keep = [ln for ln in labels.read_text().splitlines() if int(ln.split()[1]) <= 100]
        labels.write_text("\n".join(keep) + "\n")
        images.write_text("\n".join(images.read_text().splitlines()[: len(keep)]) + "\n")
        return labels, "no image of classes 101-200"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no labels file", "field count", "not an integer", "class range", "no class",
                                  "label without image", "duplicate", "missing image", "empty split"])
def test_cub_malformed_one_line(tmp_path, case):
    path, phrase = _cub_case(tmp_path, case)
    one_line_error(lambda: datasets.create("cub", root=tmp_path, split="test"), path, phrase, "CUB_200_2011.tgz")


def test_cub_missing_and_corrupt(tmp_path):
    one_line_error(lambda: datasets.create("cub"), "--data-root", "CUB_200_2011.tgz")
    one_line_error(lambda: datasets.create("cub", root=tmp_path),
                   "CUB-200-2011 not found: expected", tmp_path / "CUB_200_2011" / "images.txt")
    truth = fx.make_cub(tmp_path)
    ds = datasets.create("cub", root=tmp_path, split="test")
    truth["test"][0][0].write_bytes(b"not a jpeg")       # damaged after construction: fails on access
    one_line_error(lambda: ds[0], "cannot decode image", truth["test"][0][0])
    truth["test"][1][0].unlink()
    one_line_error(lambda: ds[1], "is missing", truth["test"][1][0])


# ---------------------------------------------------------------------------------------------- Cars
def test_cars_split_and_items(tmp_path):
    truth = fx.make_cars(tmp_path)
    train = datasets.create("cars", root=tmp_path, split="train")
    test = datasets.create("cars", root=tmp_path, split="test")
    assert set(train.labels) == {1, 2, 98} and set(test.labels) == {99, 100, 196}
    _check_items(test, truth["test"], "test")
    _check_items(train, truth["train"], "train")


def test_cars_malformed_one_line(tmp_path):
    one_line_error(lambda: datasets.create("cars"), "--data-root", "cars_annos.mat")
    mat = tmp_path / "cars_annos.mat"
    one_line_error(lambda: datasets.create("cars", root=tmp_path), "Cars196 not found: expected", mat)
    mat.write_bytes(b"garbage, not a MATLAB file")
    one_line_error(lambda: datasets.create("cars", root=tmp_path), mat, "not a readable MATLAB file")
    # a MATLAB v7.3 (HDF5) header: 116 text bytes, 8 subsystem bytes, version 0x0200, endian 'IM'
    mat.write_bytes(b"MATLAB 7.3 MAT-file".ljust(116) + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 512)
    one_line_error(lambda: datasets.create("cars", root=tmp_path), mat, "v7.3")
    fx.write_cars_mat(mat, [("car_ims/000001.jpg", 1, 0)], key="annos")
    one_line_error(lambda: datasets.create("cars", root=tmp_path), mat, "no struct array 'annotations'")
    truth = fx.make_cars(tmp_path)
    fx.write_cars_mat(mat, truth["entries"] + [("car_ims/000013.jpg", 197, 1)])
    one_line_error(lambda: datasets.create("cars", root=tmp_path), mat, "class 197, expected 1..196")
    fx.write_cars_mat(mat, truth["entries"])
    truth["train"][0][0].unlink()
    one_line_error(lambda: datasets.create("cars", root=tmp_path, split="train"),
                   "Cars196 is incomplete: 1 of 6 images", truth["train"][0][0], "car_ims.tgz")
    assert len(datasets.create("cars", root=tmp_path, split="test")) == 6   # the other split is intact
    fx.write_cars_mat(mat, [e for e in truth["entries"] if e[1] <= 98])
    one_line_error(lambda: datasets.create("cars", root=tmp_path, split="test"), "no image of classes 99-196")


# ----------------------------------------------------------------------------------------------- SOP
@pytest.mark.parametrize("nested", [True, False])
def test_sop_split_and_items(tmp_path, nested):
    truth = fx.make_sop(tmp_path, nested=nested)
    root = tmp_path if nested else truth["folder"]
    train = datasets.create("sop", root=root, split="train")
    test = datasets.create("sop", root=root, split="test")
    assert set(train.labels) == {1, 2, 3} and set(test.labels) == {4, 5, 6}
    _check_items(test, truth["test"], "test")
    _check_items(train, truth["train"], "train")


def test_sop_malformed_one_line(tmp_path):
    one_line_error(lambda: datasets.create("sop"), "--data-root", "Stanford_Online_Products.zip")
    one_line_error(lambda: datasets.create("sop", root=tmp_path, split="test"),
                   tmp_path / "Stanford_Online_Products" / "Ebay_test.txt", "not found")
    truth = fx.make_sop(tmp_path)
    index = truth["folder"] / "Ebay_train.txt"
    good = index.read_text()
    index.write_text(good.replace("image_id class_id", "id class", 1))
    one_line_error(lambda: datasets.create("sop", root=tmp_path), index, "line 1 should be the header")
    index.write_text(good + "99 1 1\n")
    one_line_error(lambda: datasets.create("sop", root=tmp_path), index, "has 3 fields, expected 4")
    index.write_text(good + "1 1 1 bicycle_final/1001_0.JPG\n")
    one_line_error(lambda: datasets.create("sop", root=tmp_path), index, "image id 1 is listed twice")
    index.write_text(good + "99 0 1 bicycle_final/1001_0.JPG\n")
    one_line_error(lambda: datasets.create("sop", root=tmp_path), index, "class 0")
    index.write_text(good)
    truth["train"][-1][0].unlink()
    one_line_error(lambda: datasets.create("sop", root=tmp_path), "incomplete: 1 of 6 images", index,
                   truth["train"][-1][0])


def test_missing_check_uses_listing_not_stat_per_file(tmp_path, monkeypatch):
    """Construction lists each folder once; it does not stat every image (SOP has 120k)."""
    import os

    fx.make_sop(tmp_path)
    calls = {"listdir": 0}
    real = os.listdir

    def counting(path="."):
        calls["listdir"] += 1
        return real(path)

    monkeypatch.setattr(os, "listdir", counting)
    monkeypatch.setattr(Path, "exists", lambda self: pytest.fail(f"stat of {self}"))
    datasets.create("sop", root=tmp_path, split="train")
    assert calls["listdir"] == 2    # bicycle_final and chair_final


# =========================================================================================== registry
BUILDERS = {
    "mnist": lambda root: fx.make_idx(root),
    "fashion": lambda root: fx.make_idx(root / "FashionMNIST" / "raw"),
    "cub": lambda root: fx.make_cub(root),
    "cars": lambda root: fx.make_cars(root),
    "sop": lambda root: fx.make_sop(root),
    "digits": lambda root: None,
}


@pytest.mark.parametrize("name", DATASETS.list())
def test_registry_create_every_dataset(tmp_path, name):
    assert name in BUILDERS, f"dataset {name!r} has no fixture builder in tests/test_datasets.py"
    BUILDERS[name](tmp_path)
    info = datasets.info(name)
    assert info.id == name
    assert (info.image_size, info.channels, info.preset, info.suite) in {(28, 1, "28", "rob28"),
                                                                       (224, 3, "224", "rob224")}
    sets = {}
    for split in ("train", "test"):
        ds = datasets.create(name, root=str(tmp_path), split=split)
        assert ds.info == info and len(ds) == len(ds.labels) > 0
        assert ds.labels.dtype == np.int64 and ds.labels.ndim == 1
        x, y = ds[len(ds) - 1]
        assert x.shape == (info.channels, info.image_size, info.image_size) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and y == ds.labels[-1]
        sets[split] = set(ds.labels.tolist())
    if info.preset == "224":   # zero-shot: the test classes are unseen in training
        assert not sets["train"] & sets["test"]
    with pytest.raises(ValueError):
        datasets.create(name, root=str(tmp_path), split="val")


def test_registry_lists_the_issue_datasets():
    assert {"digits", "mnist", "fashion", "cub", "cars", "sop"} <= set(DATASETS.list())
    one_line_error(lambda: datasets.create("cub200", root="x"), "unknown dataset 'cub200'", "cub")
