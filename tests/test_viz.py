"""Palettes, colourising, overlays and official Cityscapes labelId PNGs."""

import numpy as np
import pytest
from PIL import Image

from lps_keras.viz import (
    CAMVID_PALETTE,
    CITYSCAPES_PALETTE,
    TRAIN_ID_TO_LABEL_ID,
    colorize,
    generic_palette,
    get_palette,
    overlay,
    save_png,
    write_cityscapes_labelids,
)

# Official cityscapesScripts labels.py: labelId -> trainId for the 19 evaluated classes.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def test_palettes():
    assert CITYSCAPES_PALETTE.shape == (19, 3) and CITYSCAPES_PALETTE.dtype == np.uint8
    assert tuple(CITYSCAPES_PALETTE[0]) == (128, 64, 128)  # road
    assert tuple(CITYSCAPES_PALETTE[10]) == (70, 130, 180)  # sky
    assert tuple(CITYSCAPES_PALETTE[13]) == (0, 0, 142)  # car
    assert tuple(CITYSCAPES_PALETTE[18]) == (119, 11, 32)  # bicycle
    # The SegNet CamVid table (shared data README).
    assert CAMVID_PALETTE.tolist() == [
        [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [0, 0, 192], [128, 128, 0],
        [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
    ]  # fmt: skip
    g = generic_palette(40)
    assert len({tuple(c) for c in g}) == 40 and not np.any(np.all(g == 0, axis=1))
    assert get_palette("bdd100k", 19) is CITYSCAPES_PALETTE
    assert get_palette("camvid", 11) is CAMVID_PALETTE
    assert get_palette("cityscapes", 7).shape == (7, 3)


def test_colorize_and_ignore_is_black():
    labels = np.array([[0, 1], [255, 2]])
    palette = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], np.uint8)
    rgb = colorize(labels, palette)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb, [[[10, 20, 30], [40, 50, 60]], [[0, 0, 0], [70, 80, 90]]])
    assert colorize(np.zeros((2, 3, 4), np.int32), palette).shape == (2, 3, 4, 3)
    with pytest.raises(ValueError, match=r"\[3\]"):
        colorize(np.array([[3]]), palette)


def test_overlay_blends_and_keeps_ignored_pixels():
    image = np.full((1, 2, 3), 100, np.uint8)
    labels = np.array([[0, 255]])
    palette = np.array([[200, 0, 50]], np.uint8)
    out = overlay(image, labels, palette, alpha=0.25)
    np.testing.assert_array_equal(out[0, 0], [125, 75, 88])  # 0.75 * 100 + 0.25 * colour, rounded
    np.testing.assert_array_equal(out[0, 1], [100, 100, 100])
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, np.zeros((2, 2), int), palette)
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32), labels, palette)


def test_save_png_is_atomic_and_lossless(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    path = save_png(tmp_path / "sub" / "x.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]  # no temp file left
    with pytest.raises(ValueError, match="x.png"):
        save_png(tmp_path / "x.png", np.zeros((2, 2), np.float32))


def test_cityscapes_labelid_round_trip(tmp_path):
    assert TRAIN_ID_TO_LABEL_ID.tolist() == sorted(LABEL_ID_TO_TRAIN_ID, key=LABEL_ID_TO_TRAIN_ID.get)
    train_ids = np.array([list(range(19)) + [255]] * 3, np.int32)
    path = write_cityscapes_labelids(tmp_path / "a_leftImg8bit.png", train_ids)
    label_ids = np.asarray(Image.open(path))
    assert label_ids.dtype == np.uint8 and label_ids.shape == train_ids.shape
    assert label_ids[0, 0] == 7 and label_ids[0, 18] == 33 and label_ids[0, 19] == 0
    back = np.vectorize(lambda v: LABEL_ID_TO_TRAIN_ID.get(int(v), 255))(label_ids)
    np.testing.assert_array_equal(back, train_ids)
    with pytest.raises(ValueError, match=r"0..18 or 255.*\[19\]"):
        write_cityscapes_labelids(tmp_path / "b.png", np.array([[19]]))


def test_read_rgb_scales_16_bit_greyscale_and_refuses_huge_images(tmp_path):
    from lps_keras.viz import read_rgb

    values = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = read_rgb(tmp_path / "g16.png")
    expected = np.rint(values / 257.0).astype(np.uint8)  # 65535 -> 255, linear
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=-1))
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb.png"), rgb)
    with pytest.raises(ValueError, match=r"rgb\.png: 8x8 is 0\.0 megapixels, above the limit"):
        read_rgb(tmp_path / "rgb.png", max_pixels=10)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.png: not a readable image"):
        read_rgb(tmp_path / "text.png")


def test_legend_lists_the_classes_present_with_their_colours():
    from lps_keras.viz import with_legend

    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    image = np.full((20, 200, 3), 128, np.uint8)
    labels = np.zeros((20, 200), np.int32)
    labels[:, 100:] = 2  # classes 0 and 2 present, 1 absent
    labels[0, 0] = 255
    out = with_legend(image, labels, palette, ["sky", "road", "car"])
    assert out.shape[1] == 200 and out.shape[0] > 20 and (out[:20] == image).all()
    strip = out[20:].reshape(-1, 3)
    colours = {tuple(int(v) for v in px) for px in strip}
    assert (255, 0, 0) in colours and (0, 0, 255) in colours and (0, 255, 0) not in colours
    # many classes wrap into more rows on a narrow image
    many = with_legend(np.zeros((4, 60, 3), np.uint8), np.arange(3).repeat(80).reshape(4, 60), palette,
                       ["first class", "second class", "third class"])
    assert many.shape[0] - 4 > out.shape[0] - 20


# ----------------------------------------------------------------------------- [faults]: decompression bomb
def _png_declaring(path, width, height):
    """A tiny PNG whose IHDR declares ``width`` x ``height`` (the pixel data stays 1x1)."""
    import struct
    import zlib

    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the chunk's CRC over type + data
    path.write_bytes(bytes(data))
    return path


def test_read_rgb_decompression_bomb_names_the_file(tmp_path):
    from lps_keras.errors import UsageError
    from lps_keras.viz import read_rgb

    bomb = _png_declaring(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(UsageError, match=r"bomb\.png: its header declares 900\.0 megapixels, above the limit of 50"):
        read_rgb(bomb, max_pixels=50_000_000)
    with pytest.raises(UsageError, match=r"bomb\.png: .*900\.0 megapixels"):
        read_rgb(bomb)  # no limit of ours: Pillow's own
