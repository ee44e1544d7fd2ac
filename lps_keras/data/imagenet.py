"""ImageNet (or any class-folder image set) for classification pretraining.

Sources (``data.source``):

- ``directory``: ``data.root/<split>/<class>/<image>``, the layout of ImageNet's extracted
  ``train`` / ``val`` folders and of ``keras.utils.image_dataset_from_directory``, which lists the
  files and assigns the labels (class index = position of the folder name in sorted order). The
  images are decoded here at full size: Keras' own decoder resizes every image to one fixed size
  first, which would distort the aspect ratio before the random resized crop.
- ``tfds``: TFDS ``imagenet2012`` built from the manual-download directory ``data.root`` (the
  ``ILSVRC2012_img_{train,val}.tar`` files); split ``val`` means TFDS' ``validation``.

Training images get an Inception-style random resized crop (``pretrain.crop_area`` of the image's
area, aspect ``pretrain.crop_aspect``, resized to ``pretrain.image_size``) and a horizontal flip;
evaluation images are resized to shorter side ``pretrain.eval_resize`` and centre-cropped.
Both are normalised with the ImageNet mean and std, as the segmentation inputs are.

Like :func:`lps_keras.data.build_dataset`, each training example is paired with its augmentation
seed before anything is skipped, so a run resumed at step ``s`` (``skip_examples = s * batch``)
sees the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import tensorflow as tf

from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD, DataError, MissingDataError
from lps_keras.recipe import Recipe

__all__ = ["ClassFolders", "list_class_folders", "build_classification_dataset"]

#: The file types ``image_dataset_from_directory`` lists.
IMAGE_FORMATS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class ClassFolders:
    """The images of one split: file paths, integer labels and the class (folder) names."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]


def list_class_folders(root, split: str) -> ClassFolders:
    """The images of ``root/split/<class>/``; raises DataError naming the folder if it is missing or a class is empty."""
    import keras

    directory = Path(root) / split
    if not directory.is_dir():
        raise MissingDataError(f"data.root: split folder {str(directory)!r} does not exist "
                               f"(expected {directory}/<class>/<image>.jpg)")
    class_dirs = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{directory}: no class subfolders (expected {directory}/<class>/<image>.jpg)")
    try:
        ds = keras.utils.image_dataset_from_directory(directory, labels="inferred", label_mode="int", batch_size=None,
                                                      shuffle=False, follow_links=True, verbose=False)
    except ValueError as e:  # "No images found in directory ..."
        raise DataError(f"{directory}: {e}") from None
    names = tuple(ds.class_names)
    index = {name: i for i, name in enumerate(names)}
    paths = tuple(str(p) for p in ds.file_paths)
    labels = tuple(index[Path(p).relative_to(directory).parts[0]] for p in paths)
    counts = [0] * len(names)
    for label in labels:
        counts[label] += 1
    empty = [name for name, n in zip(names, counts) if n == 0]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(f"{directory / empty[0]}: class folder has no images ({', '.join(IMAGE_FORMATS)}){more}")
    return ClassFolders(paths, labels, names)


def _normalise(image_01):
    return (image_01 - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)


def _decode(data):
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _checked_decoder(paths: list[str]):
    """``decode(index)``: file ``paths[index]`` decoded as :func:`_decode` does, in ``tf.data``.

    TensorFlow's own decoder (the same pixels as before), run eagerly per file so that a file it
    cannot decode (not an image, truncated) raises a DataError naming it, which
    :func:`lps_keras.data.unwrap_data_error` recovers from the error ``fit`` sees, as the
    segmentation readers' errors are; decoded in the graph, the error named no file.
    """
    from lps_keras.data.pipeline import record_data_error

    def decode(index):
        path = paths[int(index)]
        try:
            return _decode(tf.io.read_file(path))
        except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError) as e:
            detail = (e.message or type(e).__name__).strip().splitlines()[0].split(" [Op:")[0]
            raise record_data_error(DataError(f"{path}: cannot read image: {detail}")) from None

    def tf_decode(index):
        image = tf.py_function(decode, [index], tf.uint8)
        image.set_shape([None, None, 3])
        return image

    return tf_decode


def random_resized_crop(image, seed, size, area_range, aspect_range):
    """A random crop of ``area_range`` of the image's area and aspect (w/h) in ``aspect_range``,
    resized to ``size``, flipped left-right with probability 1/2; float in [0, 1].

    After 10 failed tries to fit such a crop the whole image is used (TF's fallback).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0],
        min_object_covered=area_range[0], aspect_ratio_range=aspect_range, area_range=area_range,
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, extent)
    crop = tf.image.resize(tf.cast(crop, tf.float32) / 255.0, size, method="bilinear", antialias=False)
    return tf.image.stateless_random_flip_left_right(crop, seed=seeds[1])


def center_crop(image, size, resize_to: int):
    """Shorter side resized to ``resize_to`` (aspect kept), then the centre ``size`` crop; float in [0, 1]."""
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = float(resize_to) / tf.reduce_min(hw)
    new_hw = tf.cast(tf.round(hw * scale), tf.int32)
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, new_hw, method="bilinear", antialias=True)
    return tf.image.resize_with_crop_or_pad(image, size[0], size[1])


def _spread(n: int, subset: Optional[int]) -> list[int]:
    """``subset`` indices of ``range(n)`` spread evenly (all of it without a subset).

    The files are sorted by class, so the first N would be the first few classes only.
    """
    if not subset or subset >= n:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / max(subset - 1, 1))) for i in range(subset)})


def _tfds_split(root, split: str):
    """(encoded image, label) examples of TFDS imagenet2012 and its class names."""
    import tensorflow_datasets as tfds

    if not Path(root).is_dir():
        raise MissingDataError(f"data.root: TFDS manual-download directory {str(root)!r} does not exist")
    builder = tfds.builder("imagenet2012")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    except AssertionError as e:  # TFDS' "Manual directory ... does not exist or is empty" (+ instructions)
        first = (str(e).strip().splitlines() or ["cannot build"])[0].split(". Create it")[0]
        raise DataError(f"data.root: TFDS imagenet2012: {first} (it needs ILSVRC2012_img_train.tar and "
                        "ILSVRC2012_img_val.tar)") from None
    ds = builder.as_dataset(split="validation" if split == "val" else split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds, tuple(builder.info.features["label"].names)  # the WordNet ids, in label order


def build_classification_dataset(recipe: Recipe, split: str, training: bool, batch_size: Optional[int] = None,
                                 skip_examples: int = 0) -> tuple[tf.data.Dataset, tuple[str, ...]]:
    """(batches of (normalised image, int32 label), class names) of ``split``.

    Training: shuffled, augmented, repeated forever, ``skip_examples`` in (see module doc).
    Evaluation: one deterministic pass. Class names are the folder names (TFDS: the WordNet ids).
    ``data.train_subset`` / ``val_subset`` take that many images spread over the sorted files (all
    classes); with TFDS the first ones read.
    """
    cfg, pre = recipe.data, recipe.pretrain
    if batch_size is None:
        batch_size = recipe.train.batch_size if training else recipe.eval.batch_size
    seed = recipe.train.seed
    subset = cfg.train_subset if training else cfg.val_subset
    autotune = tf.data.AUTOTUNE
    seeds = tf.data.Dataset.random(seed=seed).batch(2) if training else None
    if cfg.source == "tfds":
        ds, names = _tfds_split(cfg.root, split)
        if subset:
            ds = ds.take(subset)
        if training:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
            ds = tf.data.Dataset.zip((ds, seeds)).skip(skip_examples)
        load = None
    else:
        folders = list_class_folders(cfg.root, split)
        names = folders.class_names
        keep = _spread(len(folders.paths), subset)
        paths = tf.constant([folders.paths[i] for i in keep])
        labels = tf.constant([folders.labels[i] for i in keep], tf.int32)
        ds = tf.data.Dataset.range(int(paths.shape[0]))
        if training:
            # Shuffle, repeat and skip indices before reading: skipping costs nothing.
            ds = ds.shuffle(int(paths.shape[0]), seed=seed, reshuffle_each_iteration=True).repeat()
            ds = tf.data.Dataset.zip((ds, seeds)).skip(skip_examples)

        decode_file = _checked_decoder([folders.paths[i] for i in keep])

        def load(index):
            return decode_file(index), labels[index]

    size = tuple(pre.image_size)
    if training:
        def train_map(example, pair_seed):
            image, label = load(example) if load is not None else (_decode(example[0]), example[1])
            image = random_resized_crop(image, pair_seed, size, pre.crop_area, pre.crop_aspect)
            return _normalise(image), label

        ds = ds.map(train_map, num_parallel_calls=autotune)
    else:
        def eval_map(*example):
            image, label = load(example[0]) if load is not None else (_decode(example[0]), example[1])
            return _normalise(center_crop(image, size, pre.eval_resize)), label

        ds = ds.map(eval_map, num_parallel_calls=autotune, deterministic=True)
    if cfg.skip_bad_files:
        ds = ds.ignore_errors()
    ds = ds.batch(batch_size, drop_remainder=training, num_parallel_calls=autotune)
    options = tf.data.Options()
    options.deterministic = bool(cfg.deterministic or not training)
    return ds.with_options(options).prefetch(autotune), names
