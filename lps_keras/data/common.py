"""Shared pieces of the dataset readers: dataset metadata, file pairing and validation helpers.

A reader turns "the dataset as downloaded" into a :class:`FileList`: sorted (image, label) file
pairs plus how to turn the stored label into train ids. Pairing and existence are checked eagerly
(cheap); decoding, sizes and label values are checked lazily per element in the tf.data pipeline,
because touching every pixel of Cityscapes before training would take minutes.
"""

from __future__ import annotations

from lps_keras.errors import LPSError
import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

#: Label value ignored by the loss and the metrics in every dataset of this project.
IGNORE_INDEX = 255
#: ImageNet normalisation, RGB, for images scaled to [0, 1] (what the pretrained LPS-Net weights expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(LPSError, ValueError):
    """A dataset on disk is missing, incomplete or malformed; the message names the path."""


class MissingDataError(DataError):
    """A directory or split the reader needs does not exist."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Class names and display colours (RGB) of a dataset's train-id space."""

    name: str
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    splits: tuple[str, ...] = ("train", "val")

    def __post_init__(self):
        if len(self.class_names) != len(self.colors):
            raise ValueError(f"{self.name}: {len(self.class_names)} class names but {len(self.colors)} colours")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette(self) -> np.ndarray:
        """[256, 3] uint8 colour table indexed by train id; the ignore index (and unused ids) are black."""
        pal = np.zeros((256, 3), np.uint8)
        pal[: self.num_classes] = np.asarray(self.colors, np.uint8)
        return pal


@dataclasses.dataclass(frozen=True)
class FileList:
    """Everything the pipeline needs to read one split of a dataset from files.

    ``label_table`` maps a stored single-channel label value (0..255) to a train id, 255 for
    ignore, or -1 for "this value must not occur" (reported as an error naming the file).
    ``label_colors`` instead maps RGB-coded labels (CamVid original): {(r, g, b): train id};
    colours not in it become 255.
    """

    info: DatasetInfo
    split: str
    images: tuple[str, ...]
    labels: tuple[str, ...]
    label_table: Optional[np.ndarray] = None
    label_colors: Optional[dict] = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: Optional[int]) -> FileList:
        if n is None or n >= len(self.images):
            return self
        return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n])


def identity_table(num_classes: int, extra: Optional[dict] = None) -> np.ndarray:
    """Label table for labels already stored as train ids: 0..n-1 and 255 valid, the rest invalid."""
    table = np.full(256, -1, np.int32)
    table[:num_classes] = np.arange(num_classes)
    table[IGNORE_INDEX] = IGNORE_INDEX
    for k, v in (extra or {}).items():
        table[k] = v
    return table


def list_files(directory: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES, recursive: bool = False) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in directory.glob(pattern) if p.is_file() and p.suffix.lower() in suffixes)


def pair_by_key(
    images: Iterable[Path],
    labels: Iterable[Path],
    image_key: Callable[[Path], Optional[str]],
    label_key: Callable[[Path], Optional[str]],
    where: str,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Pair image and label files by a key derived from their names; any orphan is an error.

    ``*_key`` returns None for files that are not part of the dataset (ignored). Several label
    files may share a key (e.g. Cityscapes' labelIds and labelTrainIds); the first in sorted
    order wins, so put the preferred one first via the key function's caller.
    """
    img_map: dict[str, Path] = {}
    for p in images:
        k = image_key(p)
        if k is not None:
            img_map[k] = p
    lbl_map: dict[str, Path] = {}
    for p in labels:
        k = label_key(p)
        if k is not None and k not in lbl_map:
            lbl_map[k] = p
    missing_label = sorted(set(img_map) - set(lbl_map))
    if missing_label:
        raise DataError(
            f"{where}: image {str(img_map[missing_label[0]])!r} has no label file"
            + (f" (and {len(missing_label) - 1} more images without labels)" if len(missing_label) > 1 else "")
        )
    missing_image = sorted(set(lbl_map) - set(img_map))
    if missing_image:
        raise DataError(
            f"{where}: label {str(lbl_map[missing_image[0]])!r} has no image file"
            + (f" (and {len(missing_image) - 1} more labels without images)" if len(missing_image) > 1 else "")
        )
    if not img_map:
        raise DataError(f"{where}: no image files found")
    keys = sorted(img_map)
    return tuple(str(img_map[k]) for k in keys), tuple(str(lbl_map[k]) for k in keys)


def strip_suffix(name: str, suffix: str) -> Optional[str]:
    return name[: -len(suffix)] if name.endswith(suffix) else None


def require_dir(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise MissingDataError(f"{what}: directory {str(path)!r} does not exist")
    return path


def load_pair_numpy(files: FileList, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode one (image, label) pair with Pillow and map the label to train ids, checking everything.

    The numpy twin of the tf.data decoder, for the TFDS builders and tests. Raises DataError naming
    the file for unreadable images, size mismatches and label values outside the table.
    """
    from PIL import Image

    image_path = files.images[index]
    try:
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError) as e:
        raise DataError(f"{image_path}: cannot read image: {e}") from None
    return image, read_label(files, index, image.shape[:2])


def check_pair(files: FileList, index: int) -> None:
    """The cheap half of :func:`load_pair_numpy`: the image's header (format, size) and the whole label.

    Used to check a validation split before a long training run, without decoding its images.
    """
    from PIL import Image

    image_path = files.images[index]
    try:
        with Image.open(image_path) as im:
            width, height = im.size
            png = im.format == "PNG"
        if png:
            check_png_complete(image_path)
    except (OSError, SyntaxError) as e:
        raise DataError(f"{image_path}: cannot read image: {e}") from None
    read_label(files, index, (height, width))


#: A PNG file ends with its IEND chunk: length 0, type, CRC.
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def check_png_complete(path) -> None:
    """DataError if the PNG file ``path`` was cut short: its header reads fine, its IEND chunk is missing.

    Cheap (reads the file's last 64 KiB), so a truncated image is found without decoding it. Data
    after IEND (which Pillow ignores) is allowed.
    """
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 65536))
        if _PNG_END not in f.read():
            raise DataError(f"{path}: cannot read image: truncated PNG file ({size} bytes, no IEND chunk at its end)")


def read_label(files: FileList, index: int, image_hw: tuple[int, int]) -> np.ndarray:
    """The label of pair ``index`` in train ids (uint8, 255 = ignore), checked against the image size."""
    from PIL import Image

    image_path, label_path = files.images[index], files.labels[index]
    try:
        with Image.open(label_path) as im:
            if files.label_colors is not None:
                raw = np.asarray(im.convert("RGB"))
            else:
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise DataError(
                        f"{label_path}: expected a single-channel label image (one class index per pixel), "
                        f"got a {len(im.getbands())}-channel {im.mode} image")
                raw = np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise DataError(f"{label_path}: cannot read label: {e}") from None
    if raw.shape[:2] != tuple(image_hw):
        raise DataError(
            f"{label_path}: label size {raw.shape[1]}x{raw.shape[0]} differs from image size "
            f"{image_hw[1]}x{image_hw[0]} of {image_path}"
        )
    if files.label_colors is not None:
        code = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
        label = np.full(code.shape, IGNORE_INDEX, np.uint8)
        for (r, g, b), idx in files.label_colors.items():
            label[code == ((r << 16) | (g << 8) | b)] = idx
        return label
    if raw.max(initial=0) > 255:
        raise DataError(f"{label_path}: label value {int(raw.max())} out of range")
    mapped = files.label_table[raw.astype(np.int64)]
    if (mapped < 0).any():
        bad = sorted(set(np.unique(raw[mapped < 0]).tolist()))
        raise DataError(f"{label_path}: invalid label values {bad[:8]} for {files.info.name}")
    return mapped.astype(np.uint8)


def make_tfds_builder_class(name: str, configs: dict, splits: Sequence[str], description: str, instructions: str):
    """A TFDS GeneratorBasedBuilder reading a directory layout from ``manual_dir``.

    ``configs`` maps a config name to a lister ``(root, split) -> FileList``. Splits whose
    directories are absent are left out rather than failing the whole build. Labels are stored
    as train ids (uint8 PNG, 255 ignore) under ``segmentation_label``.
    """
    import tensorflow_datasets as tfds

    def _info(self):
        return self.dataset_info_from_configs(
            description=description,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "segmentation_label": tfds.features.Image(shape=(None, None, 1)),
                "image_id": tfds.features.Text(),
            }),
            supervised_keys=("image", "segmentation_label"),
        )

    def _split_generators(self, dl_manager):
        lister = configs[self.builder_config.name]
        out = {}
        for split in splits:
            try:
                files = lister(dl_manager.manual_dir, split)
            except MissingDataError:
                continue
            out[split] = self._generate_examples(files)
        if not out:
            raise MissingDataError(f"{name}: no split found in manual_dir {str(dl_manager.manual_dir)!r}")
        return out

    def _generate_examples(self, files):
        for i in range(len(files)):
            image, label = load_pair_numpy(files, i)
            key = Path(files.images[i]).stem
            yield key, {"image": image, "segmentation_label": label[..., None], "image_id": key}

    attrs = {
        "name": name,
        "VERSION": tfds.core.Version("1.0.0"),
        "RELEASE_NOTES": {"1.0.0": "Initial release."},
        "MANUAL_DOWNLOAD_INSTRUCTIONS": instructions,
        "BUILDER_CONFIGS": [tfds.core.BuilderConfig(name=k, description=f"{name}: {k} layout") for k in configs],
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
        "__module__": __name__,
    }
    return type("".join(w.capitalize() for w in name.split("_")), (tfds.core.GeneratorBasedBuilder,), attrs)


def denormalize(images) -> np.ndarray:
    """ImageNet-normalised float images -> uint8 RGB."""
    x = np.asarray(images, np.float32) * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
