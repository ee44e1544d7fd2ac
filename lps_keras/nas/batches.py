"""The search's training batches: CamVid's (or any recipe's) training images, augmented as training
augments them, batch ``step`` the same on every run (a resumed search sees the batches the killed one would
have)."""

from __future__ import annotations

import numpy as np

from lps_keras.nas.errors import NASError


class TrainingBatches:
    """``data(step)`` -> (images, labels): batch ``step`` of the training images, the same on a rerun.

    The split's images are decoded once into memory (CamVid's 367 are ~190 MB); batch ``step`` draws
    its examples and their augmentation (``data.augment``, crop ``nas.crop_size``) from the stateless
    seed ``(nas.seed, step)``, so a resumed search sees the batches the killed one would have.
    """

    def __init__(self, recipe, log=print):
        import dataclasses

        from lps_keras.data.common import load_pair_numpy
        from lps_keras.data.pipeline import list_split

        cfg = recipe.nas
        files = list_split(recipe, recipe.data.train_split)
        n = len(files.images) if recipe.data.train_subset is None else min(recipe.data.train_subset,
                                                                           len(files.images))
        if n < 1:
            raise NASError(f"data.train_split: {recipe.data.train_split!r} has no images under {recipe.data.root}")
        log(f"[search] reading {n} training images ({recipe.data.train_split})")
        self.pairs = [load_pair_numpy(files, i) for i in range(n)]
        augment = recipe.data.augment
        if cfg.crop_size is not None:
            augment = dataclasses.replace(augment, crop_size=tuple(cfg.crop_size))
        self.augment, self.batch, self.seed = augment, cfg.batch_size, cfg.seed

    def __call__(self, step: int):
        import tensorflow as tf

        from lps_keras.data.augment import augment
        from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD

        rng = np.random.default_rng([self.seed, step])
        images, labels = [], []
        for j, i in enumerate(rng.integers(0, len(self.pairs), size=self.batch)):
            image, label = self.pairs[i]
            seed = tf.constant([self.seed, step * self.batch + j], tf.int64)
            x, y = augment(tf.constant(image, tf.float32) / 255.0, tf.constant(label, tf.int32), seed, self.augment)
            images.append((x - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD))
            labels.append(y)
        return tf.stack(images), tf.stack(labels)
