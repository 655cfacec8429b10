"""Subject: a loaded model and its data, the object the CLI and every page work on.

The base model is loaded once, put in eval mode with gradients off, and never modified: every plan
is applied to a fresh copy. The dense model's metrics are measured once and kept (thread-safe), so
a Subject can be shared by every user of the app.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from torch import nn

from explorer.capabilities import Capabilities
from explorer.data import Dataset, Split, load_data
from explorer.errors import DataError
from explorer.evaluate import Metrics, measure
from explorer.inspect import Inventory, inventory
from explorer.models import ZOO, load_model
from explorer.models.loaders import input_shape_of
from explorer.plan import PruningPlan
from explorer.prune import apply_plan

__all__ = ["DEFAULT_MODEL", "Subject"]

DEFAULT_MODEL = "zoo:digits-cnn"


class Subject:
    """A model spec and a data spec, loaded and inventoried."""

    def __init__(self, model_spec: str = DEFAULT_MODEL, data_spec: str | None = None,
                 threads: int = 1, runs: int = 50) -> None:
        if data_spec is None:
            if not model_spec.startswith("zoo:"):
                raise DataError(f"{model_spec}: give a data spec (--data) for a model outside the zoo")
            if model_spec[4:] not in ZOO:
                load_model(model_spec)  # raises: unknown zoo model, with the valid names
            data_spec = model_spec
        self.model_spec = model_spec
        self.data_spec = data_spec
        self.threads = threads
        self.runs = runs
        self.model: nn.Module = load_model(model_spec)
        # Image folders are resized, and flat rows reshaped, to the input the model declares.
        self.data: Dataset = load_data(data_spec, input_shape=input_shape_of(self.model))
        self.model.requires_grad_(False)
        self.example_input = self.data.example_input()
        try:
            self.inventory: Inventory = inventory(self.model, self.example_input)
        except DataError as e:
            raise DataError(f"{model_spec} with data {data_spec}: {e}") from None
        self.capabilities = Capabilities.of(self.model, self.inventory.structured_error)
        self._lock = threading.Lock()
        self._dense: tuple[Metrics, np.ndarray] | None = None

    @property
    def layer_names(self) -> list[str]:
        return self.inventory.names

    @property
    def calibration(self) -> Split | None:
        """The data data-aware methods score with (train, else val, else test)."""
        found = self.data.calibration()
        return found[0] if found is not None else None

    def prune(self, plan: PruningPlan, *, round_to: int | None = None) -> nn.Module:
        """A pruned copy of the base model."""
        return apply_plan(self.model, plan, self.example_input, self.inventory, round_to=round_to,
                          calibration=self.calibration)

    def dense(self) -> tuple[Metrics, np.ndarray]:
        """The dense model's metrics and ORT logits on the evaluation data (measured once)."""
        with self._lock:
            if self._dense is None:
                self._dense = measure(self.model, self.data, threads=self.threads, runs=self.runs)
            return self._dense

    def measure(self, model: nn.Module, onnx_path: str | Path | None = None) -> Metrics:
        """Metrics of a (pruned) model of this subject, against the dense model where unlabelled."""
        _, reference = self.dense()
        metrics, _ = measure(model, self.data, reference=reference, onnx_path=onnx_path,
                             threads=self.threads, runs=self.runs)
        return metrics

    def evaluate(self, plan: PruningPlan | None = None, onnx_path: str | Path | None = None) -> dict:
        """The ``evaluate --json`` object: the pruned model's metrics, and the dense ones under 'dense'."""
        dense, _ = self.dense()
        pruned = dense if plan is None else self.measure(self.prune(plan), onnx_path)
        out: dict = pruned.to_dict()
        out["dense"] = dense.to_dict()
        out["model"] = self.model_spec
        out["data"] = self.data_spec
        if plan is not None:
            out["plan"] = plan.to_dict()
        return out
