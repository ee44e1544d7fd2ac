"""Deployment: fused SavedModels for TF Serving, verification, TF-TRT, ONNX, TensorRT and bf16.

- :mod:`~lps_keras.export.savedmodel`: ``export_savedmodel``, ``verify_savedmodel`` (fresh process)
- :mod:`~lps_keras.export.serving`: signatures, TF Serving config and commands
- :mod:`~lps_keras.export.predict`: ``predict_images`` (predict.py, bounded memory)
- :mod:`~lps_keras.export.precision`: bf16 variant and parity, the numpy reference outputs
- :mod:`~lps_keras.export.onnx`: tf2onnx conversion and onnxruntime parity
- :mod:`~lps_keras.export.tensorrt`: TF-TRT and TensorRT 10 engines, ``require_tftrt`` / ``require_tensorrt``
- :mod:`~lps_keras.export.run`: ``export_recipe``, what ``export.py`` runs

TensorFlow and the converters are imported only when a function needs them.
"""

from lps_keras.data.common import IMAGENET_MEAN, IMAGENET_STD
from lps_keras.export.common import BackendUnavailable, ExportError
from lps_keras.export.onnx import export_onnx, onnx_parity, onnx_resize_modes
from lps_keras.export.precision import PRECISIONS, bf16_model, bf16_parity, reference_outputs, resize_bilinear_np
from lps_keras.export.predict import predict_images
from lps_keras.export.run import ExportOptions, export_recipe
from lps_keras.export.savedmodel import (
    ExportResult,
    export_savedmodel,
    sample_image,
    saved_model_cli,
    verify_savedmodel,
)
from lps_keras.export.serving import (
    OUTPUT_KINDS,
    format_serving_commands,
    serving_commands,
    serving_functions,
    write_models_config,
)
from lps_keras.export.tensorrt import (
    TENSORRT_REQUIREMENTS,
    TFTRT_REQUIREMENTS,
    build_tensorrt_engine,
    convert_tftrt,
    require_tensorrt,
    require_tftrt,
    tftrt_status,
)
from lps_keras.recipe import parse_size
from lps_keras.weights import is_deploy, prepare_deploy_model

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "BackendUnavailable", "ExportError", "parse_size", "export_onnx", "onnx_parity",
    "onnx_resize_modes", "PRECISIONS", "bf16_model", "bf16_parity", "reference_outputs", "resize_bilinear_np",
    "ExportOptions", "export_recipe", "ExportResult", "export_savedmodel", "sample_image", "saved_model_cli",
    "verify_savedmodel", "OUTPUT_KINDS", "format_serving_commands", "predict_images", "serving_commands",
    "serving_functions", "write_models_config", "TENSORRT_REQUIREMENTS", "TFTRT_REQUIREMENTS",
    "build_tensorrt_engine", "convert_tftrt", "require_tensorrt", "require_tftrt", "tftrt_status", "is_deploy",
    "prepare_deploy_model",
]
