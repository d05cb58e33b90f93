"""CUB-200-2011 (Wah et al., Caltech-UCSD Birds, 2011): 11,788 bird photos of 200 species.

Layout (the official ``CUB_200_2011.tgz`` extracted): ``<root>/CUB_200_2011/images.txt`` (``image_id
relative_path``), ``image_class_labels.txt`` (``image_id class_id``, class ids 1..200) and
``images/<class dir>/<file>.jpg``. ``root`` may also be the ``CUB_200_2011`` folder itself.

Zero-shot split: classes 1-100 train (5,864 images), 101-200 test (5,924); the
official ``train_test_split.txt`` is not used. Labels are the original class ids (1..200), so train and test
labels never overlap. Items: (3, 224, 224) float32 in [0, 1] with the 224 transforms of ``images.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustbench_dml.datasets.base import DATASETS, DatasetInfo
from robustbench_dml.datasets.images import (
    ImageListDataset, check_images, check_split, malformed, not_found, read_int_table, require_root,
)

TITLE = "CUB-200-2011"
HINT = ("download CUB_200_2011.tgz from the Caltech-UCSD site (https://www.vision.caltech.edu/datasets/cub_200_2011/) "
        "and extract it under --data-root")
INFO = DatasetInfo(id="cub", image_size=224, channels=3, preset="224", suite="rob224",
                   source="CUB_200_2011.tgz (Caltech-UCSD Birds-200-2011), extracted under --data-root")
NUM_CLASSES = 200
TRAIN_CLASSES = range(1, 101)   # 1..100; 101..200 are test


def locate(root: Path) -> Path:
    """The ``CUB_200_2011`` folder: ``root/CUB_200_2011`` or ``root`` itself."""
    for folder in (root / "CUB_200_2011", root):
        if (folder / "images.txt").is_file():
            return folder
    raise not_found(TITLE, root / "CUB_200_2011" / "images.txt", HINT)


def read_index(folder: Path) -> tuple[list[Path], list[int]]:
    """All (image path, class id) pairs in ``images.txt`` order, validated."""
    images_txt = folder / "images.txt"
    labels_txt = folder / "image_class_labels.txt"
    if not labels_txt.is_file():
        raise not_found(TITLE, labels_txt, HINT)
    images = read_int_table(images_txt, 2, TITLE, HINT, path_column=1)
    labels = read_int_table(labels_txt, 2, TITLE, HINT)
    class_of: dict[int, int] = {}
    for image_id, class_id in labels:
        if not 1 <= class_id <= NUM_CLASSES:
            raise malformed(TITLE, labels_txt, f"image {image_id} has class {class_id}, "
                                               f"expected 1..{NUM_CLASSES}", HINT)
        if image_id in class_of:
            raise malformed(TITLE, labels_txt, f"image id {image_id} is listed twice", HINT)
        class_of[image_id] = class_id
    paths, classes, seen = [], [], set()
    for image_id, rel in images:
        if image_id in seen:
            raise malformed(TITLE, images_txt, f"image id {image_id} is listed twice", HINT)
        seen.add(image_id)
        if image_id not in class_of:
            raise malformed(TITLE, labels_txt, f"image id {image_id} from images.txt has no class", HINT)
        paths.append(folder / "images" / rel)
        classes.append(class_of[image_id])
    extra = set(class_of) - seen
    if extra:
        raise malformed(TITLE, labels_txt, f"image id {min(extra)} is not in images.txt", HINT)
    return paths, classes


@DATASETS.register("cub")
class CUB200(ImageListDataset):
    info = INFO
    title = TITLE
    hint = HINT

    def __init__(self, root: str | None = None, split: str = "train", *, augment: bool | None = None,
                 generator: torch.Generator | None = None):
        check_split(split)
        folder = locate(require_root(root, TITLE, HINT))
        paths, classes = read_index(folder)
        want_train = split == "train"
        keep = [i for i, c in enumerate(classes) if (c in TRAIN_CLASSES) == want_train]
        if not keep:
            span = "1-100" if want_train else "101-200"
            raise malformed(TITLE, folder / "image_class_labels.txt", f"no image of classes {span} "
                                                                      f"(the {split} split)", HINT)
        paths = [paths[i] for i in keep]
        check_images(paths, folder, folder / "images.txt", TITLE, HINT)
        super().__init__(paths, [classes[i] for i in keep], INFO,
                         augment=want_train if augment is None else augment, generator=generator)
