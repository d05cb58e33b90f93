"""Stanford Online Products (Oh Song et al., "Deep Metric Learning via Lifted Structured Feature Embedding",
CVPR 2016): 120,053 eBay product photos of 22,634 products in 12 super-categories.

Layout (the official ``Stanford_Online_Products.zip`` extracted): ``<root>/Stanford_Online_Products/
Ebay_train.txt`` and ``Ebay_test.txt``, each with the header ``image_id class_id super_class_id path`` and one
line per image, ``path`` relative to that folder (``bicycle_final/111085122871_0.JPG``). ``root`` may also be
the ``Stanford_Online_Products`` folder itself.

Split: the official lists (train 59,551 images of classes 1..11,318; test 60,502 images of classes
11,319..22,634), class-disjoint. Labels are the original ``class_id`` values. Items: (3, 224, 224) float32 in
[0, 1] with the 224 transforms of ``images.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustbench_dml.datasets.base import DATASETS, DatasetInfo
from robustbench_dml.datasets.images import (
    ImageListDataset, check_images, check_split, malformed, not_found, read_int_table, require_root,
)

TITLE = "Stanford Online Products"
HINT = ("download Stanford_Online_Products.zip (https://cvgl.stanford.edu/projects/lifted_struct/) "
        "and extract it under --data-root")
INFO = DatasetInfo(id="sop", image_size=224, channels=3, preset="224", suite="rob224",
                   source="Stanford_Online_Products.zip (Ebay_train.txt / Ebay_test.txt), extracted under --data-root")
HEADER = "image_id class_id super_class_id path"


def locate(root: Path, list_name: str) -> Path:
    """The ``Stanford_Online_Products`` folder: ``root/Stanford_Online_Products`` or ``root`` itself."""
    for folder in (root / "Stanford_Online_Products", root):
        if (folder / list_name).is_file():
            return folder
    raise not_found(TITLE, root / "Stanford_Online_Products" / list_name, HINT)


@DATASETS.register("sop")
class StanfordOnlineProducts(ImageListDataset):
    info = INFO
    title = TITLE
    hint = HINT

    def __init__(self, root: str | None = None, split: str = "train", *, augment: bool | None = None,
                 generator: torch.Generator | None = None):
        check_split(split)
        list_name = "Ebay_train.txt" if split == "train" else "Ebay_test.txt"
        folder = locate(require_root(root, TITLE, HINT), list_name)
        index = folder / list_name
        rows = read_int_table(index, 4, TITLE, HINT, header=HEADER, path_column=3)
        seen: set[int] = set()
        for image_id, class_id, _super, _rel in rows:
            if image_id in seen:
                raise malformed(TITLE, index, f"image id {image_id} is listed twice", HINT)
            seen.add(image_id)
            if class_id < 1:
                raise malformed(TITLE, index, f"image {image_id} has class {class_id}, expected >= 1", HINT)
        paths = [folder / rel for *_, rel in rows]
        check_images(paths, folder, index, TITLE, HINT)
        super().__init__(paths, [row[1] for row in rows], INFO,
                         augment=(split == "train") if augment is None else augment, generator=generator)
