"""The sections of a recipe: frozen dataclasses whose fields carry their allowed values and ranges.

``field(default, choices=..., gt=..., ge=..., lt=...)`` keeps the rule in the field's metadata, where
:func:`lps_keras.recipe_schema.check_rules` checks it when a recipe is loaded; nothing here validates or parses.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from lps_keras.families import DEFAULT_FAMILY, FAMILIES
from lps_keras.latency.backends import backend_names
from lps_keras.nas import SPACES

# --------------------------------------------------------------------------- field rules
#: Class counts of the datasets this project reads (the data modules hold names/colours).
DATASET_CLASSES = {
    "cityscapes": 19,
    "bdd100k": 19,
    "synthetic": 19,
    "camvid": 11,
    "camvid_original": 11,
    "imagenet": 1000,  # classification, for pretrain.py only (class count: the data's class folders)
}


def field(default, *, choices=(), gt=None, ge=None, lt=None):
    """A dataclass field with its allowed values (``choices``) or range (``gt`` / ``ge`` / ``lt``).

    ``choices`` is a tuple, or a function returning one when the recipe is checked (a table that can
    grow after import: the latency backends).

    Ranges apply to every element of a tuple value; ``None`` (an unset optional) is always allowed.
    """
    rules = {k: v for k, v in (("choices", choices), ("gt", gt), ("ge", ge), ("lt", lt)) if v not in ((), None)}
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=rules)
    return dataclasses.field(default=default, metadata=rules)


# --------------------------------------------------------------------------- sections
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A model family (:mod:`lps_keras.families`) and one of: a ``preset`` of that family, an explicit
    LPS-Net ``arch``, or an explicit ``config`` of another family."""

    family: str = field(DEFAULT_FAMILY, choices=tuple(FAMILIES))
    preset: Optional[str] = None
    arch: Optional[dict] = None  # LPS-Net: {"depth": [...], "width": [...], "resolution": [...]}
    config: Optional[dict] = None  # another family's config, e.g. ndnet's {"channels": [...], ...}
    num_classes: Optional[int] = field(None, gt=0)  # default: the dataset's class count
    sync_batchnorm: bool = False  # synchronised BN across replicas under tf.distribute


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    crop_size: tuple[int, int] = field((768, 768), gt=0)  # (height, width)
    scale_range: tuple[float, float] = field((0.5, 2.0), gt=0)  # low <= high, checked in _check
    hflip: bool = True
    brightness: float = field(0.4, ge=0)  # colour jitter strengths as in torchvision ColorJitter
    contrast: float = field(0.4, ge=0)
    saturation: float = field(0.4, ge=0)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size of the built-in procedurally drawn street set (generated on first use)."""

    num_train: int = field(300, gt=0)
    num_val: int = field(60, gt=0)
    height: int = field(192, gt=0)
    width: int = field(384, gt=0)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = field("cityscapes", choices=tuple(DATASET_CLASSES))
    root: str = "data/cityscapes"  # dataset as downloaded (directory layout or TFDS manual dir)
    source: str = field("directory", choices=("directory", "tfds"))
    train_split: str = "train"  # "train+val" trains on both (the paper's CamVid protocol)
    val_split: str = "val"
    augment: AugmentConfig = AugmentConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    train_subset: Optional[int] = field(None, gt=0)  # first N training images (proxy schedules)
    val_subset: Optional[int] = field(None, gt=0)
    eval_size: Optional[tuple[int, int]] = field(None, gt=0)  # resize eval images (labels stay full size)
    shuffle_buffer: int = field(256, gt=0)
    skip_bad_files: bool = False
    deterministic: bool = False
    cache: bool = False  # cache decoded images in memory (small datasets)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    iterations: int = field(90000, gt=0)
    batch_size: int = field(16, gt=0)
    base_lr: float = field(0.01, gt=0)
    momentum: float = field(0.9, ge=0, lt=1)
    weight_decay: float = field(5e-4, ge=0)
    poly_power: float = 0.9
    # step: base_lr * lr_step_factors[i] from step lr_steps[i] on (the NDNet authors' scratch schedule)
    lr_schedule: str = field("poly", choices=("poly", "step"))
    lr_steps: Optional[tuple[int, ...]] = field(None, gt=0)
    lr_step_factors: Optional[tuple[float, ...]] = field(None, gt=0)
    warmup_iterations: int = field(0, ge=0)
    loss: str = field("ce", choices=("ce", "ohem"))
    loss_label_stride: int = field(1, gt=0)  # the loss at 1/s of the label resolution (every s-th label pixel)
    ohem_threshold: float = field(0.7, gt=0, lt=1)
    ohem_min_kept: int = field(100000, ge=0)
    # Class balance in the loss (lps_keras.class_balance): weights from the training labels' frequencies
    # (SegNet's median frequency, ENet's 1/ln(c + p)) or explicit; combines with OHEM.
    class_balance: str = field("none", choices=("none", "median_frequency", "enet", "explicit"))
    class_weights: Optional[tuple[float, ...]] = field(None, gt=0)  # one per class, with class_balance=explicit
    enet_c: float = field(1.02, gt=1)
    mixed_precision: str = field("none", choices=("none", "auto", "mixed_float16", "mixed_bfloat16"))
    distribute: str = field("none", choices=("none", "mirrored", "multi_worker"))
    val_interval: int = field(5000, gt=0)
    checkpoint_interval: int = field(1000, gt=0)
    log_interval: int = field(50, gt=0)
    image_summaries: int = 2
    seed: int = 0
    init: Optional[str] = None  # .keras checkpoint or official weights (.pth / .npz)
    run_dir: str = "runs/{name}"


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    batch_size: int = field(1, gt=0)
    split: str = "val"


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    name: Optional[str] = None  # default: the recipe name
    version: int = field(1, gt=0)
    input_size: Optional[tuple[int, int]] = field(None, gt=0)  # static (H, W) for TensorRT; None = dynamic
    precision: str = field("fp32", choices=("fp32", "bf16"))  # bf16: CPU deployment
    outputs: str = field("probabilities", choices=("probabilities", "logits"))
    # constants: the serving graph holds the weights as constants, which TensorFlow's oneDNN kernels
    # cache in their fast layout (lps_keras.export.serving.constant_network); variables: as variables.
    graph_weights: str = field("constants", choices=("constants", "variables"))

    def __post_init__(self):
        # export.name becomes a directory (savedmodels/<name>), TF Serving's model name in
        # models.config and a URL path in the printed curl: "../x" would write outside savedmodels/.
        # Checked here, where the section is built (recipe.py's field rules cover values and ranges).
        if self.name is not None:
            from lps_keras.errors import PathNameError, check_path_name

            try:
                check_path_name("export.name", self.name)
            except PathNameError as e:
                from lps_keras.recipe import RecipeError  # recipe.py imports this module

                raise RecipeError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class RacingSettings:
    """Successive halving on an undecided step: extra seeds for its contenders and the parent
    (lps_keras.search.decision.race_plan)."""

    enabled: bool = False
    max_seeds: int = field(8, gt=1)  # seeds per candidate at most (must exceed search.proxy.seeds)
    budget: int = field(24, gt=0)  # extra (candidate, seed) trainings per step
    eta: int = field(2, gt=1)  # keep the best 1/eta of the contenders, multiply their seeds by eta


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """Short training schedule used to score each candidate during expansion."""

    seeds: int = field(1, gt=0)  # trainings per network and step (seeds 1000 t + 0, 1, ...); P_d is their mean
    score: str = field("miou", choices=("miou", "pixel_accuracy"))  # what a proxy run reports as its score
    label_stride: Optional[int] = field(None, gt=0)  # the proxy's train.loss_label_stride (None: the recipe's)
    racing: RacingSettings = RacingSettings()
    init: str = field("scratch", choices=("scratch", "parent"))  # parent: grown from the parent's weights
    warm_iterations: Optional[int] = field(None, gt=0)  # iterations of a warm-started candidate (init=parent)
    warm_lr: Optional[float] = field(None, gt=0)  # base lr of a warm-started run (init=parent; None: base_lr)
    iterations: int = field(2000, gt=0)
    batch_size: int = field(8, gt=0)
    base_lr: float = field(0.01, gt=0)
    crop_size: tuple[int, int] = field((512, 512), gt=0)
    train_subset: Optional[int] = field(None, gt=0)
    val_subset: Optional[int] = field(None, gt=0)
    eval_size: Optional[tuple[int, int]] = field(None, gt=0)


@dataclasses.dataclass(frozen=True)
class SearchLatencyConfig:
    """Where the search's latencies come from: ``measured`` here (latency_backend, latency_input_shape,
    through the cache), or ``profile:<file>``, predicted by a latency profile of the target device
    (``python -m lps_keras.latency.profile``), which must describe the same backend and input size."""

    source: str = "measured"
    # Paired measurement of each step's parent and candidates (lps_keras.latency.measure.measure_set): rounds
    # of iters_per_round calls each, in a shuffled order; 0 rounds = one measurement per network, no SE.
    rounds: int = field(10, ge=0)
    iters_per_round: int = field(5, gt=0)


@dataclasses.dataclass(frozen=True)
class DecisionSettings:
    """How a step is judged (lps_keras.search.decision): ``alpha`` the error rate of "decided" (split over
    racing's looks), ``epsilon`` the indifference zone in mIoU points (when taking the cheapest contender
    surely costs less, the step is "equivalent" and that one is taken), ``latency_z`` the SEs of a latency
    difference within which a candidate counts as "the same latency" as its parent, and within which the
    smaller of an op's two nearest k is taken (lps_keras.search.candidates.nearest_k)."""

    alpha: float = field(0.05, gt=0, lt=1)
    epsilon: float = field(0.5, ge=0)
    latency_z: float = field(2.0, ge=0)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    steps: int = field(14, ge=0)
    latency_backend: str = field("tf", choices=backend_names)  # the latency backend table's names
    latency_input_shape: tuple[int, int, int, int] = (1, 1024, 2048, 3)
    latency_warmup: int = field(5, ge=0)
    latency_iters: int = field(20, gt=0)
    latency_cache: str = "latency_cache.json"  # relative to the search's output directory unless absolute
    latency: SearchLatencyConfig = SearchLatencyConfig()
    max_k: int = field(16, gt=0)  # bound on the step multiple k when searching |Lat(N + k d) - L_T|
    ops: Optional[tuple[str, ...]] = None  # the operation set by name (lps_keras.arch.EXPANSION_OPS); None: all 10
    proxy: ProxyConfig = ProxyConfig()
    decision: DecisionSettings = DecisionSettings()
    workers: int = field(1, gt=0)
    pin_cpus: bool = False  # pool workers each take a disjoint share of the CPU cores (CPU-only searches)
    executor: str = field("pool", choices=("pool", "ray"))  # where candidates train: process pool or Ray tasks
    gpus_per_task: float = field(0.0, ge=0)  # GPUs each Ray task needs (0: CPU-only)


@dataclasses.dataclass(frozen=True)
class NASConfig:
    """A differentiable latency-aware search (``search.py``, :mod:`lps_keras.nas.run`): the space over
    ``model`` (an MRMS preset or config: the hand-designed base), the training images of ``data``, the
    task loss of ``train`` (loss, class balance); the derived network's recipe keeps ``data``,
    ``train``, ``eval`` and ``export`` for its full training.

    The budget is ``budget_ms``, or the latency of the LPS-Net ``budget_arch`` (e.g. the expansion's
    final network) measured on ``latency_backend`` at ``latency_input_size``; times ``budget_scale``.
    """

    space: str = field("hmseg", choices=tuple(SPACES))
    steps: int = field(2000, gt=0)
    batch_size: int = field(8, gt=0)
    crop_size: Optional[tuple[int, int]] = field(None, gt=0)  # search crops (None: data.augment.crop_size)
    weight_lr: float = field(0.05, gt=0)  # SGD with momentum, poly decay over the steps
    weight_momentum: float = field(0.9, ge=0, lt=1)
    weight_decay: float = field(4e-5, ge=0)
    arch_lr: float = field(3e-4, gt=0)  # Adam on the alphas (DARTS / GDAS: 3e-4, betas (0.5, 0.999))
    arch_weight_decay: float = field(1e-3, ge=0)
    tau_start: float = field(10.0, gt=0)  # Gumbel-softmax temperature, annealed exponentially (HMSeg: 10 -> 0.1)
    tau_end: float = field(0.1, gt=0)
    cost_weight: float = field(1.0, ge=0)  # lambda of the latency cost loss |E[lat] / budget - 1|
    budget_ms: Optional[float] = field(None, gt=0)
    budget_arch: Optional[dict] = None  # LPS-Net {"depth", "width", "resolution"} whose latency is the budget
    budget_scale: float = field(1.0, gt=0)
    latency_backend: str = field("openvino", choices=backend_names)
    latency_input_size: tuple[int, int] = field((360, 480), gt=0)  # the deployment size the budget holds at
    latency_warmup: int = field(5, ge=0)
    latency_iters: int = field(20, gt=0)
    latency_rounds: int = field(10, gt=1)  # paired rounds timing the derived network beside the budget's
    latency_table: Optional[str] = None  # a table built elsewhere (on the target device); None: built here
    checkpoint_interval: int = field(50, gt=0)
    log_interval: int = field(10, gt=0)
    seed: int = 0
    run_eagerly: bool = False  # no tf.function trace of the supernet (debugging, tiny searches)
    run_dir: str = "runs/{name}"

    def __post_init__(self):
        # Cross-field rules, where the section is built (recipe.py's field rules cover values and ranges).
        from lps_keras.recipe import RecipeError  # recipe.py imports this module

        if self.budget_ms is not None and self.budget_arch is not None:
            raise RecipeError("nas.budget_ms / nas.budget_arch: give one of them, not both (search.py refuses "
                              "a search with neither)")
        if self.budget_arch is not None:
            from lps_keras.arch import Arch, ArchError

            try:
                Arch.from_dict({**self.budget_arch, "num_classes": 2})
            except (ArchError, TypeError, ValueError) as e:
                raise RecipeError(f"nas.budget_arch: {e}") from None
        if self.latency_backend == "macs":
            raise RecipeError("nas.latency_backend: 'macs' computes, it does not time; a latency table needs a "
                              "timed backend")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """ImageNet classification pretraining of the backbone (``pretrain.py``; ``data.dataset`` "imagenet").

    The optimizer, length and intervals come from ``train``; the images from ``data`` (``root``,
    ``source``, splits). Training images get an Inception-style random resized crop and a flip.
    """

    image_size: tuple[int, int] = field((224, 224), gt=0)  # training crop / eval centre crop (H, W)
    crop_area: tuple[float, float] = field((0.08, 1.0), gt=0)  # crop area as a fraction of the image's
    crop_aspect: tuple[float, float] = field((0.75, 4 / 3), gt=0)  # crop width / height
    eval_resize: int = field(256, gt=0)  # eval: shorter side resized to this, then the centre crop
    schedule: str = field("cosine", choices=("cosine", "poly"))  # poly uses train.poly_power
