"""NDNet (Yang, Yu et al.): a narrow-deep backbone of separable bottlenecks, FCN32 or encoder-decoder head.

The family's table entry. Importing it imports no Keras: the config, presets and summary are plain
Python (:mod:`.config`); the model (:mod:`.model`) and the authors' weight layout (:mod:`.weights`)
are imported on first use.
"""

from __future__ import annotations

from lps_keras.families.family import Family
from lps_keras.families.ndnet.config import PRESETS, NDNetConfig, summary

FAMILY = Family(
    name="ndnet",
    description="NDNet (Yang, Yu et al.): narrow-deep depthwise-separable bottlenecks, FCN32 or encoder-decoder",
    config_type=NDNetConfig,
    presets=PRESETS,
    build_path="lps_keras.families.ndnet.model:build_ndnet",
    fuse_path="lps_keras.families.ndnet.model:fuse_ndnet",
    summary=summary,
    weights_loader_path="lps_keras.families.ndnet.weights:load_ndnet_weights",
    # NDNet45 on the AMX Xeon (2 cores, batch 8, 360x480): mixed_bfloat16 0.86 s/step, float32 0.72.
    cpu_bf16=False,
)

__all__ = ["FAMILY", "PRESETS", "NDNetConfig", "summary"]
