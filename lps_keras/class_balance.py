"""Class balance for the loss: per-class weights from the training labels' frequencies, or given.

Street scenes are dominated by road, sky and building; pole, sign and fence cover a fraction of a
percent of the pixels and a plain pixel-averaged loss barely sees them. ``train.class_balance``:

``none``
    every class weighs 1 (the paper's setting).
``median_frequency``
    SegNet's median-frequency balancing (Badrinarayanan et al. 2017, after Eigen & Fergus 2015):
    ``freq(c) = pixels of c / pixels of the images in which c is present`` and
    ``w(c) = median_c freq(c) / freq(c)``. Pixels are the labelled (non-ignored) ones.
``enet``
    ENet's weighting (Paszke et al. 2016): ``w(c) = 1 / ln(k + p(c))`` with ``p(c)`` the share of
    class ``c`` among all labelled pixels and ``k = train.enet_c`` (1.02), which bounds the weights
    to [1.46, 50.5].
``explicit``
    ``train.class_weights``, one positive number per class.

The frequencies are counted once per training split (every label read in full) and cached as JSON
under ``$LPS_CACHE_DIR`` (default ``~/.cache/lps_keras``), keyed by the dataset, the split and the
label files' names, sizes and modification times, so an edited file is counted again. A class that
never occurs in the labels gets weight 1 (it contributes no pixels either way).

The weighted loss is ``sum_i w(y_i) nll_i / sum_i w(y_i)`` over the kept pixels (PyTorch's
``CrossEntropyLoss(weight=...)`` mean); with OHEM the hard pixels are chosen on the unweighted
probabilities, then weighted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from lps_keras.data.common import DataError, FileList, read_label
from lps_keras.fileio import atomic_write_json

BALANCE_KINDS = ("none", "median_frequency", "enet", "explicit")


@dataclasses.dataclass(frozen=True)
class ClassStats:
    """Pixel counts of a training split: ``pixels[c]`` of class ``c``, ``image_pixels[c]`` the labelled
    pixels of the images in which ``c`` occurs, ``images[c]`` how many images contain ``c``."""

    pixels: tuple[int, ...]
    image_pixels: tuple[int, ...]
    images: tuple[int, ...]
    num_files: int

    @property
    def total(self) -> int:
        return int(sum(self.pixels))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def count_classes(files: FileList, num_classes: int, progress: bool = False) -> ClassStats:
    """Count every labelled pixel of ``files`` (labels in train ids; 255 is ignored)."""
    from PIL import Image

    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    images = np.zeros(num_classes, np.int64)
    for i in range(len(files)):
        with Image.open(files.labels[i]) as im:
            hw = (im.size[1], im.size[0])
        label = read_label(files, i, hw)  # checks the values; the image's own size is checked by training
        counts = np.bincount(label.ravel(), minlength=256)[:num_classes].astype(np.int64)
        present = counts > 0
        pixels += counts
        image_pixels[present] += counts.sum()
        images[present] += 1
        if progress and (i + 1) % 100 == 0:
            print(f"class balance: counted {i + 1}/{len(files)} labels", flush=True)
    return ClassStats(tuple(map(int, pixels)), tuple(map(int, image_pixels)), tuple(map(int, images)), len(files))


def median_frequency_weights(stats: ClassStats) -> np.ndarray:
    """SegNet's ``median(freq) / freq(c)`` (module docstring); 1 for classes that never occur."""
    pixels = np.asarray(stats.pixels, np.float64)
    image_pixels = np.asarray(stats.image_pixels, np.float64)
    present = pixels > 0
    if not present.any():
        raise DataError("class balance: the training labels contain no labelled pixel")
    freq = np.where(present, pixels / np.maximum(image_pixels, 1), np.nan)
    median = float(np.nanmedian(freq))
    return np.where(present, median / np.where(present, freq, 1.0), 1.0).astype(np.float32)


def enet_weights(stats: ClassStats, c: float = 1.02) -> np.ndarray:
    """ENet's ``1 / ln(c + p(class))`` (module docstring); 1 for classes that never occur."""
    if not c > 1.0:
        raise ValueError(f"enet_c must be > 1 (ln(c + p) must be positive), got {c!r}")
    pixels = np.asarray(stats.pixels, np.float64)
    if pixels.sum() <= 0:
        raise DataError("class balance: the training labels contain no labelled pixel")
    p = pixels / pixels.sum()
    return np.where(pixels > 0, 1.0 / np.log(c + p), 1.0).astype(np.float32)


def cache_dir() -> Path:
    return Path(os.environ.get("LPS_CACHE_DIR") or Path.home() / ".cache" / "lps_keras")


def _cache_key(files: FileList, num_classes: int) -> str:
    h = hashlib.sha256(f"{files.info.name}|{files.split}|{num_classes}".encode())
    for path in files.labels:
        st = os.stat(path)
        h.update(f"|{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def class_stats(files: FileList, num_classes: int, cache: Optional[Path] = None, progress: bool = True) -> ClassStats:
    """:func:`count_classes`, through the JSON cache (``cache`` directory, default :func:`cache_dir`)."""
    directory = Path(cache) if cache is not None else cache_dir()
    path = directory / "class_stats" / f"{files.info.name}-{_cache_key(files, num_classes)}.json"
    try:
        data = json.loads(path.read_text())
        return ClassStats(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["stats"].items()})
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet, or unreadable: count again
    stats = count_classes(files, num_classes, progress=progress)
    try:
        atomic_write_json(path, {"dataset": files.info.name, "split": files.split, "stats": stats.to_dict()})
    except OSError:
        pass  # a read-only home: the weights are still right, only not cached
    return stats


def class_weights(recipe, files: Optional[FileList] = None, cache: Optional[Path] = None) -> Optional[np.ndarray]:
    """The recipe's per-class loss weights (``None`` for ``train.class_balance = none``).

    Counted on ``files``, by default the recipe's training split(s) as training reads them.
    """
    t = recipe.train
    num_classes = recipe.model_config().num_classes
    if t.class_balance == "none":
        return None
    if t.class_balance == "explicit":
        return np.asarray(t.class_weights, np.float32)
    if files is None:
        from lps_keras.data.pipeline import list_split

        files = list_split(recipe, recipe.data.train_split).subset(recipe.data.train_subset)
    stats = class_stats(files, num_classes, cache=cache)
    if t.class_balance == "median_frequency":
        return median_frequency_weights(stats)
    return enet_weights(stats, t.enet_c)


def format_weights(weights, names) -> str:
    """``sky 0.25, building 0.18, pole 8.9, ...`` for the training log."""
    return ", ".join(f"{n} {w:.3g}" for n, w in zip(names, weights) if math.isfinite(float(w)))
