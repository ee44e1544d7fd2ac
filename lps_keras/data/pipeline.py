"""One entry point from a recipe to a ``tf.data.Dataset`` of (image, label) batches.

Images come out float32 NHWC, normalised with the ImageNet mean/std; labels int32 [B, H, W]
in train ids with 255 = ignore. ``training=True`` shuffles, repeats, augments (scale, crop,
flip, colour jitter; :mod:`lps_keras.data.augment`) and batches with a fixed crop size;
evaluation keeps every image at full resolution (optionally resizing the image only, never the
label) in a deterministic order.

Files are decoded by :func:`~lps_keras.data.common.load_pair_numpy` inside the graph, the same
code the TFDS builders use, so a truncated image, a size mismatch or an invalid label value
raises an error that names the file. ``data.skip_bad_files`` turns those errors into skipped
examples, each reported and counted in :data:`SKIPPED`.
"""

from __future__ import annotations

import dataclasses

import collections
import os
import re
import sys
import threading
from pathlib import Path
from typing import Optional, Union

import numpy as np
import tensorflow as tf

from lps_keras.data import bdd100k, camvid, cityscapes, synthetic
from lps_keras.data.augment import augment
from lps_keras.data.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    DatasetInfo,
    FileList,
    check_pair,
    load_pair_numpy,
)
from lps_keras.recipe import DataConfig, Recipe

_INFOS = {
    "cityscapes": cityscapes.INFO,
    "bdd100k": bdd100k.INFO,
    "camvid": camvid.INFO,
    "camvid_original": camvid.INFO_ORIGINAL,
    "synthetic": synthetic.INFO,
}

#: Files skipped because of ``data.skip_bad_files``, by dataset split ("camvid/train" -> count).
SKIPPED: collections.Counter = collections.Counter()
_SKIP_LOCK = threading.Lock()


#: DataErrors raised while ``tf.data`` decoded a file, by message (see :func:`unwrap_data_error`).
_RAISED: dict[str, DataError] = {}
_RAISED_PATTERN = re.compile(r"\b(?:Missing)?DataError: (.+)")


def unwrap_data_error(error: BaseException) -> Optional[DataError]:
    """The :class:`DataError` behind ``error``, or None.

    A DataError raised inside ``tf.data`` (a truncated image, an invalid label value) reaches
    ``model.fit`` or an iterator as a ``tf.errors.InvalidArgumentError`` whose message embeds the
    whole Python traceback. The pipeline keeps every error it raised, so the original comes back
    with its one-line message naming the file.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DataError):
            return error
        if isinstance(error, tf.errors.OpError):
            match = _RAISED_PATTERN.search(error.message or "")
            if match:
                message = match.group(1).strip()
                return _RAISED.get(message) or DataError(message)
        error = error.__cause__ or error.__context__
    return None


def record_data_error(error: DataError) -> DataError:
    """Remember ``error``, about to be raised inside a ``tf.data`` function, for :func:`unwrap_data_error`."""
    _RAISED[str(error)] = error
    return error


def data_errors_raised() -> bool:
    """Whether a ``tf.data`` decoder of this process has raised a DataError (see ``cli.exit_process``)."""
    return bool(_RAISED)


def get_dataset_info(name: str) -> DatasetInfo:
    """Class names, colours and splits of a dataset this project reads."""
    if name not in _INFOS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(_INFOS))}")
    return _INFOS[name]


def _data_config(recipe_or_data: Union[Recipe, DataConfig]) -> DataConfig:
    if isinstance(recipe_or_data, Recipe):
        return recipe_or_data.data
    if isinstance(recipe_or_data, DataConfig):
        return recipe_or_data
    raise TypeError(f"expected a Recipe or DataConfig, got {type(recipe_or_data).__name__}")


def list_split(recipe_or_data: Union[Recipe, DataConfig], split: str) -> FileList:
    """The (image, label) files of ``split`` as the recipe's dataset and root describe them.

    The synthetic set is generated under ``data.root`` first if it is not there yet.
    """
    cfg = _data_config(recipe_or_data)
    if cfg.source == "tfds":
        raise DataError("data.source='tfds' yields examples, not files: use build_dataset, which reads TFDS")
    if "+" in split:  # "train+val": the splits' files one after the other (TFDS reads the same syntax itself)
        parts = [list_split(cfg, part) for part in split.split("+")]
        return dataclasses.replace(parts[0], split=split, images=sum((p.images for p in parts), ()),
                                   labels=sum((p.labels for p in parts), ()))
    root = Path(cfg.root)
    if cfg.dataset == "synthetic":
        synthetic.generate(root, cfg.synthetic)
        return cityscapes.list_split(root, split, info=synthetic.INFO)
    if cfg.dataset == "cityscapes":
        return cityscapes.list_split(root, split)
    if cfg.dataset == "bdd100k":
        return bdd100k.list_split(root, split)
    if cfg.dataset == "camvid":
        return camvid.list_split(root, split)
    if cfg.dataset == "camvid_original":
        return camvid.list_split_original(root, split)
    raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}")


def num_examples(recipe_or_data: Union[Recipe, DataConfig], split: str, training: bool = False) -> int:
    """Number of examples ``build_dataset`` reads for ``split`` (after the subset option)."""
    cfg = _data_config(recipe_or_data)
    files = list_split(cfg, split)
    return len(files.subset(cfg.train_subset if training else cfg.val_subset))


def check_split(recipe_or_data: Union[Recipe, DataConfig], split: str, training: bool = False) -> int:
    """Check every pair of ``split`` cheaply (image headers and sizes, every label value); returns the count.

    A training run checks its validation split before the first step, so a bad validation file
    fails in seconds instead of after hours of training. Raises :class:`DataError` naming the
    first bad file. Nothing is checked for TFDS sources or with ``data.skip_bad_files``.
    """
    cfg = _data_config(recipe_or_data)
    if cfg.source == "tfds" or cfg.skip_bad_files:
        return 0
    files = list_split(cfg, split).subset(cfg.train_subset if training else cfg.val_subset)

    def check(i):
        try:
            check_pair(files, i)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - anything Pillow raises on a broken file
            raise DataError(f"{files.images[i]} / {files.labels[i]}: {type(e).__name__}: {e}") from None

    # Pillow decodes without the GIL: a few threads check a training split (thousands of labels)
    # several times faster; map() still raises the first bad file in file order.
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(check, range(len(files))):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return len(files)


def _loader(files: FileList, skip_bad: bool):
    key = f"{files.info.name}/{files.split}"

    def load(index):
        i = int(index)
        try:
            image, label = _load_pair(files, i)
        except DataError as e:
            if not skip_bad:
                _RAISED[str(e)] = e
                raise
            with _SKIP_LOCK:
                SKIPPED[key] += 1
                count = SKIPPED[key]
            print(f"warning: skipping bad file ({count} skipped in {key} so far): {e}", file=sys.stderr, flush=True)
            return np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1), np.int32), False
        return image, label.astype(np.int32), True

    def tf_load(index):
        image, label, ok = tf.numpy_function(load, [index], [tf.uint8, tf.int32, tf.bool], stateful=False)
        image.set_shape([None, None, 3])
        label.set_shape([None, None])
        ok.set_shape([])
        return image, label, ok

    return tf_load


def _load_pair(files: FileList, index: int):
    try:
        return load_pair_numpy(files, index)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - anything Pillow raises on a broken file
        raise DataError(f"{files.images[index]} / {files.labels[index]}: {type(e).__name__}: {e}") from None


def _is_ok(image, label, ok):
    return ok


def _drop_ok(image, label, ok):
    return image, label


def _normalise(image_01):
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    return (image_01 - mean) / std


def _tfds_dataset(cfg: DataConfig, split: str):
    """(uint8 image, int32 label) examples from a TFDS builder (manual_dir = data.root)."""
    if cfg.dataset in ("cityscapes", "synthetic"):
        return cityscapes.load_tfds(cfg.root, split)
    import tensorflow_datasets as tfds

    module = {"bdd100k": bdd100k, "camvid": camvid, "camvid_original": camvid}[cfg.dataset]
    builder_cls = module.tfds_builder_class()
    config = {"bdd100k": "sem_seg", "camvid": "segnet", "camvid_original": "original"}[cfg.dataset]
    builder = builder_cls(config=config)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(cfg.root)))
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return ds.map(lambda ex: (ex["image"], tf.cast(ex["segmentation_label"][..., 0], tf.int32)),
                  num_parallel_calls=tf.data.AUTOTUNE)


def build_dataset(
    recipe_or_data: Union[Recipe, DataConfig],
    split: str,
    training: bool,
    batch_size: Optional[int] = None,
    seed: Optional[int] = None,
    repeat: Optional[bool] = None,
    drop_remainder: Optional[bool] = None,
    skip_examples: int = 0,
) -> tf.data.Dataset:
    """(image, label) batches of ``split`` for ``model.fit`` / evaluation.

    Args:
        recipe_or_data: a :class:`Recipe` (its ``data`` and ``train.batch_size``/``seed`` are used)
            or a bare :class:`DataConfig`.
        split: directory split name (``train``, ``val``, ``test``).
        training: augment, shuffle and (by default) repeat forever; else full-resolution,
            deterministic, one pass.
        batch_size: default ``train.batch_size`` when training, ``eval.batch_size`` otherwise
            (1 with a bare DataConfig).
        seed: augmentation and shuffle seed (default ``train.seed``).
        skip_examples: training only: start the (example, augmentation seed) stream this many
            examples in, without decoding the skipped files (file sources without ``cache``;
            TFDS and cached sources read them). A run resumed at optimizer step ``s`` passes
            ``s * batch_size`` and sees the batches the uninterrupted run would have seen.
    """
    cfg = _data_config(recipe_or_data)
    recipe = recipe_or_data if isinstance(recipe_or_data, Recipe) else None
    if batch_size is None:
        batch_size = (recipe.train.batch_size if training else recipe.eval.batch_size) if recipe else 1
    if seed is None:
        seed = recipe.train.seed if recipe else 0
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    skip_examples = int(skip_examples)
    if skip_examples < 0:
        raise ValueError(f"skip_examples must be >= 0, got {skip_examples!r}")
    if skip_examples and not training:
        raise ValueError("skip_examples applies to the training stream only (training=True)")
    autotune = tf.data.AUTOTUNE
    subset = cfg.train_subset if training else cfg.val_subset
    # Each training example is paired with its augmentation seed *before* anything is skipped or
    # filtered, so the (example, seed) stream is a pure function of ``seed``: a resumed run that
    # skips the first ``skip_examples`` gets exactly the pairs the interrupted run would have seen.
    seeds = tf.data.Dataset.random(seed=seed).batch(2) if training else None

    if cfg.source == "tfds":
        ds = _tfds_dataset(cfg, split)
        if subset:
            ds = ds.take(subset)
        if cfg.cache:
            ds = ds.cache()
        if training:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        if training:
            ds = tf.data.Dataset.zip((ds, seeds)).skip(skip_examples)
    else:
        files = list_split(cfg, split).subset(subset)
        load = _loader(files, cfg.skip_bad_files)
        ds = tf.data.Dataset.range(len(files))
        if training and not cfg.cache:
            # Shuffle, repeat and skip indices, then decode: skipping costs nothing and shuffling
            # covers the whole split without buffering decoded images.
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
            if repeat:
                ds = ds.repeat()
            ds = tf.data.Dataset.zip((ds, seeds)).skip(skip_examples)
            ds = ds.map(lambda index, pair_seed: ((*load(index),), pair_seed), num_parallel_calls=autotune)
            ds = ds.filter(lambda example, pair_seed: example[2])
            ds = ds.map(lambda example, pair_seed: ((example[0], example[1]), pair_seed))
        else:
            ds = ds.map(load, num_parallel_calls=autotune, deterministic=True if not training else None)
            ds = ds.filter(_is_ok).map(_drop_ok)
            if cfg.cache:
                ds = ds.cache()
                if training:
                    ds = ds.shuffle(min(len(files), max(cfg.shuffle_buffer, 1)), seed=seed,
                                    reshuffle_each_iteration=True)
            if repeat:
                ds = ds.repeat()
            if training:
                ds = tf.data.Dataset.zip((ds, seeds)).skip(skip_examples)

    if training:
        aug = cfg.augment

        def train_map(example, pair_seed):
            image, label = example
            image = tf.cast(image, tf.float32) / 255.0
            image, label = augment(image, label, tf.cast(pair_seed, tf.int64), aug)
            return _normalise(image), label

        ds = ds.map(train_map, num_parallel_calls=autotune)
    else:
        eval_size = cfg.eval_size

        def eval_map(image, label):
            image = tf.cast(image, tf.float32) / 255.0
            if eval_size is not None:
                # Only the image is resized; predictions are upsampled back to the label's size.
                image = tf.image.resize(image, eval_size, method="bilinear")
            return _normalise(image), label

        ds = ds.map(eval_map, num_parallel_calls=autotune, deterministic=True)

    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=autotune,
                  deterministic=True if not training else None)
    options = tf.data.Options()
    options.deterministic = bool(cfg.deterministic or not training)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(autotune)


def class_names(dataset: str, num_classes: int) -> list[str]:
    """The dataset's class names, or ``"0"``, ``"1"``, ... when it has none of that count."""
    try:
        names = list(get_dataset_info(dataset).class_names)
        if len(names) == num_classes:
            return names
    except (ImportError, AttributeError, KeyError, ValueError):
        pass
    return [str(c) for c in range(num_classes)]

