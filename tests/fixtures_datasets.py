"""Builders of tiny datasets in the official on-disk layouts, written independently of the loaders.

Each builder writes into a folder and returns what a correct loader must produce, so the tests compare the
loader against values fixed here (file order, labels, pixel bytes), not against the loader itself.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ----------------------------------------------------------------------------------------------- IDX
def idx_bytes(array: np.ndarray, *, type_byte: int = 0x08, ndim: int | None = None) -> bytes:
    """An IDX blob: 0, 0, type byte, ndim, big-endian uint32 dims, then the uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    ndim = array.ndim if ndim is None else ndim
    return bytes([0, 0, type_byte, ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_bytes(path: Path, data: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def make_idx(folder: Path, *, n_train: int = 12, n_test: int = 6, gz: bool = False, seed: int = 0,
             size: int = 28) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four IDX files in ``folder``; returns {split: (images uint8 (N, size, size), labels uint8 (N,))}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255     # the extremes map to exactly 0.0 and 1.0
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        img_name, lab_name = IDX_NAMES[split]
        write_bytes(folder / img_name, idx_bytes(images), gz)
        write_bytes(folder / lab_name, idx_bytes(labels), gz)
        out[split] = (images, labels)
    return out


# ------------------------------------------------------------------------------------------- images
def coordinate_image() -> Image.Image:
    """256x256 RGB where R = column, G = row, B = 0: any 224 crop reveals its offset and orientation."""
    cols, rows = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    return Image.fromarray(np.stack([cols, rows, np.zeros_like(cols)], axis=-1), mode="RGB")


def photo(rng: np.random.Generator, *, gray: bool = False) -> Image.Image:
    """A small random image of random size (not square, not 256), RGB or single-channel."""
    h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
    if gray:
        return Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8), mode="L")
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


def save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


# ---------------------------------------------------------------------------------------------- CUB
CUB_CLASSES = (1, 2, 100, 101, 102, 200)


def make_cub(root: Path, *, classes=CUB_CLASSES, per_class: int = 2, nested: bool = True, seed: int = 0):
    """CUB_200_2011 layout. The first image of the first class is the coordinate PNG; one image is grayscale.

    Returns {"folder": Path, "train": [(path, class)], "test": [(path, class)]} in images.txt order.
    """
    rng = np.random.default_rng(seed)
    folder = root / "CUB_200_2011" if nested else root
    images_lines, label_lines = [], []
    expected = {"train": [], "test": []}
    image_id = 0
    for c in classes:
        class_dir = f"{c:03d}.Bird_{c}"
        for k in range(per_class):
            image_id += 1
            if image_id == 1:
                rel, img = f"{class_dir}/coords_{k}.png", coordinate_image()
            else:
                rel, img = f"{class_dir}/Bird_{c}_{k:04d}_{image_id}.jpg", photo(rng, gray=image_id == 3)
            save(img, folder / "images" / rel)
            images_lines.append(f"{image_id} {rel}")
            label_lines.append(f"{image_id} {c}")
            expected["train" if c <= 100 else "test"].append((folder / "images" / rel, c))
    (folder / "images.txt").write_text("\n".join(images_lines) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(label_lines) + "\n")
    (folder / "train_test_split.txt").write_text(
        "\n".join(f"{i} {i % 2}" for i in range(1, image_id + 1)) + "\n")   # ignored by the zero-shot split
    expected["folder"] = folder
    return expected


# --------------------------------------------------------------------------------------------- Cars
CARS_CLASSES = (1, 2, 98, 99, 100, 196)


def cars_annotations(entries) -> np.ndarray:
    """The (1, N) struct array of the official cars_annos.mat: relative_im_path, bbox_*, class, test."""
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.zeros((1, len(entries)), dtype=[(f, "O") for f in fields])
    for i, (rel, cls, test) in enumerate(entries):
        u8 = lambda v: np.array([[v]], dtype=np.uint8)  # noqa: E731 - MATLAB stores these as 1x1 uint8
        ann[0, i] = (np.array([rel]), u8(1), u8(2), u8(30), u8(40), u8(cls), u8(test))
    return ann


def write_cars_mat(path: Path, entries, *, key: str = "annotations") -> None:
    from scipy.io import savemat

    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Car {i}" for i in range(1, 197)]
    savemat(str(path), {key: cars_annotations(entries), "class_names": names})


def make_cars(root: Path, *, classes=CARS_CLASSES, per_class: int = 2, seed: int = 1):
    """cars_annos.mat + car_ims/NNNNNN.jpg in ``root``; the file's ``test`` flag alternates (it must be ignored)."""
    rng = np.random.default_rng(seed)
    entries, expected = [], {"train": [], "test": []}
    n = 0
    for c in classes:
        for _ in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            save(photo(rng, gray=n == 2), root / rel)
            entries.append((rel, c, n % 2))
            expected["train" if c <= 98 else "test"].append((root / rel, c))
    write_cars_mat(root / "cars_annos.mat", entries)
    expected["entries"] = entries
    return expected


# ---------------------------------------------------------------------------------------------- SOP
SOP_HEADER = "image_id class_id super_class_id path"


def make_sop(root: Path, *, nested: bool = True, seed: int = 2):
    """Stanford_Online_Products with Ebay_train.txt (classes 1-3) and Ebay_test.txt (classes 4-6)."""
    rng = np.random.default_rng(seed)
    folder = root / "Stanford_Online_Products" if nested else root
    supers = {1: "bicycle_final", 2: "chair_final"}
    plan = {"train": [(1, 1), (2, 1), (3, 2)], "test": [(4, 1), (5, 2), (6, 2)]}
    expected, image_id = {"folder": folder}, 0
    for split, classes in plan.items():
        lines, expected[split] = [SOP_HEADER], []
        for cls, sup in classes:
            for k in range(2):
                image_id += 1
                rel = f"{supers[sup]}/{1000 + cls}_{k}.JPG"
                save(photo(rng, gray=image_id == 4), folder / rel)
                lines.append(f"{image_id} {cls} {sup} {rel}")
                expected[split].append((folder / rel, cls))
        (folder / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return expected


def reference_eval(path: Path) -> np.ndarray:
    """Independent test transform: PIL bilinear resize to 256x256, rows/cols 16..239, HWC -> CHW in [0,1]."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB").resize((256, 256), Image.BILINEAR), dtype=np.float32)
    return arr[16:240, 16:240].transpose(2, 0, 1) / 255.0
