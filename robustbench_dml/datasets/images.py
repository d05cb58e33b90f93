"""Shared parts of the three 224x224 image-folder datasets (CUB-200-2011, Cars196, SOP).

Images stay on disk and are decoded per item with PIL, converted to RGB (grayscale and CMYK files exist in
CUB and SOP), then transformed as RobRank does:

* train: Resize((256, 256)) -> RandomCrop(224) -> RandomHorizontalFlip(0.5) -> ToTensor
* test:  Resize((256, 256)) -> CenterCrop(224) -> ToTensor

Output: float32 tensor (3, 224, 224) in [0, 1]; there is no mean/std normalisation here (the model does it
inside ``forward``, so attack budgets are pixel budgets).

Random augmentation draws from ``generator`` when one is given, else from torch's default generator. Inside
DataLoader workers the default generator is seeded per worker from the loader's own generator, so passing a
seeded ``torch.Generator`` to the DataLoader makes the augmentation reproducible.

Every listed image is checked at construction, before a command writes anything: its path must stay inside the
dataset folder (an index entry such as ``../../etc/hostname`` is refused, never opened), it must exist (one
directory listing per folder: SOP's 120k files cost a dozen ``listdir`` calls), and its header must be an image PIL
identifies of at most ``Image.MAX_IMAGE_PIXELS`` pixels (an empty file, a text file named ``.jpg`` and a
"decompression bomb" declaring 40000x40000 pixels are refused in one line; reading the headers costs about 0.1 ms
per image). A file whose pixel data is damaged past its header fails when it is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from robustbench_dml.datasets.base import DatasetInfo, RetrievalDataset
from robustbench_dml.errors import UserError
from robustbench_dml.files import read_bounded

RESIZE = 256
CROP = 224


def require_root(root: str | os.PathLike | None, title: str, hint: str) -> Path:
    """The ``--data-root`` folder as a Path; a one-line UserError when it was not given."""
    if root is None:
        raise UserError(f"{title} needs its files: pass --data-root DIR (root=...); {hint}")
    return Path(root).expanduser()


def not_found(title: str, expected: Path, hint: str) -> UserError:
    return UserError(f"{title} not found: expected {expected}; {hint}")


def malformed(title: str, where: Path | str, problem: str, hint: str) -> UserError:
    return UserError(f"{title} is malformed: {where}: {problem}; {hint}")


def read_int_table(path: Path, ncols: int, title: str, hint: str, *, header: str | None = None,
                   path_column: int | None = None) -> list[list]:
    """Rows of a whitespace-separated text index (CUB's ``images.txt``, SOP's ``Ebay_*.txt``).

    Every column is an int except ``path_column`` (kept as a string). ``header``: the exact first line's
    words, checked and skipped. Blank lines are ignored. Any deviation is a one-line UserError naming the
    file and line.
    """
    try:
        text = read_bounded(path, "index").decode("utf-8")
    except UnicodeDecodeError:
        raise malformed(title, path, "not UTF-8 text", hint) from None
    except OSError as e:
        raise malformed(title, path, f"cannot read ({e.strerror or e})", hint) from None
    rows: list[list] = []
    lines = text.splitlines()
    start = 0
    if header is not None:
        if not lines or lines[0].split() != header.split():
            got = lines[0].strip()[:60] if lines else "an empty file"
            raise malformed(title, path, f"line 1 should be the header {header!r}, found {got!r}", hint)
        start = 1
    for lineno, line in enumerate(lines[start:], start=start + 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != ncols:
            raise malformed(title, path, f"line {lineno} has {len(fields)} fields, expected {ncols}", hint)
        row: list = []
        for col, value in enumerate(fields):
            if col == path_column:
                row.append(value)
                continue
            try:
                row.append(int(value))
            except ValueError:
                raise malformed(title, path, f"line {lineno} field {col + 1} is {value[:30]!r}, "
                                             "expected an integer", hint) from None
        rows.append(row)
    if not rows:
        raise malformed(title, path, "no entries", hint)
    return rows


def find_missing(paths: Sequence[Path]) -> list[Path]:
    """The listed files that do not exist, found with one ``os.listdir`` per distinct folder.

    Names absent from a listing are re-checked with ``os.path.exists`` (case-insensitive file systems).
    """
    by_dir: dict[Path, list[Path]] = {}
    for p in paths:
        by_dir.setdefault(p.parent, []).append(p)
    missing: list[Path] = []
    for folder, files in by_dir.items():
        try:
            present = set(os.listdir(folder))
        except OSError:
            present = set()
        missing.extend(p for p in files if p.name not in present and not p.exists())
    return missing


def check_images(paths: Sequence[Path], root: Path, index: Path, title: str, hint: str) -> None:
    """A one-line UserError when an image listed in ``index`` lies outside ``root`` (the dataset folder), is absent,
    or has a header that is not a readable image of an acceptable size (module docstring). Nothing is opened before
    every path is known to stay inside ``root``."""
    inside = os.path.normpath(os.path.abspath(root)) + os.sep
    for p in paths:
        if not os.path.normpath(os.path.abspath(p)).startswith(inside):
            raise malformed(title, index, f"the entry {os.path.relpath(p, root)!r} points outside the dataset "
                                          f"folder {root}", hint)
    missing = find_missing(paths)
    if missing:
        raise UserError(f"{title} is incomplete: {len(missing)} of {len(paths)} images listed in {index} "
                        f"are missing, the first is {missing[0]}; {hint}")
    for p in paths:
        with _opened(p, title, hint) as im:
            if im.width * im.height == 0:
                raise UserError(f"{title}: image {p} has no pixels ({im.width}x{im.height}); {hint}")


def load_rgb(path: Path, title: str, hint: str) -> Image.Image:
    """Decode ``path`` as a 3-channel 8-bit RGB PIL image; a one-line UserError when it cannot be read."""
    with _opened(path, title, hint) as im:
        try:
            return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise UserError(f"{title}: cannot decode image {path} ({_reason(e)}); {hint}") from None


class _opened:
    """``Image.open(path)`` (the header only) as a context, every failure one line: a missing or unreadable file, no
    image PIL knows, or more pixels than ``Image.MAX_IMAGE_PIXELS`` (PIL's decompression-bomb warning and error)."""

    def __init__(self, path: Path, title: str, hint: str) -> None:
        self.path, self.title, self.hint = path, title, hint

    def __enter__(self) -> Image.Image:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                self.image = Image.open(self.path)
        except FileNotFoundError:
            raise UserError(f"{self.title} is incomplete: image {self.path} is missing; {self.hint}") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise UserError(f"{self.title}: image {self.path} declares more than {Image.MAX_IMAGE_PIXELS:,} pixels, "
                            f"too many for a dataset image; {self.hint}") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise UserError(f"{self.title}: cannot decode image {self.path} ({_reason(e)}); {self.hint}") from None
        return self.image

    def __exit__(self, *exc) -> None:
        self.image.close()


def _reason(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def to_tensor(img: Image.Image) -> torch.Tensor:
    """ToTensor for an RGB PIL image: (3, H, W) float32 = uint8 / 255, the same values as torchvision's.

    Done in numpy (single-threaded): per-item torch ops on ~150k elements start the intra-op thread pool,
    which is far slower than one thread when the cores are busy (measured 57 ms vs 2 ms per image).
    """
    arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(np.divide(arr, np.float32(255.0), dtype=np.float32, order="C"))


def eval_transform(img: Image.Image) -> torch.Tensor:
    """Resize((256,256)) -> CenterCrop(224) -> ToTensor: (3, 224, 224) float32 in [0, 1], deterministic."""
    from torchvision.transforms import functional as TF  # here: torchvision's import costs a second or so

    img = TF.resize(img, [RESIZE, RESIZE])
    return to_tensor(TF.center_crop(img, [CROP, CROP]))


def train_transform(img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
    """Resize((256,256)) -> RandomCrop(224) -> RandomHorizontalFlip(0.5) -> ToTensor.

    The crop's top-left corner is uniform over {0..32}^2 and the flip a fair coin, all drawn from
    ``generator`` (torch's default generator when None).
    """
    from torchvision.transforms import functional as TF

    img = TF.resize(img, [RESIZE, RESIZE])
    top, left = torch.randint(0, RESIZE - CROP + 1, (2,), generator=generator).tolist()
    flip = bool(torch.rand((), generator=generator) < 0.5)
    img = TF.crop(img, top, left, CROP, CROP)
    if flip:
        img = TF.hflip(img)
    return to_tensor(img)


class ImageListDataset(RetrievalDataset):
    """A list of image files with integer labels, decoded lazily, with the 224 train or test transform.

    ``augment`` (default: ``split == "train"``) selects the random train transform; ``generator`` optionally
    drives it (see the module docstring).
    """

    title: str = "dataset"
    hint: str = ""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int] | np.ndarray, info: DatasetInfo, *,
                 augment: bool, generator: torch.Generator | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.info = info
        self.augment = bool(augment)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = load_rgb(self.paths[i], self.title, self.hint)
        x = train_transform(img, self.generator) if self.augment else eval_transform(img)
        return x, int(self.labels[i])


def check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
