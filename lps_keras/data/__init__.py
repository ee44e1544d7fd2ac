"""Datasets: readers for Cityscapes, BDD100K, CamVid and the built-in synthetic set; tf.data pipeline."""

from lps_keras.data.common import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    DatasetInfo,
    FileList,
    denormalize,
)
from lps_keras.data.pipeline import (
    SKIPPED,
    build_dataset,
    check_split,
    class_names,
    get_dataset_info,
    list_split,
    num_examples,
    unwrap_data_error,
)

__all__ = [
    "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "DataError", "DatasetInfo", "FileList", "SKIPPED",
    "build_dataset", "check_split", "class_names", "denormalize", "get_dataset_info", "list_split", "num_examples",
    "unwrap_data_error",
]
