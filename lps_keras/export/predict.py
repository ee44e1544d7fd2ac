"""``predict.py``: segment image files with an exported SavedModel, with bounded memory.

Memory. The SavedModel's ``serving_default`` upsamples the logits to the input size and softmaxes
them: for a 48-megapixel photo that is several float32 copies of 48 M x classes values (8.7 GB
measured). Predict needs only labels, and softmax does not change the argmax, so when the
SavedModel has the ``network_logits`` signature (every export since it was added) the network's
own low-resolution logits are upsampled and reduced to labels a band of rows at a time
(:func:`labels_from_logits`), exactly as ``ResizeBilinear(align_corners=True)`` + argmax would.
Older SavedModels run through ``serving_default`` as before.

Names. Each image writes ``<name>_mask.png`` and ``<name>_overlay.png``; ``<name>`` is the file's
stem, or, where several inputs share a stem (``a/x.png``, ``b/x.png``), its path below the inputs'
common directory with ``/`` as ``_`` (``a_x``, ``b_x``), so no output silently replaces another.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from lps_keras.data.pipeline import class_names
from lps_keras.errors import DiskFullError, UsageError, is_disk_full
from lps_keras.export.serving import NETWORK_LOGITS_SIGNATURE, load_savedmodel

#: What a directory given as an input is expanded to (its files, not its subdirectories).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: Output rows per band when upsampling logits: bounds the float scores held at once (rows x width x classes).
BAND_ROWS = 64


def expand_inputs(images) -> list[Path]:
    """Image files from ``images`` (files, and directories expanded to their image files by name);
    a file given twice is predicted once. Raises :class:`UsageError` naming what is missing."""
    paths, missing = [], []
    for item in map(Path, images):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{item}: a directory without image files ({' '.join(IMAGE_SUFFIXES)}); give "
                                 "image files or a directory that holds them")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            missing.append(str(item))
    if missing:
        raise UsageError(f"image file(s) not found: {', '.join(map(repr, missing))}")
    unique, seen = [], set()
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output name per input: the stem, or for shared stems the path below the common directory."""
    stems = [p.stem for p in paths]
    counts = Counter(stems)
    clashing = [p.resolve() for p, s in zip(paths, stems) if counts[s] > 1]
    common = Path(_common_dir(clashing)) if clashing else None
    names = []
    for p, stem in zip(paths, stems):
        if counts[stem] == 1:
            names.append(stem)
            continue
        rel = p.resolve().relative_to(common)
        names.append("_".join((*rel.parent.parts, rel.stem)))
    # Still equal (x.png and x.jpg in one directory, or a stem that equals another's new name): add the suffix.
    counts = Counter(names)
    names = [f"{n}_{p.suffix.lstrip('.')}" if counts[n] > 1 else n for n, p in zip(names, paths)]
    counts = Counter(names)
    return [f"{n}_{i}" if counts[n] > 1 else n for i, n in enumerate(names, start=1)]


def _common_dir(paths: list[Path]) -> str:
    import os

    return os.path.commonpath([str(p.parent) for p in paths])


def _axis(in_size: int, out_size: int, start: int, stop: int):
    """Rows (or columns) ``start:stop`` of an align-corners resize: lower/upper source index and weight,
    computed in float32 as TensorFlow's ResizeBilinear kernel does, so the labels are the same."""
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    pos = np.arange(start, stop, dtype=np.float32) * scale
    lower = np.floor(pos)
    upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.int64)
    return lower.astype(np.int64), upper, (pos - lower).astype(np.float32)


def labels_from_logits(logits: np.ndarray, height: int, width: int, band_rows: int = BAND_ROWS) -> np.ndarray:
    """``argmax(ResizeBilinear(logits, (height, width), align_corners=True))`` for one image's ``[h, w, C]``
    logits, computed ``band_rows`` output rows at a time (int32 ``[height, width]``)."""
    logits = np.asarray(logits, np.float32)
    h, w, _ = logits.shape
    x0, x1, xl = _axis(w, width, 0, width)
    xl = xl[None, :, None]
    labels = np.empty((height, width), np.int32)
    for start in range(0, height, band_rows):
        stop = min(start + band_rows, height)
        y0, y1, yl = _axis(h, height, start, stop)
        top_rows, bottom_rows = logits[y0], logits[y1]  # [band, w, C]
        top = top_rows[:, x0] + (top_rows[:, x1] - top_rows[:, x0]) * xl
        bottom = bottom_rows[:, x0] + (bottom_rows[:, x1] - bottom_rows[:, x0]) * xl
        labels[start:stop] = np.argmax(top + (bottom - top) * yl[:, None, None], axis=-1)
    return labels


def _overlay_in_bands(image, labels, colours, alpha, band_rows=256):
    """viz.overlay a band at a time: it holds float32 copies of whatever it is given."""
    from lps_keras import viz

    out = np.empty_like(image)
    for start in range(0, image.shape[0], band_rows):
        out[start:start + band_rows] = viz.overlay(image[start:start + band_rows], labels[start:start + band_rows],
                                                   colours, alpha)
    return out


def predict_images(model_dir, images, output, palette: str = "auto", alpha: float = 0.5, max_megapixels: float = 50.0,
                   log=print, legend: bool = True) -> list[Path]:
    """Segment image files (or directories of them) with an exported SavedModel; returns the written files.

    Writes ``<name>_mask.png`` (class colours) and ``<name>_overlay.png`` (see the module doc for
    ``<name>``); the overlay carries a legend strip below the image (colour and name of every class
    present; ``legend=False`` leaves it out). ``palette``: ``cityscapes``, ``camvid`` or ``auto`` (by
    class count: 19 -> cityscapes, 11 -> camvid, else generic colours). Every input is checked and decoded
    before anything runs; images over ``max_megapixels`` are refused from their header, 16-bit ones scaled
    to 8 bits.
    """
    paths = expand_inputs(images)
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {alpha!r}")
    if palette not in ("auto", "cityscapes", "camvid"):
        raise UsageError(f"palette must be auto, cityscapes or camvid, got {palette!r}")
    if not max_megapixels > 0:
        raise UsageError(f"--max-megapixels must be > 0, got {max_megapixels!r}")
    for p in paths:  # every header checked (size limit, readable) before the model loads
        _check_header(p, max_megapixels)
    loaded = load_savedmodel(model_dir)

    import tensorflow as tf

    from lps_keras import viz
    from lps_keras.viz import read_rgb

    fn = loaded.signatures["serving_default"]
    small = loaded.signatures.get(NETWORK_LOGITS_SIGNATURE)
    if small is None:
        log(f"  {model_dir} has no {NETWORK_LOGITS_SIGNATURE} signature (exported before it was added): labels "
            "come from serving_default, which holds full-size scores; re-export for bounded memory")
    expected = fn.structured_input_signature[1]["images"].shape
    out_dir = Path(output)
    written = []
    for i, (path, name) in enumerate(zip(paths, output_names(paths)), start=1):
        image = read_rgb(path, max_pixels=int(max_megapixels * 1e6))  # one decoded image at a time
        if expected[1] is not None and tuple(image.shape[:2]) != (expected[1], expected[2]):
            image = tf.image.resize(image, (expected[1], expected[2]), antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()
            log(f"  {path}: resized to the model's static size {expected[1]}x{expected[2]}")
        if small is not None:
            logits = small(images=tf.constant(image[None]))["logits"][0].numpy()
            num_classes = logits.shape[-1]
            labels = labels_from_logits(logits, *image.shape[:2])
            del logits
        else:
            out = fn(images=tf.constant(image[None]))
            labels = out["labels"][0].numpy()
            num_classes = int(out["probabilities" if "probabilities" in out else "logits"].shape[-1])
            del out
        dataset = {19: "cityscapes", 11: "camvid"}.get(num_classes) if palette == "auto" else palette
        colours = viz.get_palette(dataset, num_classes)  # generic colours if the named one has the wrong size
        try:
            mask = viz.save_png(out_dir / f"{name}_mask.png", viz.colorize(labels, colours))
            blended = _overlay_in_bands(image, labels, colours, alpha)
            if legend:
                blended = viz.with_legend(blended, labels, colours, class_names(dataset or "", num_classes))
            over = viz.save_png(out_dir / f"{name}_overlay.png", blended)
        except OSError as e:
            if is_disk_full(e):  # save_png wrote to a temporary file, removed again: no partial PNG
                raise DiskFullError(out_dir, f"{len(written) // 2} of {len(paths)} images' PNGs were written") \
                    from None
            raise
        log(f"[{i}/{len(paths)}] {path} -> {mask}, {over}")
        written += [mask, over]
    return written


def _check_header(path: Path, max_megapixels: float) -> None:
    """The size limit and readability from the header alone (decoding every large image up front would
    hold them all in memory at once)."""
    from PIL import Image, UnidentifiedImageError

    from lps_keras.viz import read_rgb

    try:
        with Image.open(path) as im:
            w, h = im.size
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        read_rgb(path, max_pixels=int(max_megapixels * 1e6))  # raises the one-line error naming the file
        return
    if w * h > max_megapixels * 1e6:
        read_rgb(path, max_pixels=int(max_megapixels * 1e6))
