"""Models: timm creation, weights files, logits, and the preprocessing spec of a model.

Any timm model name works as teacher or student; the demo's own teacher architecture is
registered with timm by :mod:`edge_cls.training.vit_convstem` (imported here, so every model
name is known wherever models are created).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config

from edge_cls.errors import CheckpointError, ConfigError
from edge_cls.preprocess import PreprocessSpec

from . import vit_convstem  # noqa: F401  (registers the demo teacher with timm)

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "edge-cls-checkpoint"  # also read here: a checkpoint works as a weights file

@dataclass(frozen=True, kw_only=True)
class ModelRecipe:
    """What it takes to rebuild a model: timm name and keyword arguments."""

    name: str
    num_classes: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, "kwargs": dict(self.kwargs)}


def create_model(
    recipe: ModelRecipe, *, pretrained: bool = False, weights: str | os.PathLike[str] | None = None
) -> nn.Module:
    """Create a timm model: random init, hub weights (``pretrained``), or a local weights file."""
    architecture = recipe.name.split(".")[0]  # "vit_base_patch16_224.augreg2_in21k_ft_in1k" -> architecture
    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture[:10]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ConfigError(f"unknown timm model {recipe.name!r}{hint}; see timm.list_models()")
    try:
        model = timm.create_model(
            recipe.name, pretrained=pretrained and weights is None, num_classes=recipe.num_classes, **recipe.kwargs
        )
    except (OSError, RuntimeError) as e:
        if pretrained:
            raise CheckpointError(
                f"could not fetch pretrained weights for {recipe.name!r} ({e}); offline, pass a local "
                "weights file instead"
            ) from e
        raise
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a timm or plain state dict (``.pth``, ``.pt``, ``.bin``, ``.safetensors``) into ``model``.

    An edge-cls checkpoint works too. Keys or shapes that do not fit are listed in the error.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    state = _read_state_dict(path)
    _check_fit(model, state, path)
    model.load_state_dict(state)


def _check_fit(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if wrong_shape:
            parts.append(f"shape mismatch for {len(wrong_shape)} keys ({'; '.join(wrong_shape[:3])})")
        if missing:
            parts.append(f"{len(missing)} keys missing from the file (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(
            f"weights in {path} do not fit {type(model).__name__}: {'; '.join(parts)}. "
            "Check the model name and the number of classes"
        )


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load weights trained for other classes: every key but the classifier's must fit; the
    classifier is kept from ``model`` (freshly initialised) when its shape differs. Returns the
    classifier keys that were not loaded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    state = _read_state_dict(path)
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    heads = [head] if isinstance(head, str) else list(head or [])
    dropped = [k for k in own if any(k.startswith(h + ".") for h in heads)
               and (k not in state or tuple(state[k].shape) != tuple(own[k].shape))]
    for k in dropped:
        state[k] = own[k]
    for k in [k for k in state if k not in own and any(k.startswith(h + ".") for h in heads)]:
        del state[k]  # e.g. a head_dist in the file that this model does not have
    _check_fit(model, state, path)
    model.load_state_dict(state)
    if dropped:
        logger.info("loaded %s without its classifier (%s): new head for %d classes", path, ", ".join(dropped),
                    getattr(model, "num_classes", -1))
    return dropped


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        raise CheckpointError(f"{path} is not a readable weights file ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state["state_dict"]
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return timm.models.clean_state_dict(state)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, batch: np.ndarray, chunk: int = 256, device: torch.device | str | None = None
) -> np.ndarray:
    """Eval-mode float32 logits of a preprocessed batch, computed in chunks; restores the mode."""
    was_training = model.training
    model.eval()
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    num_classes = getattr(model, "num_classes", 0)
    try:
        parts = [model(torch.from_numpy(batch[i:i + chunk]).to(device)).float().cpu().numpy()
                 for i in range(0, len(batch), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, num_classes), np.float32)
    finally:
        model.train(was_training)


def spec_for_model(model: nn.Module, *, input_size: int | None = None) -> PreprocessSpec:
    """The preprocessing spec from a timm model's ``pretrained_cfg``, optionally at another size."""
    args = {"input_size": (3, input_size, input_size)} if input_size else {}
    return PreprocessSpec.from_data_config(resolve_data_config(args, model=model))


def model_kwargs(name: str, input_size: int) -> dict[str, Any]:
    """ViT-style models fix their input size at creation (position embeddings): pass img_size."""
    cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
    return {"img_size": input_size} if cfg is not None and cfg.fixed_input_size else {}
