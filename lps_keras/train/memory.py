"""Will a training run fit this machine's memory? An estimate from the recipe, checked before anything starts.

Without it, ``train.batch_size=2048`` on a 23 GB machine ended after 72 s in ``std::bad_alloc`` and
SIGABRT (no Python exception to catch, the run directory left behind). Training on CPU keeps every
activation in host memory, so :func:`check_training_memory` refuses a run whose estimated peak
exceeds the memory available (``MemAvailable``, or the cgroup's limit minus its usage if smaller)
with a :class:`~lps_keras.errors.ResourceError` giving both numbers. On a GPU the activations live
in device memory, which TensorFlow reports itself (``ResourceExhaustedError``, one line).

The estimate (bytes the run adds to the process, for one replica's batch ``B`` of ``H`` x ``W`` crops):

    fixed + PARAM_BYTES * params + B * (BLOCK_BYTES * block_elements + PIXEL_BYTES * H * W * (classes + 3))

``block_elements`` are the elements of every block output in the training form (all paths, all
stages); the per-pixel term covers the full-resolution logits the loss works on (softmax, its
gradient, OHEM's sort) and the input crop with its augmentation copies.

Calibration (TF 2.21, CPU, Eigen kernels; demo recipe ``{1,1,2,2,2}``, 192x192 crops, 19 classes;
peak RSS from ``getrusage`` minus the RSS before ``train()``, 3 steps + one validation): widths
``{8,16,32,64,64}`` gave 177 / 298 MB at batch 2 / 8 (20.2 MB per image, 184k block elements) and
``{32,64,128,256,256}`` 246 / 461 MB (35.9 MB per image, 737k block elements). Solving: 28 bytes
(7 floats) per block element and 433 bytes per pixel (4.9 floats per pixel per class+3); the
fixed part was 137-174 MB. The constants below round those up (8 floats, 5 floats, 256 MB): the
per-image part errs high by about 10% at these sizes, the whole estimate by 46-92% (its fixed part).

Other families (NDNet, MRMS: depthwise and 1x1 convolutions, no LPS paths) are estimated from the
elements of *every layer output* of their training-form model (built, not run: :func:`layer_elements`):

    FAMILY_FIXED + PARAM_BYTES * params + B * (LAYER_BYTES * layer_elements + PIXEL_BYTES * H * W * (classes + 3))

Calibration (``benchmarks/train_memory.py``, TF 2.21, CPU, float32, 2-core Xeon, 3 steps + one
validation): TinyMRMS on the synthetic set at 192x192 (3.33M layer elements) added 527 / 856 MB at batch
2 / 8, NDNet45 there (2.95M) 476 / 682 MB, TinyMRMS on CamVid at 360x480 (15.7M, 11 classes, its images
cached) 1060 / 2250 MB: 6-12 bytes per layer element beyond the per-pixel term, and a fixed part of
410-660 MB (CamVid's cache included). With 16 bytes (4 floats) and 480 MB the estimate errs high by
3-45% on all six runs.
"""

from __future__ import annotations

from typing import Optional

from lps_keras.errors import ResourceError
from lps_keras.memory import available_memory

BLOCK_BYTES = 8 * 4  # per element of a block output, training form (branches, BN, ReLU, gradients)
PIXEL_BYTES = 5 * 4  # per input pixel and per (class + 3): logits, softmax, gradient, input copies
PARAM_BYTES = 64  # per parameter of the fused model: the training form's branches, gradients, momentum
FIXED_BYTES = 256 * 2**20  # graph, tf.data buffers, validation
LAYER_BYTES = 4 * 4  # per element of a layer output of another family's model (its output, BN, gradient)
FAMILY_FIXED_BYTES = 480 * 2**20  # as FIXED_BYTES, measured larger for NDNet/MRMS (module doc)


def block_elements(arch, height: int, width: int) -> int:
    """Elements of all block outputs of ``arch`` (every path) for one ``height`` x ``width`` input."""
    total = 0
    for p in range(arch.num_paths):
        for (h, w), d, c in zip(arch.feature_sizes(height, width, p), arch.depth, arch.width):
            total += h * w * c * d
    return total


def layer_elements(config, height: int, width: int) -> int:
    """Elements of every layer output of ``config``'s training-form model for one ``height`` x ``width``
    input (any family; the model is built, nothing is run)."""
    import math

    import keras

    from lps_keras import families

    model = families.build(config, input_shape=(height, width, 3))
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        for out in keras.tree.flatten(layer.output):
            total += math.prod(int(d) for d in out.shape[1:])
    return total


def estimate_parts(config, height: int, width: int, dense_classes: int) -> tuple[int, int]:
    """``(fixed, per_image)`` bytes of a training run of ``config`` (see module doc); ``dense_classes`` 0 for a
    classifier. Another family's model is built once here to count its layer outputs."""
    from lps_keras.arch import Arch

    pixels = PIXEL_BYTES * height * width * (dense_classes + 3)
    if isinstance(config, Arch):
        return (FIXED_BYTES + PARAM_BYTES * config.num_params(),
                BLOCK_BYTES * block_elements(config, height, width) + pixels)
    from lps_keras.families import family_of_config

    params = family_of_config(config).summary(config, (height, width))["params"]
    return FAMILY_FIXED_BYTES + PARAM_BYTES * params, LAYER_BYTES * layer_elements(config, height, width) + pixels


def estimate_training_bytes(config, batch: int, height: int, width: int, dense_classes: int) -> int:
    """Peak memory a training run adds (see module doc); ``dense_classes`` 0 for a classifier."""
    fixed, per_image = estimate_parts(config, height, width, dense_classes)
    return fixed + batch * per_image


def check_training_memory(config, batch: int, crop: tuple[int, int], dense_classes: int, what: str) -> Optional[int]:
    """ResourceError if the run's estimated memory exceeds what is available; returns the estimate.

    ``config`` is an LPS-Net :class:`~lps_keras.arch.Arch` or another family's config; ``what`` names the
    recipe fields in the message (``train.batch_size``, the crop field). For another family this builds its
    model (to count layer outputs), which starts TensorFlow: call it after the distribution strategy exists
    (a multi-worker strategy must be created first).
    """
    from lps_keras.arch import Arch
    from lps_keras.families import family_of_config

    fixed, per_image = estimate_parts(config, crop[0], crop[1], dense_classes)
    need = fixed + batch * per_image
    available, source = available_memory()
    if available is not None and need > available:
        fits = int((available - fixed) // per_image) if per_image else 0
        network = config if isinstance(config, Arch) else f"a network of the {family_of_config(config).name} family"
        raise ResourceError(
            f"{what}: training would need about {_gib(need)} of memory (batch {batch} of {crop[0]}x{crop[1]}, "
            f"{network}), but {_gib(available)} is available ({source}); "
            + (f"a batch of at most about {fits} fits" if fits >= 1 else "use a smaller crop or architecture")
            + ", or use a machine with more memory")
    return need


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
