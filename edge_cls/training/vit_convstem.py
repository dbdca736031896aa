"""``vit_convstem_tiny``: the offline demo's teacher, registered with timm's model registry.

A small ViT whose patch embedding is a four-layer stride-16 conv stem (Xiao et al. 2021, "Early
convolutions help transformers see better"). A plain ViT trained from scratch on a few thousand
images is weak; the conv stem makes the demo's teacher strong enough to teach. Built only from
timm's public API (``build_model_with_cfg``, ``VisionTransformer``, ``HybridEmbed``, ``ConvStem``),
with the state-dict layout of timm's hybrid ViTs, so checkpoints written by earlier edge-cls
versions load unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch.nn as nn
from timm.layers import HybridEmbed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from timm.models.vision_transformer_hybrid import ConvStem

default_cfgs = generate_default_cfgs({
    "vit_convstem_tiny": {
        "num_classes": 1000, "input_size": (3, 64, 64), "pool_size": None, "crop_pct": 0.9,
        "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.backbone.0.conv", "classifier": "head", "license": "apache-2.0",
        "fixed_input_size": True,
    },
})


@register_model
def vit_convstem_tiny(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Tiny width (dim 192, 3 heads), 6 blocks, on a four-layer stride-16 conv stem: 3.0M
    parameters, 16 tokens at 64 px."""
    stem = ConvStem(
        in_chans=kwargs.get("in_chans", 3), depth=4, channels=(32, 64, 128, 192), stride=(2, 2, 2, 2),
        kernel_size=3, padding=1, act_layer=nn.GELU,
    )
    model_args = {"embed_dim": 192, "depth": 6, "num_heads": 3, "img_size": 64, "patch_size": 1,
                  "embed_layer": partial(HybridEmbed, backbone=stem)}
    return build_model_with_cfg(
        VisionTransformer, "vit_convstem_tiny", pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg={"out_indices": 3, "feature_cls": "getter"}, **{**model_args, **kwargs},
    )
