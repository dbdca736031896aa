"""edge-cls: turn a large image classifier into small, fast, checked artifacts for edge devices.

The core (this package's top level: preprocessing, predictions, manifest) imports only numpy and
pillow. Training needs the ``train`` extra, export the ``export`` extra, and each runtime its own.
"""

from edge_cls._fileio import DiskFullError
from edge_cls.errors import (
    ArtifactError,
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DataError,
    EdgeClsError,
    ExportError,
    InvalidImageError,
)
from edge_cls.predictions import Prediction
from edge_cls.preprocess import Frame, PreprocessSpec

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DiskFullError",
    "EdgeClsError",
    "ExportError",
    "InvalidImageError",
    "Frame",
    "Prediction",
    "PreprocessSpec",
    "__version__",
]
