"""The one exception family users can cause. Pages show it with st.error; the CLI exits 2."""

from __future__ import annotations

__all__ = [
    "DataError",
    "ExplorerError",
    "ExportError",
    "ModelLoadError",
    "PlanError",
    "PruneError",
    "RecoverError",
    "ScheduleError",
    "UnknownMethodError",
]


class ExplorerError(Exception):
    """Base class of every error a user's input can cause. The message names the culprit."""


class ModelLoadError(ExplorerError):
    """A model spec that cannot be loaded (missing file, bad entrypoint, not a Module...)."""


class DataError(ExplorerError):
    """A data spec that cannot be loaded or does not fit the model."""


class PlanError(ExplorerError):
    """A pruning plan that is malformed or does not fit the model."""


class UnknownMethodError(PlanError):
    """A pruning method name that is not in the registry."""


class PruneError(ExplorerError):
    """A plan that is valid but cannot be applied to this model (e.g. untraceable for DepGraph)."""


class ExportError(ExplorerError):
    """ONNX export, ONNX Runtime or writing the export bundle failed."""


class RecoverError(ExplorerError):
    """A fine-tuning or recalibration setting out of range (epochs, learning rate, alpha...)."""


class ScheduleError(ExplorerError):
    """A pruning schedule that is unknown, badly set, or cannot run on this model or plan."""
