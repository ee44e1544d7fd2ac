"""MRMS / TinyMRMS: the human-designed network of HMSeg (Li, Dong, Yu, Yang, "When Humans Meet
Machines: Towards Efficient Segmentation Networks", BMVC 2020).

A MobileNetV2 backbone whose stages 1-3 are the high-resolution branch (C3, 1/8), stage 4 the
medium (C4, 1/16) and stage 5 the low-resolution branch (C5, 1/32): one backbone, so the branches
share weights and reuse each other's features. A Lightweight Context Fusion (LCF) head adds C3, C4,
C5 and the global-average-pooled C5 with depthwise-separable convolutions, and a Lightweight Global
Enhancement (LGE) module (global pooling + channel attention) sits in the LCF upper branch.
Paper, as issue 25 quotes it (Cityscapes 768x1536, 19 classes, trained from scratch): MRMS 73.7% mIoU,
2.1M params, 7.3 GFLOPs; TinyMRMS 69.9%, 0.6M, 2.8 GFLOPs.

No public code exists, and only the paper's abstract could be consulted here (not its body or
figure), so the choices below rest on the description above and MobileNetV2's standard design:

* Backbone: MobileNetV2's (t, c, n, s) table up to the 320-channel block, without the final
  1x1-to-1280 conv and the classifier; ReLU6, linear bottlenecks, identity shortcuts when stride 1
  and widths match. Stride stages: stage 1 = stem + (1, 16, 1, 1); 2 = (6, 24, 2, 2);
  3 = (6, 32, 3, 2); 4 = (6, 64, 4, 2) + (6, 96, 3, 1); 5 = (6, 160, 3, 2) + (6, 320, 1, 1).
* TinyMRMS = width multiplier 0.5 (channels rounded to multiples of 8 as in MobileNetV2, stem
  included); the head is the same as MRMS's.
* LCF (160 channels in both presets): C5 -> 1x1 ConvBN, plus the pooled C5 -> 1x1 conv + ReLU
  (bias, no BN: BN on a 1x1 map is degenerate at batch size 1), broadcast-added = upper branch;
  LGE on it; then, top-down, for C4 and then C3: bilinear upsampling (align_corners=True) of the
  upper branch to the lateral's size, add the 1x1 ConvBN lateral, depthwise 3x3 ConvBN + ReLU and
  pointwise 1x1 ConvBN + ReLU. A 1x1 classifier with bias predicts at 1/8 (output stride 8).
* LGE: squeeze-and-excitation style -- global average pool, 1x1 conv to head_channels /
  lge_reduction (4) + ReLU, 1x1 conv back + sigmoid, multiply -- placed on the upper branch
  (C5 + pooled C5), before it is upsampled and added to C4 and C3.
* "GFLOPs" read as multiply-accumulates: MobileNetV2's backbone alone is ~6.6 G MACs at
  768x1536, so the 2x-MACs reading (>13 G) cannot be the paper's 7.3.
* Parameters counted as PyTorch's ``parameters()`` of the training form (conv weights and biases,
  BN gamma/beta). With these choices at 768x1536, 19 classes: MRMS 2.007M params, 7.47 G MACs
  (paper 2.1M, 7.3); TinyMRMS 0.614M, 2.81 G MACs (paper 0.6M, 2.8).

This module imports no Keras: the model lives in :mod:`lps_keras.families.mrms.model`.
"""

from __future__ import annotations

from lps_keras.families.family import Family
from lps_keras.families.mrms.config import PRESETS, MRMSConfig, summary

FAMILY = Family(
    name="mrms",
    description="MRMS / TinyMRMS (HMSeg, Li et al. BMVC 2020): MobileNetV2 + Lightweight Context Fusion head",
    config_type=MRMSConfig,
    presets=PRESETS,
    build_path="lps_keras.families.mrms.model:build_mrms",
    fuse_path="lps_keras.families.mrms.model:fuse_mrms",
    summary=summary,
    # TinyMRMS on the AMX Xeon (2 cores, batch 8, 360x480): mixed_bfloat16 1.80 s/step, float32 1.37.
    cpu_bf16=False,
)

__all__ = ["FAMILY", "PRESETS", "MRMSConfig", "summary"]
