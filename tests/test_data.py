"""Dataset readers, pipeline, augmentation and error handling on tiny fixtures in the official layouts."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lps_keras.data import (
    DataError,
    build_dataset,
    camvid,
    cityscapes,
    get_dataset_info,
    list_split,
    num_examples,
    synthetic,
)
from lps_keras.data import augment as aug_mod
from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD, MissingDataError
from lps_keras.data.pipeline import SKIPPED
from lps_keras.recipe import AugmentConfig, DataConfig, SyntheticConfig

H, W = 12, 16


def _png(path: Path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _image(seed):
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _denorm(x):
    return np.round((np.asarray(x) * IMAGENET_STD + IMAGENET_MEAN) * 255).astype(int)


def make_cityscapes(root: Path, label_ids, split="val", train_ids=False, n=2):
    for i in range(n):
        city = "aachen" if i % 2 == 0 else "bonn"
        stem = f"{city}_{i:06d}_000019"
        _png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _image(i))
        _png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
        _png(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", np.zeros((H, W, 3)))
        if train_ids:
            _png(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
                 cityscapes.label_ids_to_train_ids(np.asarray(label_ids)))


def make_camvid(root: Path, label, split="train", n=3):
    for i in range(n):
        _png(root / split / f"0001TP_{6690 + 30 * i:06d}.png", _image(i))
        _png(root / f"{split}annot" / f"0001TP_{6690 + 30 * i:06d}.png", label)


def cfg(dataset, root, **kw):
    return DataConfig(dataset=dataset, root=str(root), **kw)


def eval_labels(data_cfg, split):
    return [y.numpy()[0] for _, y in build_dataset(data_cfg, split, training=False)]


# --------------------------------------------------------------------------- tables
def test_cityscapes_label_tables():
    ids = np.arange(34)
    train = cityscapes.label_ids_to_train_ids(ids)
    eval_ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    assert [int(train[i]) for i in eval_ids] == list(range(19))
    assert all(train[i] == 255 for i in set(range(34)) - set(eval_ids))
    assert cityscapes.train_ids_to_label_ids(np.arange(19)).tolist() == eval_ids
    from lps_keras.viz import TRAIN_ID_TO_LABEL_ID

    assert np.asarray(TRAIN_ID_TO_LABEL_ID).tolist()[:19] == eval_ids


# --------------------------------------------------------------------------- layouts
def test_cityscapes_layout_maps_label_ids(tmp_path):
    label = np.zeros((H, W), np.uint8)
    label[:4] = 7  # road -> 0
    label[4:8] = 26  # car -> 13
    label[8:] = 1  # ego vehicle -> ignore
    make_cityscapes(tmp_path, label)
    c = cfg("cityscapes", tmp_path)
    assert num_examples(c, "val") == 2
    for y in eval_labels(c, "val"):
        assert (y[:4] == 0).all() and (y[4:8] == 13).all() and (y[8:] == 255).all()
    x, _ = next(iter(build_dataset(c, "val", training=False)))
    assert x.shape == (1, H, W, 3) and x.dtype == tf.float32
    np.testing.assert_array_equal(_denorm(x[0]), _image(0))  # sorted order: aachen first, normalised


def test_cityscapes_prefers_train_ids(tmp_path):
    label = np.full((H, W), 7, np.uint8)
    make_cityscapes(tmp_path, label, train_ids=True)
    files = list_split(cfg("cityscapes", tmp_path), "val")
    assert all(p.endswith("_gtFine_labelTrainIds.png") for p in files.labels)
    assert all((y == 0).all() for y in eval_labels(cfg("cityscapes", tmp_path), "val"))


def test_camvid_segnet_void_is_ignored(tmp_path):
    label = np.tile(np.arange(12, dtype=np.uint8), (H, 2))[:, :W]
    make_camvid(tmp_path, label, split="val")
    y = eval_labels(cfg("camvid", tmp_path), "val")[0]
    expected = np.where(label == 11, 255, label)
    np.testing.assert_array_equal(y, expected)
    assert get_dataset_info("camvid").num_classes == 11


def test_camvid_original_colours(tmp_path):
    road = (128, 64, 128)
    lane = (128, 0, 192)  # LaneMkgsDriv -> Road
    car = (64, 0, 128)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:3] = road
    rgb[3:6] = lane
    rgb[6:9] = car
    rgb[9:] = (1, 2, 3)  # unknown colour -> ignore
    stem = "0001TP_006690"
    _png(tmp_path / camvid.ORIGINAL_IMAGE_DIR / f"{stem}.png", _image(0))
    _png(tmp_path / camvid.ORIGINAL_LABEL_DIR / f"{stem}_L.png", rgb)
    split = camvid.original_split_of(stem)
    y = eval_labels(cfg("camvid_original", tmp_path), split)[0]
    assert (y[:6] == 3).all() and (y[6:9] == 8).all() and (y[9:] == 255).all()
    np.testing.assert_array_equal(camvid.rgb_to_train_ids(rgb), y)


def test_bdd100k_layout(tmp_path):
    label = np.full((H, W), 13, np.uint8)
    label[0] = 255
    for i in range(2):
        (tmp_path / "images/10k/val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(i)).save(tmp_path / f"images/10k/val/img{i}.jpg", quality=95)
        _png(tmp_path / f"labels/sem_seg/masks/val/img{i}.png", label)
    ys = eval_labels(cfg("bdd100k", tmp_path), "val")
    assert len(ys) == 2 and all((y[1:] == 13).all() and (y[0] == 255).all() for y in ys)


@pytest.mark.slow
def test_tfds_builder_on_fixture(tmp_path):
    label = np.tile(np.arange(12, dtype=np.uint8), (H, 2))[:, :W]
    make_camvid(tmp_path / "manual", label, split="train", n=2)
    builder = camvid.tfds_builder_class()(config="segnet", data_dir=str(tmp_path / "tfds"))
    import tensorflow_datasets as tfds

    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    examples = list(builder.as_dataset(split="train"))
    assert len(examples) == 2
    np.testing.assert_array_equal(examples[0]["segmentation_label"][..., 0], np.where(label == 11, 255, label))


# --------------------------------------------------------------------------- errors
def test_missing_directory_names_path(tmp_path):
    with pytest.raises(MissingDataError, match=str(tmp_path / "nope")):
        build_dataset(cfg("cityscapes", tmp_path / "nope"), "val", training=False)


def test_orphans_are_errors(tmp_path):
    label = np.full((H, W), 7, np.uint8)
    make_cityscapes(tmp_path, label)
    extra = tmp_path / "leftImg8bit/val/aachen/aachen_999999_000019_leftImg8bit.png"
    _png(extra, _image(9))
    with pytest.raises(DataError, match="aachen_999999_000019_leftImg8bit.png.*has no label"):
        list_split(cfg("cityscapes", tmp_path), "val")
    extra.unlink()
    _png(tmp_path / "gtFine/val/bonn/bonn_888888_000019_gtFine_labelIds.png", label)
    with pytest.raises(DataError, match="bonn_888888_000019_gtFine_labelIds.png.*has no image"):
        list_split(cfg("cityscapes", tmp_path), "val")


def _iterate(ds):
    return [y for _, y in ds]


def test_truncated_image_size_mismatch_and_bad_values_name_the_file(tmp_path):
    label = np.zeros((H, W), np.uint8)
    make_camvid(tmp_path, label, split="val", n=3)
    bad = tmp_path / "val/0001TP_006720.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(tf.errors.OpError, match="0001TP_006720"):
        _iterate(build_dataset(cfg("camvid", tmp_path), "val", training=False))
    _png(bad, _image(1)[:-2])
    with pytest.raises(tf.errors.OpError, match="0001TP_006720.*differs from image size"):
        _iterate(build_dataset(cfg("camvid", tmp_path), "val", training=False))
    _png(bad, _image(1))
    _png(tmp_path / "valannot/0001TP_006750.png", np.full((H, W), 12, np.uint8))
    with pytest.raises(tf.errors.OpError, match=r"0001TP_006750.png: invalid label values \[12\]"):
        _iterate(build_dataset(cfg("camvid", tmp_path), "val", training=False))


def test_skip_bad_files_counts(tmp_path):
    label = np.zeros((H, W), np.uint8)
    make_camvid(tmp_path, label, split="val", n=3)
    (tmp_path / "val/0001TP_006720.png").write_bytes(b"not a png")
    SKIPPED.clear()
    ys = _iterate(build_dataset(cfg("camvid", tmp_path, skip_bad_files=True), "val", training=False))
    assert len(ys) == 2 and SKIPPED["camvid/val"] == 1


# --------------------------------------------------------------------------- augmentation
def test_training_batches_shapes_and_label_values(tmp_path):
    label = np.zeros((H, W), np.uint8)
    label[:, W // 2:] = 5
    make_camvid(tmp_path, label, split="train", n=3)
    c = cfg("camvid", tmp_path, augment=AugmentConfig(crop_size=(20, 24), scale_range=(0.5, 2.0)))
    seen = set()
    for x, y in build_dataset(c, "train", training=True, batch_size=2).take(8):
        assert x.shape == (2, 20, 24, 3) and y.shape == (2, 20, 24) and y.dtype == tf.int32
        seen |= set(np.unique(y.numpy()).tolist())
    assert seen <= {0, 5, 255} and {0, 5, 255} <= seen  # 255 from padding: crop larger than image


@pytest.mark.parametrize("cache", [False, True])
def test_skip_examples_continues_the_training_stream_exactly(tmp_path, cache):
    # Resume contract: skipping k*b examples gives batch k onwards of the unskipped stream,
    # images and augmentation alike, across an epoch boundary (3 files, batch 2).
    label = np.zeros((H, W), np.uint8)
    label[:, W // 2:] = 5
    make_camvid(tmp_path, label, split="train", n=3)
    c = cfg("camvid", tmp_path, deterministic=True, cache=cache,
            augment=AugmentConfig(crop_size=(20, 24), scale_range=(0.5, 2.0)))
    full = list(build_dataset(c, "train", training=True, batch_size=2, seed=11).take(6))
    resumed = list(build_dataset(c, "train", training=True, batch_size=2, seed=11, skip_examples=3 * 2).take(3))
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    assert not np.array_equal(full[0][0].numpy(), resumed[0][0].numpy())
    with pytest.raises(ValueError, match="skip_examples"):
        build_dataset(c, "train", training=True, skip_examples=-1)
    with pytest.raises(ValueError, match="training stream only"):
        build_dataset(c, "val", training=False, skip_examples=2)


def test_augmentation_keeps_image_and_label_aligned():
    # Image channels encode the label, so any misalignment of flip/crop shows as a mismatch.
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (24, 32)).repeat(4, 0).repeat(4, 1)  # 96x128 in 4x4 blocks
    image = np.stack([label / 18.0] * 3, -1).astype("float32")
    config = AugmentConfig(crop_size=(64, 64), scale_range=(1.0, 1.0), brightness=0, contrast=0, saturation=0)
    for s in range(6):
        img, lab = aug_mod.augment(tf.constant(image), tf.constant(label, tf.int32), tf.constant([s, 1], tf.int64),
                                   config)
        img, lab = img.numpy(), lab.numpy()
        valid = lab != 255
        np.testing.assert_array_equal(np.round(img[..., 0] * 18)[valid], lab[valid])
        assert set(np.unique(lab)) <= set(np.unique(label)) | {255}
    # With scaling, the label is resampled by nearest neighbour: values stay in the original set.
    config = dataclasses.replace(config, scale_range=(0.5, 2.0))
    for s in range(6):
        _, lab = aug_mod.augment(tf.constant(image), tf.constant(label, tf.int32), tf.constant([s, 2], tf.int64),
                                 config)
        assert set(np.unique(lab.numpy())) <= set(np.unique(label)) | {255}


def test_augmentation_is_deterministic_per_seed():
    image = tf.random.stateless_uniform((40, 50, 3), seed=[1, 2])
    label = tf.zeros((40, 50), tf.int32)
    config = AugmentConfig(crop_size=(32, 32))
    a = aug_mod.augment(image, label, tf.constant([3, 4], tf.int64), config)[0].numpy()
    b = aug_mod.augment(image, label, tf.constant([3, 4], tf.int64), config)[0].numpy()
    c = aug_mod.augment(image, label, tf.constant([3, 5], tf.int64), config)[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# --------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_read_as_cityscapes(tmp_path):
    sc = SyntheticConfig(num_train=3, num_val=2, height=64, width=128, seed=7)
    synthetic.generate(tmp_path / "a", sc, progress=False)
    synthetic.generate(tmp_path / "b", sc, progress=False)
    fa = list_split(cfg("synthetic", tmp_path / "a", synthetic=sc), "train")
    fb = list_split(cfg("synthetic", tmp_path / "b", synthetic=sc), "train")
    assert len(fa) == 3 and all(p.endswith("_gtFine_labelIds.png") for p in fa.labels)
    for pa, pb in zip(fa.images + fa.labels, fb.images + fb.labels):
        assert Path(pa).read_bytes() == Path(pb).read_bytes()
    ys = eval_labels(cfg("synthetic", tmp_path / "a", synthetic=sc), "val")
    classes = set().union(*(set(np.unique(y).tolist()) for y in ys))
    assert len(classes - {255}) >= 6 and classes <= set(range(19)) | {255}
    # Re-use, and refuse to overwrite a set made with other settings.
    synthetic.generate(tmp_path / "a", sc, progress=False)
    with pytest.raises(DataError, match="not a synthetic set with these settings"):
        synthetic.generate(tmp_path / "a", dataclasses.replace(sc, seed=8), progress=False)


# --------------------------------------------------------------------------- real data
@pytest.mark.needs_shared_data
def test_real_camvid_segnet(shared_data):
    root = shared_data / "camvid_segnet"
    c = cfg("camvid", root)
    assert num_examples(c, "train") == 367 and num_examples(c, "val") == 101
    values = set()
    for i, (x, y) in enumerate(build_dataset(c, "val", training=False)):
        assert x.shape == (1, 360, 480, 3) and y.shape == (1, 360, 480)
        values |= set(np.unique(y.numpy()).tolist())
        if i == 9:
            break
    assert values <= set(range(11)) | {255} and len(values) >= 8


@pytest.mark.slow
def test_cityscapes_through_tfds_builder_on_fixture_zips(tmp_path):
    """TFDS's own `cityscapes/semantic_segmentation` from the official zip names, labelIds -> trainIds."""
    import zipfile

    manual = tmp_path / "manual"
    manual.mkdir()
    label = np.zeros((1024, 2048), np.uint8)
    label[:512] = 7  # road -> 0
    label[512:] = 26  # car -> 13
    label[:, :16] = 0  # unlabeled -> 255
    image = np.zeros((1024, 2048, 3), np.uint8)
    image[..., 1] = 90
    for zip_name, root, suffix, array in (("leftImg8bit_trainvaltest.zip", "leftImg8bit", "leftImg8bit", image),
                                          ("gtFine_trainvaltest.zip", "gtFine", "gtFine_labelIds", label)):
        with zipfile.ZipFile(manual / zip_name, "w") as zf:
            for split in ("train", "val", "test"):
                png = tmp_path / f"{suffix}.png"
                Image.fromarray(array).save(png)
                zf.write(png, f"{root}/{split}/aachen/aachen_000000_000019_{suffix}.png")
    ds = cityscapes.load_tfds(manual, "val", data_dir=str(tmp_path / "tfds"))
    (img, lab), = list(ds)
    assert img.shape == (1024, 2048, 3) and int(img[0, 0, 1]) == 90
    lab = lab.numpy()
    assert (lab[:512, 16:] == 0).all() and (lab[512:, 16:] == 13).all() and (lab[:, :16] == 255).all()


def test_a_truncated_png_is_found_without_decoding_it(tmp_path):
    from lps_keras.data.common import DataError, check_png_complete

    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    check_png_complete(path)
    data = path.read_bytes()
    path.write_bytes(data + b"trailing bytes Pillow ignores")
    check_png_complete(path)
    path.write_bytes(data[:300])  # its header still reads: only the end is missing
    with pytest.raises(DataError, match=r"a\.png: cannot read image: truncated PNG file \(300 bytes"):
        check_png_complete(path)
