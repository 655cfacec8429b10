"""Weight-only scans in PyTorch on one working copy: swap the weight in place, evaluate, restore."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch

from explorer.evaluate import evaluate_torch, samples_per_call
from explorer.inputs import run_model
from explorer.methods import Method
from explorer.progress import Progress
from explorer.prune import pruned_weight
from explorer.sensitivity.engines.base import CHUNK, Result, score_logits
from explorer.subject import Subject

__all__ = ["TorchSwapEngine"]


class TorchSwapEngine:
    """Weight-only scans in PyTorch on one working copy: swap the weight in place, evaluate,
    restore.

    The fallback for models ONNX Runtime cannot run cut in two; every point is a full evaluation,
    but no copy of the model is made per point.
    """

    name = "torch-swap"

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.work = copy.deepcopy(subject.model).eval()
        self.modules = dict(self.work.named_modules())
        self.dense_weights = {
            n: self.modules[n].weight.detach().clone() for n in subject.layer_names
        }
        self.lock = threading.Lock()
        split = subject.data.test
        start = time.perf_counter()
        with torch.no_grad():
            n = samples_per_call(split.x, CHUNK)
            self.dense_logits = np.concatenate(
                [run_model(self.work, split.x[i : i + n]).numpy() for i in range(0, len(split), n)]
            )
        self.eval_seconds = time.perf_counter() - start
        self.reference = self.dense_logits if split.y is None else None
        self.dense = score_logits(self.dense_logits, subject, self.reference)

    def cost(self, members: list[str], n_ratios: int) -> float:
        return self.eval_seconds * n_ratios

    def overhead(self) -> float:
        return 0.0

    def run(
        self,
        method: Method,
        todo: dict[str, list[str]],
        ratios: dict[str, list[float]],
        on_progress: Progress,
        round_to: int | None = None,
        executor: object | None = None,
    ) -> Iterator[tuple[str, float, Result]]:
        """Every point here, in PyTorch (``executor`` is ignored: a torch model is not shipped to
        Ray workers, which would mean pickling the user's code)."""
        base, calibration = self.subject.model, self.subject.calibration
        total, done = sum(len(rs) for rs in ratios.values()) or 1, 0
        for name, rs in ratios.items():
            members = todo[name]
            for ratio in rs:
                with self.lock, torch.no_grad():
                    for m in members:
                        self.modules[m].weight.copy_(
                            pruned_weight(method, base, m, ratio, calibration=calibration)
                        )
                    try:
                        result = Result(
                            *evaluate_torch(self.work, self.subject.data.test, self.reference)
                        )
                    finally:
                        for m in members:
                            self.modules[m].weight.copy_(self.dense_weights[m])
                done += 1
                on_progress(done / total, f"{name} @ {ratio:.2f}")
                yield name, ratio, result
