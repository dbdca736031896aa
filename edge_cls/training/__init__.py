"""The build side's training stack: torch and timm.

Models (timm creation, weights files, the demo's conv-stem ViT), edge-cls checkpoints, the
training dataset, the ``timm.task`` tasks (labels and distillation), the resumable loop and its
state, distributed set-up, the one training stage every command uses, the distill and
finetune-teacher stages, and the ``build`` pipeline. Nothing on the device side imports it.
"""
