"""Cars196 (Krause et al., "3D Object Representations for Fine-Grained Categorization", 2013): 16,185 car
photos of 196 models.

Layout (the official files): ``<root>/cars_annos.mat`` (the all-images annotation file, a MATLAB v5 struct
array ``annotations`` with fields ``relative_im_path`` such as ``car_ims/000001.jpg`` and ``class`` in 1..196)
and ``<root>/car_ims/`` (``car_ims.tgz`` extracted). The ``.mat`` is read with ``scipy.io.loadmat``, which
parses data only (nothing is unpickled or executed).

Zero-shot split: classes 1-98 train (8,054 images), 99-196 test (8,131); the file's own
``test`` flag is not used. Labels are the original class ids (1..196). Items: (3, 224, 224) float32 in [0, 1]
with the 224 transforms of ``images.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustbench_dml.datasets.base import DATASETS, DatasetInfo
from robustbench_dml.datasets.images import (
    ImageListDataset, check_images, check_split, malformed, not_found, require_root,
)

TITLE = "Cars196"
HINT = ("download cars_annos.mat and car_ims.tgz (Stanford Cars, https://ai.stanford.edu/~jkrause/cars/car_dataset.html) "
        "and extract car_ims/ beside cars_annos.mat in --data-root")
INFO = DatasetInfo(id="cars", image_size=224, channels=3, preset="224", suite="rob224",
                   source="Stanford Cars cars_annos.mat + car_ims.tgz, extracted in --data-root")
NUM_CLASSES = 196
LAST_TRAIN_CLASS = 98


def _scalar(value):
    """The single element of a MATLAB cell (loadmat wraps strings as (1,) and numbers as (1, 1) arrays)."""
    flat = np.asarray(value).ravel()
    if flat.size != 1:
        raise ValueError(f"expected one value, found {flat.size}")
    return flat[0]


def read_annotations(mat_path: Path) -> tuple[list[str], list[int]]:
    """(relative image paths, class ids) of every annotation in ``cars_annos.mat``, validated."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(mat_path))
    except NotImplementedError:
        raise malformed(TITLE, mat_path, "a MATLAB v7.3 (HDF5) file, expected the official v5 file", HINT) from None
    except Exception as e:  # scipy raises ValueError/TypeError/OSError/... on damaged files
        reason = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        raise malformed(TITLE, mat_path, f"not a readable MATLAB file ({reason})", HINT) from None
    ann = mat.get("annotations")
    fields = ann.dtype.names if isinstance(ann, np.ndarray) else None
    if not fields or "relative_im_path" not in fields or "class" not in fields:
        raise malformed(TITLE, mat_path, "no struct array 'annotations' with fields relative_im_path and class "
                                         "(is this cars_annos.mat, the all-images file?)", HINT)
    paths, classes = [], []
    for i, rec in enumerate(ann.ravel()):
        try:
            rel = str(_scalar(rec["relative_im_path"]))
            cls = int(_scalar(rec["class"]))
        except (ValueError, TypeError) as e:
            raise malformed(TITLE, mat_path, f"annotation {i + 1}: {e}", HINT) from None
        if not 1 <= cls <= NUM_CLASSES:
            raise malformed(TITLE, mat_path, f"annotation {i + 1} ({rel}) has class {cls}, "
                                             f"expected 1..{NUM_CLASSES}", HINT)
        paths.append(rel)
        classes.append(cls)
    if not paths:
        raise malformed(TITLE, mat_path, "no annotations", HINT)
    return paths, classes


@DATASETS.register("cars")
class Cars196(ImageListDataset):
    info = INFO
    title = TITLE
    hint = HINT

    def __init__(self, root: str | None = None, split: str = "train", *, augment: bool | None = None,
                 generator: torch.Generator | None = None):
        check_split(split)
        folder = require_root(root, TITLE, HINT)
        mat_path = folder / "cars_annos.mat"
        if not mat_path.is_file():
            raise not_found(TITLE, mat_path, HINT)
        rels, classes = read_annotations(mat_path)
        want_train = split == "train"
        keep = [i for i, c in enumerate(classes) if (c <= LAST_TRAIN_CLASS) == want_train]
        if not keep:
            span = "1-98" if want_train else "99-196"
            raise malformed(TITLE, mat_path, f"no image of classes {span} (the {split} split)", HINT)
        paths = [folder / rels[i] for i in keep]
        check_images(paths, folder, mat_path, TITLE, HINT)
        super().__init__(paths, [classes[i] for i in keep], INFO,
                         augment=want_train if augment is None else augment, generator=generator)
