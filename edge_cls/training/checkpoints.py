"""edge-cls checkpoints: a trained model with everything an export needs (recipe, weights, spec,
labels, metrics), in one ``torch.save`` file of plain data and tensors, read with
``weights_only=True``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edge_cls._fileio import atomic_path
from edge_cls.errors import CheckpointError, ConfigError
from edge_cls.preprocess import PreprocessSpec
from edge_cls.training.models import CHECKPOINT_FORMAT, ModelRecipe, create_model

CHECKPOINT_VERSION = 1
# Model keyword arguments a checkpoint may carry into timm.create_model: the ones edge-cls writes
# and harmless regularisation knobs. Anything else (checkpoint_path, pretrained_cfg_overlay, ...)
# could make timm read other files, so a checkpoint from elsewhere must not set it.
SAFE_MODEL_KWARGS = frozenset({"img_size", "drop_rate", "drop_path_rate"})


@dataclass(kw_only=True)
class Checkpoint:
    """A trained model with everything an export needs: recipe, weights, spec, labels, metrics."""

    recipe: ModelRecipe
    state_dict: dict[str, torch.Tensor]
    spec: PreprocessSpec
    labels: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The model in eval mode with the checkpoint's weights."""
        model = create_model(self.recipe)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically and durably: an interrupted save leaves the previous file intact."""
        data = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "recipe": self.recipe.to_dict(),
            "state_dict": self.state_dict,
            "spec": self.spec.to_dict(),
            "labels": list(self.labels),
            "metrics": self.metrics,
        }
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
        return Path(path)

    @classmethod
    def from_model(
        cls, model: nn.Module, recipe: ModelRecipe, spec: PreprocessSpec, labels: list[str], **metrics: Any
    ) -> Checkpoint:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(recipe=recipe, state_dict=state, spec=spec, labels=list(labels), metrics=dict(metrics))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, pickle errors, ...
            raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not an edge-cls checkpoint; for a plain state dict use --weights with --model"
            )
        if data.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path} has checkpoint version {data.get('version')}, expected {CHECKPOINT_VERSION}")
        try:
            return cls(
                recipe=_recipe(data.get("recipe"), path),
                state_dict=_state_dict(data.get("state_dict"), path),
                spec=PreprocessSpec.from_dict(data.get("spec")),
                labels=_labels(data.get("labels"), path),
                metrics=dict(data.get("metrics") or {}),
            )
        except ConfigError as e:
            raise CheckpointError(f"{path} has an invalid field: {e}") from e


def _recipe(data: Any, path: Path) -> ModelRecipe:
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("name"), str)
        or not isinstance(data.get("num_classes"), int)
    ):
        raise CheckpointError(f"{path}: 'recipe' must hold a model name and num_classes")
    kwargs = data.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: 'recipe.kwargs' must be a mapping")
    unsafe = sorted(set(kwargs) - SAFE_MODEL_KWARGS)
    if unsafe:
        raise CheckpointError(
            f"{path}: model arguments {unsafe} are not accepted from a checkpoint "
            f"(allowed: {sorted(SAFE_MODEL_KWARGS)})"
        )
    return ModelRecipe(name=data["name"], num_classes=data["num_classes"], kwargs=dict(kwargs))


def _state_dict(data: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()
    ):
        raise CheckpointError(f"{path}: 'state_dict' must map parameter names to tensors")
    return data


def _labels(data: Any, path: Path) -> list[str]:
    if not isinstance(data, list) or not data or not all(isinstance(v, str) for v in data):
        raise CheckpointError(f"{path}: 'labels' must be a non-empty list of strings")
    return list(data)
