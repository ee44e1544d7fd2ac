"""Cityscapes: the extracted official layout, or the TFDS ``cityscapes/semantic_segmentation`` builder.

Layout (as extracted from ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``)::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (optional)

``*_labelTrainIds.png`` (written by cityscapesScripts' ``createTrainIdLabelImgs``) is used when
present, otherwise ``*_labelIds.png`` is mapped with the official table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lps_keras.data.common import (
    IGNORE_INDEX,
    DatasetInfo,
    FileList,
    identity_table,
    list_files,
    pair_by_key,
    require_dir,
    strip_suffix,
)

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
INFO = DatasetInfo("cityscapes", CLASS_NAMES, COLORS, splits=("train", "val", "test"))

#: The official labelIds of the 19 evaluated classes, in trainId order (cityscapesScripts labels.py).
EVAL_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
#: Highest labelId in the official table (34 labels, 0..33; the license plate's -1 never appears in PNGs).
MAX_LABEL_ID = 33

#: [256] int32: labelId -> trainId (255 for the non-evaluated ids 0..33; -1 marks values that are not labelIds).
LABEL_ID_TO_TRAIN_ID = np.full(256, -1, np.int32)
LABEL_ID_TO_TRAIN_ID[: MAX_LABEL_ID + 1] = IGNORE_INDEX
LABEL_ID_TO_TRAIN_ID[list(EVAL_LABEL_IDS)] = np.arange(len(EVAL_LABEL_IDS))
# Some tools write "unlabelled" as 255 in labelId images; treat it as ignore rather than an error.
LABEL_ID_TO_TRAIN_ID[IGNORE_INDEX] = IGNORE_INDEX

#: [256] uint8: trainId -> labelId for writing official-format predictions (255/unused -> 0 "unlabeled").
TRAIN_ID_TO_LABEL_ID = np.zeros(256, np.uint8)
TRAIN_ID_TO_LABEL_ID[: len(EVAL_LABEL_IDS)] = EVAL_LABEL_IDS

#: Table for ``*_labelTrainIds.png``: 0..18 and 255 valid.
TRAIN_ID_TABLE = identity_table(len(CLASS_NAMES))

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIXES = ("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png")

TFDS_NAME = "cityscapes/semantic_segmentation"
_TFDS_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a labelId array to trainIds (uint8, 255 ignore); raises on values that are not labelIds."""
    label_ids = np.asarray(label_ids)
    out = LABEL_ID_TO_TRAIN_ID[label_ids.astype(np.int64)]
    if (out < 0).any():
        bad = int(label_ids[out < 0].flat[0])
        raise ValueError(f"label value {bad} is not a Cityscapes labelId (0..{MAX_LABEL_ID})")
    return out.astype(np.uint8)


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map predicted trainIds to official labelIds (uint8), e.g. for csEvalPixelLevelSemanticLabeling."""
    return TRAIN_ID_TO_LABEL_ID[np.asarray(train_ids).astype(np.int64)]


def list_split(root: str | Path, split: str, info: DatasetInfo = INFO) -> FileList:
    """Pair ``leftImg8bit/<split>`` with ``gtFine/<split>``; train-id labels preferred when present."""
    root = Path(root)
    img_dir = require_dir(root / "leftImg8bit" / split, f"{info.name} images ({split})")
    lbl_dir = require_dir(root / "gtFine" / split, f"{info.name} labels ({split})")
    images = list_files(img_dir, (".png",), recursive=True)
    labels = list_files(lbl_dir, (".png",), recursive=True)
    train_id_keys = {strip_suffix(p.name, _LABEL_SUFFIXES[0]) for p in labels} - {None}
    # Decide per split (not per file) which label kind to read so one table applies to all files.
    use_train_ids = bool(train_id_keys)
    suffix = _LABEL_SUFFIXES[0] if use_train_ids else _LABEL_SUFFIXES[1]
    img, lbl = pair_by_key(
        images,
        labels,
        lambda p: strip_suffix(p.name, _IMAGE_SUFFIX),
        lambda p: strip_suffix(p.name, suffix),
        where=f"{info.name} {split} ({root})",
    )
    table = TRAIN_ID_TABLE if use_train_ids else LABEL_ID_TO_TRAIN_ID
    return FileList(info, split, img, lbl, label_table=table)


def load_tfds(root: str | Path, split: str, data_dir: str | None = None):
    """``tf.data.Dataset`` of (uint8 image [H, W, 3], int32 trainId label [H, W]) from the TFDS builder.

    ``root`` is the TFDS manual directory holding the official zips; the prepared dataset is
    written to ``data_dir`` (TFDS default when None).
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if split not in _TFDS_SPLITS:
        raise ValueError(f"cityscapes (tfds): unknown split {split!r}; known: {', '.join(_TFDS_SPLITS)}")
    require_dir(root, "cityscapes TFDS manual_dir")
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    ds = builder.as_dataset(split=_TFDS_SPLITS[split], shuffle_files=False)
    table = tf.constant(LABEL_ID_TO_TRAIN_ID)

    def convert(ex):
        raw = tf.cast(ex["segmentation_label"][..., 0], tf.int32)
        mapped = tf.gather(table, raw)
        # Ids above 33 are not Cityscapes classes (the builder does not check): ignore, never class 0.
        label = tf.where(mapped < 0, 255, mapped)
        return ex["image_left"], label

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
