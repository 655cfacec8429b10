"""Subject: a loaded model and its data, the object the CLI and every page work on.

The base model is loaded once, put in eval mode with gradients off, and never modified: every plan
is applied to a fresh copy. The dense model's metrics are measured once and kept (thread-safe), so
a Subject can be shared by every user of the app.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import threading
from pathlib import Path

import numpy as np
from torch import nn

from explorer.blocks import Block, find_blocks
from explorer.capabilities import Capabilities
from explorer.data import Dataset, Split, load_data
from explorer.errors import DataError
from explorer.evaluate import Evaluation, Metrics, measure, with_latency
from explorer.inspect import Inventory, inventory
from explorer.models import ZOO, load_model
from explorer.models.loaders import input_shape_of
from explorer.plan import PruningPlan
from explorer.prune import apply_plan, verified
from explorer.runtime import LatencyStats, OrtModel, Speedup, export_onnx, measure_speedup

__all__ = ["DEFAULT_MODEL", "Subject"]

DEFAULT_MODEL = "zoo:digits-cnn"


class Subject:
    """A model spec and a data spec, loaded and inventoried."""

    def __init__(
        self,
        model_spec: str = DEFAULT_MODEL,
        data_spec: str | None = None,
        threads: int = 1,
        runs: int = 50,
    ) -> None:
        if data_spec is None:
            if not model_spec.startswith("zoo:"):
                raise DataError(
                    f"{model_spec}: give a data spec (--data) for a model outside the zoo"
                )
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
            # Groups that cannot lose a channel (or head) without breaking the model are refused
            # here,
            # with the error, so that every other group stays prunable.
            self.inventory: Inventory = verified(
                self.model, self.example_input, inventory(self.model, self.example_input)
            )
        except DataError as e:
            raise DataError(f"{model_spec} with data {data_spec}: {e}") from None
        self.capabilities = Capabilities.of(self.model, self.inventory.structured_error)
        self._calibration_data = self.data  # a view (on_images) keeps its parent's
        self._lock = threading.Lock()
        self._dense: tuple[Metrics, np.ndarray] | None = None
        self._dense_session: OrtModel | None = None
        self._views: dict[int, Subject] = {}

    @property
    def output_note(self) -> str:
        """What of the model's output is used as its logits, where it returns more (a Hugging Face
        ``ModelOutput``, a graph with several outputs); empty for a plain tensor."""
        return getattr(self.model, "output_note", "")

    @property
    def layer_names(self) -> list[str]:
        return self.inventory.names

    @property
    def blocks(self) -> tuple[Block, ...]:
        """Residual blocks (or transformer layers) a plan can remove whole (``explorer.blocks``)."""
        return find_blocks(self.model, self.example_input)

    @property
    def calibration(self) -> Split | None:
        """The data data-aware methods score with (train, else val, else test)."""
        found = self._calibration_data.calibration()
        return found[0] if found is not None else None

    def on_images(self, n: int) -> Subject:
        """This subject evaluated on ``n`` of its evaluation samples (``Split.subset``: seeded, the
        same ones every time), for sensitivity curves that cost ``n / len(test)`` of a full scan.

        The view shares the model (never modified), inventory, example input and calibration data
        (data-aware methods prune exactly as on the whole set); its data fingerprint is its own, so
        its scans are cached apart. ``self`` when ``n`` covers every sample. Made once per ``n``.
        """
        if n < 1:
            raise DataError(f"a subset of the evaluation data needs at least 1 sample, got {n}")
        if n >= len(self.data.test):
            return self
        with self._lock:
            view = self._views.get(n)
            if view is None:
                view = copy.copy(self)
                view.data = dataclasses.replace(self.data, test=self.data.test.subset(n))
                view._lock = threading.Lock()
                view._dense, view._dense_session, view._views = None, None, {}
                self._views[n] = view
            return view

    def prune(self, plan: PruningPlan, *, round_to: int | None = None) -> nn.Module:
        """A pruned copy of the base model (kept channels rounded as the plan's ``round_to`` says,
        unless ``round_to`` is given)."""
        return apply_plan(
            self.model,
            plan,
            self.example_input,
            self.inventory,
            round_to=round_to,
            calibration=self.calibration,
        )

    def dense(self) -> tuple[Metrics, np.ndarray]:
        """The dense model's metrics and ORT logits on the evaluation data (measured once)."""
        with self._lock:
            if self._dense is None:
                self._dense = measure(self.model, self.data, threads=self.threads, runs=self.runs)
            return self._dense

    def dense_session(self) -> OrtModel:
        """The dense model's ONNX Runtime session with the latency thread count (built once): the
        reference every speedup is timed against."""
        with self._lock:
            if self._dense_session is None:
                with tempfile.TemporaryDirectory(prefix="explorer-dense-") as tmp:
                    path = export_onnx(self.model, self.example_input, Path(tmp) / "dense.onnx")
                    self._dense_session = OrtModel(
                        path.read_bytes(), threads=self.threads, name=f"{self.model_spec} (dense)"
                    )
            return self._dense_session

    def speedup(self, session: OrtModel) -> Speedup:
        """Dense over ``session``'s latency, the two timed alternately in one window."""
        return measure_speedup(
            self.dense_session(), session, self.example_input.numpy(), runs=self.runs
        )

    def measure(self, model: nn.Module, onnx_path: str | Path | None = None) -> Metrics:
        """Metrics of a (pruned) model of this subject, against the dense model where unlabelled."""
        _, reference = self.dense()
        metrics, _ = measure(
            model,
            self.data,
            reference=reference,
            onnx_path=onnx_path,
            threads=self.threads,
            runs=self.runs,
        )
        return metrics

    def evaluate(
        self,
        plan: PruningPlan | None = None,
        onnx_path: str | Path | None = None,
        *,
        model: nn.Module | None = None,
    ) -> Evaluation:
        """The pruned model's metrics next to the dense model's, with the interleaved speedup.

        ``model``: an already pruned (e.g. fine-tuned) model of ``plan``; pruned afresh when None.
        Without a plan or a model this is the dense model alone (no speedup). The latency fields of
        both sides are those of the interleaved window, so they were timed alongside each other.
        """
        dense, reference = self.dense()
        fed = {
            "inputs": self.data.inputs,
            "output": self.output_note,
        }  # what the model was fed and gave
        if plan is None and model is None:
            return Evaluation(dense, dense, self.model_spec, self.data_spec, **fed)
        pruned_model = model if model is not None else self.prune(plan)  # type: ignore[arg-type]
        window: list[Speedup] = []

        def timer(session: OrtModel, x: np.ndarray) -> LatencyStats:
            window.append(self.speedup(session))
            return window[-1].pruned

        pruned, _ = measure(
            pruned_model,
            self.data,
            reference=reference,
            onnx_path=onnx_path,
            threads=self.threads,
            runs=self.runs,
            timer=timer,
        )
        speedup = window[0]
        return Evaluation(
            pruned,
            with_latency(dense, speedup.dense),
            self.model_spec,
            self.data_spec,
            plan,
            speedup,
            **fed,
        )
