"""The resumable training state: what ``runs/<stage>/last.pt`` holds, and how it is read back.

After every epoch rank 0 writes model, EMA, optimizer, AMP scaler, sampler and RNG state, the
epoch's history and the config, atomically and durably (temp file, fsync, rename). The state it
replaces is renamed to ``last.pt.prev`` once the new one is on disk: two files, never one inode
under two names, so damage to one leaves the other. Reading checks the file before any work, so
a truncated or foreign file fails fast and is left as it is; :func:`read_resumable_state` then
falls back to the previous epoch's state with a warning (also when a kill between the two
renames left no ``last.pt``).
The scheduler is not stored: its value is a function of the update count, which the loop sets.
"""

from __future__ import annotations

import logging
import os
import random
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.task import TrainingTask
from timm.utils import unwrap_model

from edge_cls._fileio import atomic_path, fsync_file
from edge_cls.errors import CheckpointError
from edge_cls.training.config import TrainConfig

logger = logging.getLogger(__name__)

STATE_FORMAT = "edge-cls-train-state"
STATE_VERSION = 1
STATE_FILE = "last.pt"
PREVIOUS_SUFFIX = ".prev"


def previous_state_path(path: str | os.PathLike[str]) -> Path:
    """Where the state before ``path`` is kept: ``last.pt`` -> ``last.pt.prev``."""
    path = Path(path)
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def rng_state() -> dict[str, Any]:
    """torch, numpy and Python RNG state as tensors and plain data (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
    }  # CUDA streams need no state: every epoch reseeds them from (seed, epoch, rank)


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, (list, tuple)) else value


def plain(value: Any) -> Any:
    """Tuples to lists, so a config compares equal after a save/load round trip."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def save_state(path: Path, task: TrainingTask, optimizer: Any, scaler: Any, sampler: Any, config: TrainConfig, *,
               epoch: int, updates: int, history: list[dict[str, float]], desc: str) -> None:
    """Write the state after ``epoch`` epochs (``updates`` optimizer steps)."""
    state = {
        "format": STATE_FORMAT, "version": STATE_VERSION, "desc": desc, "epoch": epoch, "updates": updates,
        "model": unwrap_model(task.get_trainable_module()).state_dict(),
        "ema": task.get_trainable_module(ema=True).state_dict() if task.has_ema() else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "sampler": sampler.state_dict(), "rng": rng_state(),
        "config": plain(asdict(config)), "history": history,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        fsync_file(tmp)  # the new state is on disk before the old one moves
        _keep_previous(path)


def _keep_previous(path: Path) -> None:
    """Rename the current state file to ``last.pt.prev``. A file that is not a complete zip archive
    (torch.save's format; truncated on disk, say) is not promoted over a good previous one."""
    if path.is_file() and zipfile.is_zipfile(path):
        os.replace(path, previous_state_path(path))


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training state file, checked; a missing, truncated or foreign file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume: {path} does not exist (start without --resume, or pass the run directory "
            "that holds last.pt)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...: torch raises many types
        raise CheckpointError(
            f"cannot resume: {path} is unreadable or truncated ({type(e).__name__}: {e}); it was left as it is - "
            "restore a copy, or start the run again without --resume in a new directory"
        ) from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"cannot resume: {path} is not an edge-cls training state (use the run directory's last.pt)"
        )
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"cannot resume: {path} has state version {state.get('version')}, expected {STATE_VERSION}"
        )
    missing = sorted({"epoch", "updates", "model", "ema", "optimizer", "rng", "config", "history"} - set(state))
    if missing:
        raise CheckpointError(f"cannot resume: {path} lacks {', '.join(missing)}; it was left as it is")
    return state


def read_resumable_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """:func:`read_state`, falling back to ``last.pt.prev`` (with a warning naming both files) when
    ``path`` is missing, truncated or unreadable. Returns the state and the file it came from."""
    path = Path(path)
    try:
        return read_state(path), path
    except CheckpointError as error:
        previous = previous_state_path(path)
        if not previous.is_file():
            raise
        try:
            state = read_state(previous)
        except CheckpointError:
            raise error from None
        logger.warning("%s cannot be used (%s); resuming from the previous epoch's state %s instead",
                       path, error, previous)
        return state, previous


def restore_state(state: dict[str, Any], path: Path, task: TrainingTask, optimizer: Any, scaler: Any,
                  config: TrainConfig) -> None:
    """Load a state read by :func:`read_state` into the task, optimizer, scaler and RNGs."""
    changed = sorted(k for k, v in plain(asdict(config)).items() if state["config"].get(k) != v and k != "epochs")
    if changed:
        logger.warning(
            "resuming %s with a changed config (%s): the run will differ from the original", path, ", ".join(changed)
        )
    if state["epoch"] >= config.epochs:
        logger.info("%s finished all %d epochs before the run stopped: nothing left to train", path, state["epoch"])
    try:
        unwrap_model(task.get_trainable_module()).load_state_dict(state["model"])
        if task.has_ema():
            if state["ema"] is None:
                raise CheckpointError(
                    f"{path} has no EMA weights but this run uses EMA; resume with the same ema_decay"
                )
            task.get_trainable_module(ema=True).load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {path}: it does not fit this model or optimizer ({e})") from e
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
