"""What every sensitivity engine shares: the result of a point, how logits are scored, its face."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from explorer.distributed import Executor
from explorer.evaluate import scores
from explorer.methods import Method
from explorer.progress import Progress
from explorer.subject import Subject

__all__ = ["CHUNK", "Engine", "Result", "Unavailable", "reduce_terms", "score_logits"]

CHUNK = 512  # samples per ONNX Runtime or PyTorch call


class Unavailable(Exception):
    """The fast engine cannot handle this model; the caller falls back to the torch engine."""


@dataclass
class Result:
    accuracy: float
    loss: float


def score_logits(logits: np.ndarray, subject: Subject, reference: np.ndarray | None) -> Result:
    """The result of ``logits`` on the subject's evaluation data (against ``reference`` without
    labels)."""
    y = subject.data.test.y.numpy() if subject.data.test.y is not None else None
    return Result(*scores(logits, y, reference))


def reduce_terms(chunks: list[tuple[np.ndarray, np.ndarray]], labelled: bool) -> Result:
    """The result of per-sample (correct, loss) terms scored chunk by chunk, in data order: what
    :func:`score_logits` gives on the concatenated logits (rows are scored independently)."""
    correct = np.concatenate([c for c, _ in chunks])
    loss = float(np.concatenate([lo for _, lo in chunks]).mean())
    return Result(float(correct.mean()), loss if labelled else max(loss, 0.0))


class Engine(Protocol):
    name: str

    @property
    def dense(self) -> Result: ...

    @property
    def eval_seconds(self) -> float: ...

    def cost(self, members: list[str], n_ratios: int) -> float: ...

    def overhead(self) -> float: ...

    def run(
        self,
        method: Method,
        todo: dict[str, list[str]],
        ratios: dict[str, list[float]],
        on_progress: Progress,
        round_to: int | None = None,
        executor: Executor | None = None,
    ) -> Iterator[tuple[str, float, Result]]: ...
