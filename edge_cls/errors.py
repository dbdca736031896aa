"""One exception hierarchy for everything edge-cls raises on purpose.

Each error inherits from :class:`EdgeClsError` and from the builtin it resembles, so callers can
catch either. Messages say what was wrong, with which input, and what to do.
"""

from __future__ import annotations


class EdgeClsError(Exception):
    """Base class of every error edge-cls raises on purpose."""


class ConfigError(EdgeClsError, ValueError):
    """An option, argument or configuration value is invalid."""


class BackendUnavailableError(EdgeClsError, ImportError):
    """A runtime or export backend is not installed; the message carries the install command."""


class InvalidImageError(EdgeClsError, ValueError):
    """An input image is missing, unreadable, truncated or of an unsupported kind."""


class ArtifactError(EdgeClsError, ValueError):
    """An artifact directory or its manifest is missing, malformed or tampered with."""


class ExportError(EdgeClsError, RuntimeError):
    """An export step failed, or an exported artifact disagrees with its reference."""


class DataError(EdgeClsError, ValueError):
    """A dataset is missing, empty or malformed."""


class CheckpointError(EdgeClsError, ValueError):
    """A checkpoint or weights file is missing, unreadable or does not fit the model."""
