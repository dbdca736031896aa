"""A classifier with its embeddings as a second output: what the artifact's ``embeddings`` output computes.

For a timm model the embedding is its pooled features before the head,
``model.forward_head(model.forward_features(x), pre_logits=True)``; the logits are computed from the
same features map, so the exported graph runs the network once. A model with its own notion of an
image embedding (the CLIP zero-shot classifier: the image tower's output, before normalisation)
says so with ``forward_with_embedding(x) -> (logits, embedding)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

PRE_LOGITS = "pre-logits"
CLIP_IMAGE = "clip-image"


class WithEmbeddings(nn.Module):
    """``forward(x) -> (logits, embedding)`` of a wrapped classifier (eval mode, for export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def source(self) -> str:
        return CLIP_IMAGE if hasattr(self.model, "forward_with_embedding") else PRE_LOGITS

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self.model, "forward_with_embedding"):
            return self.model.forward_with_embedding(x)
        features = self.model.forward_features(x)
        return self.model.forward_head(features), self.model.forward_head(features, pre_logits=True)


def has_embeddings(model: nn.Module) -> bool:
    """Whether ``model`` exposes an embedding (a timm model, or one with ``forward_with_embedding``)."""
    if hasattr(model, "forward_with_embedding"):
        return True
    return hasattr(model, "forward_features") and hasattr(model, "forward_head")


@torch.inference_mode()
def logits_and_embeddings(model: nn.Module, batch: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode float32 logits and raw embeddings of a preprocessed batch, in chunks (CPU)."""
    wrapper = WithEmbeddings(model).eval()
    was_training = model.training
    model.eval()
    try:
        parts = [wrapper(torch.from_numpy(np.ascontiguousarray(batch[i:i + chunk])))
                 for i in range(0, len(batch), chunk)]
    finally:
        model.train(was_training)
    return (torch.cat([p[0] for p in parts]).float().numpy(), torch.cat([p[1] for p in parts]).float().numpy())
