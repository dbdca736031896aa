"""Zero-shot classifiers from CLIP (open_clip): the image tower plus a head made from text.

The class names are embedded once, at build time, through the text tower with several prompt
templates ("a photo of a {}.", ...), averaged and normalised (Radford et al. 2021's prompt
ensembling); the result is a fixed linear head on the normalised image embedding. The artifact
is then the image tower and that head, exported like any student (ONNX, OpenVINO, the INT8
search), so the device runs no text model; adding a class means rebuilding the head from text,
not retraining. The same module is a distillation teacher whose classes are the dataset's.

Weights come from the hub (an open_clip ``pretrained`` tag, which needs the internet) or a
local file (``pretrained=/path/to/open_clip_model.safetensors``); a model name may also be a
config file added with ``open_clip.add_model_config``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_cls._fileio import read_user_text
from edge_cls.errors import BackendUnavailableError, CheckpointError, ConfigError
from edge_cls.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

# A few of CLIP's ImageNet prompt templates: enough for the ensembling to help, few enough to be quick.
DEFAULT_TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a photo of the large {}.",
    "a photo of the small {}.", "a close-up photo of a {}.", "a bright photo of a {}.", "a cropped photo of a {}.",
)
RESIZE_MODES = {"shortest": "center", "squash": "squash", "longest": "border"}


def _open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise BackendUnavailableError("zero-shot classifiers need open_clip: pip install 'edge-cls[clip]'") from e
    return open_clip


class ZeroShotClassifier(nn.Module):
    """logits = logit_scale * normalize(image_tower(x)) @ head.T, with ``head`` (classes, dim) fixed."""

    def __init__(self, visual: nn.Module, head: torch.Tensor, logit_scale: float, spec: PreprocessSpec) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("head", head.detach().float().clone())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.num_classes = head.shape[0]
        # what timm's distillation teacher wrapper reads to re-normalise the student's batch
        self.pretrained_cfg = {"mean": spec.mean, "std": spec.std, "input_size": (3, *spec.input_size)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(x)[0]

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the image embedding CLIP compares with text (before its normalisation)."""
        embedding = self.visual(x)
        return self.logit_scale * F.normalize(embedding, dim=-1) @ self.head.T, embedding


def spec_for_clip(model: nn.Module) -> PreprocessSpec:
    """open_clip's own eval preprocessing as a spec (resize mode, size, mean/std, interpolation)."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    mode = cfg.get("resize_mode", "shortest")
    if mode not in RESIZE_MODES:
        raise ConfigError(f"open_clip resize mode {mode!r} has no edge-cls equivalent ({', '.join(RESIZE_MODES)})")
    return PreprocessSpec(input_size=(int(height), int(width)), crop_pct=1.0, crop_mode=RESIZE_MODES[mode],
                          interpolation=cfg.get("interpolation", "bicubic"),
                          mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                          std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))))


def load_clip(model_name: str, pretrained: str | Path | None) -> tuple[nn.Module, object]:
    """An open_clip model (eval mode) and its tokenizer; ``pretrained`` is a hub tag or a local file."""
    open_clip = _open_clip()
    if model_name.endswith(".json"):  # an architecture of one's own, as an open_clip config file
        if not Path(model_name).is_file():
            raise ConfigError(f"CLIP model config {model_name} does not exist")
        open_clip.add_model_config(Path(model_name))
        model_name = Path(model_name).stem
    if pretrained is not None and Path(pretrained).suffix and not Path(pretrained).is_file():
        raise CheckpointError(f"CLIP weights file {pretrained} does not exist")
    try:
        model = open_clip.create_model(model_name, pretrained=str(pretrained) if pretrained else None)
    except RuntimeError as e:
        raise CheckpointError(f"could not load CLIP {model_name!r} with weights {pretrained!r} ({e}); offline, pass "
                              "a local weights file") from e
    except ValueError as e:
        raise ConfigError(f"unknown CLIP model {model_name!r} ({e}); see open_clip.list_models()") from e
    if pretrained is None:
        logger.warning("CLIP %s has random weights: its zero-shot answers mean nothing until real weights are used",
                       model_name)
    return model.eval(), open_clip.get_tokenizer(model_name)


@torch.no_grad()
def text_head(model: nn.Module, tokenizer: object, classes: Sequence[str],
              templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """(classes, dim): each class's prompt embeddings, normalised, averaged over the templates and
    normalised again."""
    if not classes:
        raise ConfigError("a zero-shot head needs at least one class name")
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError("every prompt template must contain {} where the class name goes")
    rows = []
    for name in classes:
        tokens = tokenizer([template.format(name) for template in templates])
        embeddings = F.normalize(model.encode_text(tokens), dim=-1)
        rows.append(F.normalize(embeddings.mean(0), dim=-1))
    return torch.stack(rows)


def zero_shot_classifier(model_name: str, pretrained: str | Path | None, classes: Sequence[str],
                         templates: Sequence[str] = DEFAULT_TEMPLATES) -> tuple[ZeroShotClassifier, PreprocessSpec]:
    """The image tower of a CLIP model with a head built from ``classes`` through its text tower."""
    model, tokenizer = load_clip(model_name, pretrained)
    spec = spec_for_clip(model)
    head = text_head(model, tokenizer, classes, templates)
    scale = float(model.logit_scale.detach().exp())
    return ZeroShotClassifier(model.visual, head, scale, spec).eval(), spec


@torch.no_grad()
def text_embeddings(model_name: str, pretrained: str | Path | None, texts: Sequence[str]) -> np.ndarray:
    """(texts, dim) float32 CLIP text embeddings, normalised: the queries of a text -> image search.

    Run on the indexing host (torch + open_clip), never on the device; compare them with the image
    embeddings of a zero-shot artifact built from the same CLIP model and weights."""
    if not texts:
        raise ConfigError("give at least one text query")
    model, tokenizer = load_clip(model_name, pretrained)
    return F.normalize(model.encode_text(tokenizer(list(texts))), dim=-1).float().numpy()


def read_templates(path: Path | None) -> tuple[str, ...]:
    """Prompt templates, one per line with {} for the class name; the defaults without a file."""
    if path is None:
        return DEFAULT_TEMPLATES
    text = read_user_text(path, "prompt templates file", ConfigError)
    return tuple(line.strip() for line in text.splitlines() if line.strip())
