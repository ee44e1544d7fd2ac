"""Colour palettes, colourised label maps, overlays and official-format prediction PNGs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

from lps_keras.data import camvid, cityscapes
from lps_keras.errors import UsageError
from lps_keras.fileio import atomic_path

__all__ = [
    "CITYSCAPES_PALETTE",
    "CAMVID_PALETTE",
    "TRAIN_ID_TO_LABEL_ID",
    "generic_palette",
    "get_palette",
    "colorize",
    "overlay",
    "save_png",
    "write_cityscapes_labelids",
]

# The colour and id tables live with their datasets; these are the array forms the writers use.
#: Official Cityscapes colours of the 19 trainIds (road ... bicycle).
CITYSCAPES_PALETTE = np.asarray(cityscapes.COLORS, np.uint8)
#: SegNet CamVid colours of the 11 classes.
CAMVID_PALETTE = np.asarray(camvid.COLORS, np.uint8)
#: Cityscapes trainId 0..18 -> official labelId; trainId 255 (ignore) is written as labelId 0.
TRAIN_ID_TO_LABEL_ID = np.asarray(cityscapes.EVAL_LABEL_IDS, np.uint8)

_PALETTES = {
    "cityscapes": CITYSCAPES_PALETTE,
    "bdd100k": CITYSCAPES_PALETTE,
    "synthetic": CITYSCAPES_PALETTE,
    "camvid": CAMVID_PALETTE,
    "camvid_original": CAMVID_PALETTE,
}


def generic_palette(num_classes: int) -> np.ndarray:
    """Distinct colours for any class count: the bit-interleaved PASCAL VOC scheme, black skipped."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    colours = np.zeros((num_classes, 3), np.uint8)
    for i in range(num_classes):
        # Class i + 1 so that no class is black, the colour of ignored pixels.
        c, r, g, b = i + 1, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def get_palette(dataset: Optional[str], num_classes: int) -> np.ndarray:
    """The dataset's own palette when it has one of the right size, else :func:`generic_palette`."""
    palette = _PALETTES.get(dataset or "")
    if palette is not None and len(palette) == num_classes:
        return palette
    return generic_palette(num_classes)


def _check_palette(palette) -> np.ndarray:
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0:
        raise ValueError(f"palette must have shape [num_classes, 3], got {palette.shape}")
    return palette.astype(np.uint8)


def colorize(label_map, palette, ignore_index: int = 255) -> np.ndarray:
    """Integer label map ``[..., H, W]`` -> uint8 RGB ``[..., H, W, 3]``; ignored pixels are black."""
    palette = _check_palette(palette)
    labels = np.asarray(label_map)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label_map must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    ignored = labels == ignore_index
    bad = ~ignored & ((labels < 0) | (labels >= len(palette)))
    if bad.any():
        raise ValueError(
            f"label_map has values outside [0, {len(palette)}) that are not ignore_index={ignore_index}: "
            f"{np.unique(labels[bad])[:10].tolist()}"
        )
    rgb = palette[np.where(ignored, 0, labels)]
    rgb[ignored] = 0
    return rgb


def overlay(image_uint8, label_map, palette, alpha: float = 0.5, ignore_index: int = 255) -> np.ndarray:
    """Blend the colourised labels onto an RGB uint8 image; ignored pixels show the image alone."""
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    labels = np.asarray(label_map)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label_map shape {labels.shape} does not match image size {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"alpha must be in [0, 1], got {alpha!r}")
    colours = colorize(labels, palette, ignore_index).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    out = np.where((labels == ignore_index)[..., None], image.astype(np.float32), blended)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def with_legend(image_uint8, label_map, palette, class_names, ignore_index: int = 255) -> np.ndarray:
    """``image_uint8`` with a legend strip below it: a colour swatch and the name of every class present.

    Only the classes that occur in ``label_map`` are listed (in class order), so the legend stays
    short; entries wrap into as many rows as the image width needs. Drawn with Pillow's built-in
    font, so it needs no font files.
    """
    from PIL import Image, ImageDraw, ImageFont

    image = np.asarray(image_uint8)
    labels = np.asarray(label_map)
    palette = np.asarray(palette, np.uint8)
    present = [int(c) for c in np.unique(labels) if c != ignore_index and 0 <= c < len(palette)]
    width = image.shape[1]
    font = ImageFont.load_default()
    pad, box = 4, 12
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = []
    for c in present:
        name = class_names[c] if c < len(class_names) else str(c)
        text_w = int(probe.textlength(name, font=font))
        entries.append((c, name, box + pad + text_w + 3 * pad))
    rows, row, used = [], [], pad
    for entry in entries:
        if row and used + entry[2] > width:
            rows.append(row)
            row, used = [], pad
        row.append(entry)
        used += entry[2]
    if row:
        rows.append(row)
    row_h = box + 2 * pad
    strip = Image.new("RGB", (width, max(1, len(rows)) * row_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for r, entries_in_row in enumerate(rows):
        x, y = pad, pad + r * row_h
        for c, name, w in entries_in_row:
            draw.rectangle([x, y, x + box, y + box], fill=tuple(int(v) for v in palette[c]), outline=(0, 0, 0))
            draw.text((x + box + pad, y), name, fill=(0, 0, 0), font=font)
            x += w
    return np.concatenate([image, np.asarray(strip)], axis=0)


def read_rgb(path: Union[str, os.PathLike], max_pixels: Optional[int] = None) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]``.

    16-bit greyscale images (PNG mode ``I;16`` / ``I``) are scaled to 8 bits (``v / 257``):
    Pillow's ``convert("RGB")`` would saturate every value above 255, turning a normal 16-bit
    photo nearly white. ``max_pixels`` refuses larger images from their header, before decoding.
    Raises ValueError naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise UsageError(f"{path}: {w}x{h} is {w * h / 1e6:.1f} megapixels, above the limit of "
                                 f"{max_pixels / 1e6:g}; downscale it first (or raise the limit)")
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raw = np.asarray(im).astype(np.float64)
                top = 65535.0 if im.mode != "F" or raw.max(initial=0) > 1.0 else 1.0
                grey = np.clip(np.rint(raw * (255.0 / top)), 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:
        # Pillow refuses to open a header declaring over ~179 megapixels (a "decompression bomb") before
        # max_pixels is looked at: report it like the max_pixels limit, naming the file.
        match = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(e))
        size = f"{int(match.group(1)) / 1e6:.1f} megapixels" if match else "too many pixels"
        limit = max_pixels if max_pixels is not None else (int(match.group(2)) if match else Image.MAX_IMAGE_PIXELS * 2)
        raise UsageError(f"{path}: its header declares {size}, above the limit of {limit / 1e6:g} (a decompression "
                         "bomb or a huge image); downscale it first") from None
    except UnidentifiedImageError:
        raise UsageError(f"{path}: not a readable image") from None
    except (OSError, SyntaxError) as e:
        raise UsageError(f"{path}: cannot read image: {e}") from None


def save_png(path: Union[str, os.PathLike], array) -> Path:
    """Write ``array`` (uint8 [H, W] / [H, W, 3] / [H, W, 4], or uint16 [H, W]) as PNG atomically."""
    from PIL import Image

    array = np.asarray(array)
    ok = (array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)))) or (
        array.dtype == np.uint16 and array.ndim == 2
    )
    if not ok:
        raise UsageError(f"{path}: cannot write a {array.dtype} array of shape {array.shape} as PNG")
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def write_cityscapes_labelids(path: Union[str, os.PathLike], train_id_map) -> Path:
    """Save a trainId prediction as an official labelId PNG (for csEvalPixelLevelSemanticLabeling)."""
    ids = np.asarray(train_id_map)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise UsageError(f"{path}: train_id_map must be an integer [H, W] array, got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64)
    ignored = ids == 255
    bad = ~ignored & ((ids < 0) | (ids >= len(TRAIN_ID_TO_LABEL_ID)))
    if bad.any():
        raise UsageError(f"{path}: trainIds must be 0..18 or 255, got {np.unique(ids[bad])[:10].tolist()}")
    label_ids = TRAIN_ID_TO_LABEL_ID[np.where(ignored, 0, ids)]
    label_ids[ignored] = 0
    return save_png(path, label_ids)
