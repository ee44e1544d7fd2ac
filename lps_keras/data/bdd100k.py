"""BDD100K semantic segmentation (19 classes in Cityscapes train-id order, 255 ignore).

Layout of the ``bdd100k_images_10k`` and ``bdd100k_sem_seg_labels_trainval`` downloads::

    <root>/images/10k/<split>/<name>.jpg
    <root>/labels/sem_seg/masks/<split>/<name>.png     train ids 0..18, 255 ignore

7000 train / 1000 val images of 720x1280 (the 10k test images have no public labels).
Also available as the TFDS builder ``lps_bdd100k`` of this project (reads the same layout from
``manual_dir``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from lps_keras.data import cityscapes
from lps_keras.data.common import (
    DatasetInfo,
    FileList,
    identity_table,
    list_files,
    make_tfds_builder_class,
    pair_by_key,
    require_dir,
)

INFO = DatasetInfo("bdd100k", cityscapes.CLASS_NAMES, cityscapes.COLORS, splits=("train", "val"))
LABEL_TABLE = identity_table(INFO.num_classes)
SPLIT_SIZES = {"train": 7000, "val": 1000}


def list_split(root: str | Path, split: str) -> FileList:
    root = Path(root)
    img_dir = require_dir(root / "images" / "10k" / split, f"bdd100k images ({split})")
    lbl_dir = require_dir(root / "labels" / "sem_seg" / "masks" / split, f"bdd100k labels ({split})")
    img, lbl = pair_by_key(
        list_files(img_dir, (".jpg", ".jpeg", ".png")), list_files(lbl_dir, (".png",)),
        lambda p: p.stem, lambda p: p.stem, where=f"bdd100k {split} ({root})",
    )
    return FileList(INFO, split, img, lbl, label_table=LABEL_TABLE)


@functools.cache
@functools.cache
def tfds_builder_class():
    """The ``lps_bdd100k`` TFDS builder class (created on first use: importing TFDS is slow)."""
    return make_tfds_builder_class(
        name="lps_bdd100k",
        configs={"sem_seg": list_split},
        splits=("train", "val"),
        description="BDD100K semantic segmentation (10k images, 19 Cityscapes classes).",
        instructions="Extract bdd100k_images_10k.zip and bdd100k_sem_seg_labels_trainval.zip into manual_dir "
        "so that it holds images/10k/<split>/*.jpg and labels/sem_seg/masks/<split>/*.png.",
    )
