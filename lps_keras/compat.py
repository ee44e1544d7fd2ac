"""Every use of a private Keras / TensorFlow API in this project, in one place.

Each workaround names the library version it was written (and tested) for and the upstream issue
where there is one. On a newer major.minor version it still runs but warns once, so whoever
upgrades knows which workaround to re-check (and to delete once upstream fixes it):

- :func:`multi_worker_fit` -- Keras 3.15, keras-team/keras#20585: ``fit`` under
  ``MultiWorkerMirroredStrategy`` (first-batch shape probe, ``axis=0`` reduce of scalar logs).
- :class:`EpochBackup` -- Keras 3.15: ``BackupAndRestore``'s file paths, loader and epoch
  bookkeeping, to write backups atomically and to restore from the optimizer step.
- :func:`tftrt_build_info` -- TensorFlow 2.17 (the last line shipping TF-TRT): whether this
  TensorFlow was built with TensorRT, and which version.
- :func:`export_archive_single_copy` -- Keras 3.15: ``ExportArchive.track`` keeps the model's variables
  in a ``variables`` list beside the ``_all_variables`` its endpoints use, and the SavedModel stores
  every weight twice (a 13.5 MB LPS-S became 27 MB).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import keras
import numpy as np
from keras import ops

from lps_keras.fileio import atomic_write_bytes, atomic_write_json

KERAS_WRITTEN_FOR = "3.15"
TF_TRT_WRITTEN_FOR = "2.17"
_warned: set[str] = set()


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in str(version).split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def check_version(library: str, current: str, written_for: str, what: str) -> bool:
    """Warn once if ``current`` is newer (major.minor) than the version a workaround was written for.

    Returns True when the versions match or ``current`` is older.
    """
    if _major_minor(current) <= _major_minor(written_for):
        return True
    key = f"{library}:{what}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"lps_keras.compat: {what} was written for {library} {written_for}, running {library} "
                      f"{current}; check that it is still needed and still correct", RuntimeWarning, stacklevel=3)
    return False


# --------------------------------------------------------------------------- multi-worker fit
@contextlib.contextmanager
def multi_worker_fit(model: keras.Model, strategy, crop_size):
    """Work around two bugs of Keras 3's ``fit`` under ``MultiWorkerMirroredStrategy`` while in the block.

    (keras-team/keras#20585, still in Keras 3.15.) (1) Before the first step ``fit`` reduces the
    first distributed (image, label) batch across workers only to learn its shapes, and that reduce
    raises "Attempt to convert a value (PerReplica...)": the shapes are known from the recipe, so
    the model, loss and metrics are built symbolically here and ``fit``'s own build step is skipped
    for this instance. (2) Each step's logs are reduced with ``strategy.reduce("MEAN", v, axis=0)``,
    which fails on the scalar metrics: they are averaged across replicas with ``axis=None`` instead.
    Both are covered by a two-process test. The log-reduction patch is module-global in Keras, so
    it is undone when the block exits.
    """
    check_version("Keras", keras.__version__, KERAS_WRITTEN_FOR, "the multi-worker fit workaround (#20585)")
    h, w = crop_size
    batch = (np.zeros((1, h, w, 3), "float32"), np.zeros((1, h, w), "int32"))
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield model
    finally:
        tf_trainer.reduce_per_replica = original
        del model._maybe_symbolic_build  # back to the class's method


# --------------------------------------------------------------------------- BackupAndRestore
class EpochBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` (epoch-end saves, never deleted) with the internals this project uses
    behind public names, and an atomic writer.

    Written for Keras 3.15, whose callback keeps its file names in ``_weights_path`` /
    ``_training_metadata_path``, loads with ``_load_model``, counts epochs in ``_current_epoch``
    and sets the model's ``_initial_epoch`` on restore.
    """

    def __init__(self, backup_dir):
        check_version("Keras", keras.__version__, KERAS_WRITTEN_FOR, "the BackupAndRestore subclass")
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)

    @property
    def weights_path(self) -> str:
        return self._weights_path

    def exists(self) -> bool:
        return os.path.exists(self._weights_path)

    def load_backup(self, epoch_steps: int) -> int:
        """Load the backup into ``self.model`` (and its optimizer); returns the restored step.

        The initial epoch comes from the restored optimizer step, not from Keras' metadata file.
        """
        super()._load_model()
        step = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self.model._initial_epoch = step // epoch_steps
        return step

    def set_current_epoch(self, epoch: int) -> None:
        self._current_epoch = epoch

    def save_backup(self) -> None:
        """Write the weights and Keras' metadata file, each atomically (temp file + rename)."""
        os.makedirs(self.backup_dir, exist_ok=True)
        # Built in memory, then written with plain file I/O (see weights_h5_bytes).
        atomic_write_bytes(self._weights_path, weights_h5_bytes(self.model))
        atomic_write_json(self._training_metadata_path, {"epoch": self._current_epoch, "batch": 0})

    def _save_model(self):  # Keras' own save hook: route it through the atomic writer
        self.save_backup()


def weights_h5_bytes(model) -> bytes:
    """What ``model.save_weights("x.weights.h5")`` writes, built in memory (Keras 3.15's saving_lib).

    h5py writing straight to a file on a full disk fails part-way and leaves HDF5 objects whose
    deferred writes fail again at garbage collection; the next save in the process segfaulted (rc
    139). Built in memory, the bytes reach the disk through plain file I/O, where a full disk is one
    clean ``OSError``. (Keras' own ``.keras`` saving buffers its weights in memory the same way.)
    """
    import io

    from keras.src.saving import saving_lib

    buf = io.BytesIO()
    store = saving_lib.H5IOStore(buf, mode="w")
    try:
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    finally:
        store.close()
    return buf.getvalue()


# --------------------------------------------------------------------------- TF-TRT
def tftrt_build_info() -> tuple[bool, str, tuple]:
    """``(enabled, reason, tensorrt_version)`` of this TensorFlow build's TF-TRT support.

    Reads TensorFlow's private ``tf2tensorrt._pywrap_py_utils`` (TF <= 2.17; the module is gone
    from the CPU builds and from 2.18 on, which then reports "no TF-TRT module").
    """
    import tensorflow as tf

    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils as trt_utils
    except ImportError as e:
        return False, f"TensorFlow has no TF-TRT module ({e})", ()
    if not trt_utils.is_tensorrt_enabled():
        return False, f"TensorFlow {tf.__version__} was built without TensorRT", ()
    check_version("TensorFlow", tf.__version__, TF_TRT_WRITTEN_FOR, "the TF-TRT build probe")
    return True, "", tuple(trt_utils.get_linked_tensorrt_version())


# --------------------------------------------------------------------------- SavedModel export
def export_archive_single_copy(archive) -> None:
    """After ``archive.track(model)``: drop the archive's own variable lists so each weight is saved once.

    Keras 3.15's TF ``ExportArchive.track`` appends the model's variables to the archive's
    ``variables`` / ``trainable_variables`` / ``non_trainable_variables``, and ``write_out`` also
    records the variables its endpoints use under ``_all_variables``; the SavedModel then holds two
    copies of every weight. The endpoints (``serving_default``, ``serve_bytes``) only need the
    latter, so the lists are emptied; a loaded SavedModel then has no ``.variables`` attribute
    list, which nothing here (TF Serving, the verification, the converters) reads.
    """
    check_version("keras", keras.__version__, KERAS_WRITTEN_FOR, "export_archive_single_copy")
    trackable = archive._tf_trackable
    trackable.variables = []
    trackable.trainable_variables = []
    trackable.non_trainable_variables = []
