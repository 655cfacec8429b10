"""The engines that evaluate sensitivity points, and the one function that picks one.

Every engine answers the same questions: ``dense`` (the unpruned model's result), ``eval_seconds``
(one evaluation of the data, measured), ``cost(members, n_ratios)`` and ``overhead()`` (for the
ETA), and ``run(method, todo, ratios, on_progress, round_to)``, which yields ``(unit, ratio,
Result)`` for every point asked. :func:`engine_for` builds the right one for a method once per
subject and keeps it while the subject lives.

- ``onnxruntime-suffix`` (:mod:`.ort_suffix`): weight-only methods, in ONNX Runtime, running only
  the part of the graph downstream of the pruned layer;
- ``torch-swap`` (:mod:`.torch_swap`): weight-only methods in PyTorch, for models ONNX Runtime
  cannot run cut in two;
- ``torch-depgraph`` (:mod:`.depgraph`): structured methods, the really shrunk model in PyTorch.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from explorer.distributed import Executor
from explorer.errors import PlanError
from explorer.evaluate import scores
from explorer.methods import Method
from explorer.progress import Progress
from explorer.subject import Subject

__all__ = ["CHUNK", "Engine", "Result", "Unavailable", "engine_for", "forget_engines", "reduce_terms",
           "score_logits"]

CHUNK = 512  # samples per ONNX Runtime or PyTorch call


class Unavailable(Exception):
    """The fast engine cannot handle this model; the caller falls back to the torch engine."""


@dataclass
class Result:
    accuracy: float
    loss: float


def score_logits(logits: np.ndarray, subject: Subject, reference: np.ndarray | None) -> Result:
    """The result of ``logits`` on the subject's evaluation data (against ``reference`` without labels)."""
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

    def run(self, method: Method, todo: dict[str, list[str]], ratios: dict[str, list[float]],
            on_progress: Progress, round_to: int | None = None,
            executor: Executor | None = None) -> Iterator[tuple[str, float, Result]]: ...


_ENGINES: weakref.WeakKeyDictionary[Subject, dict[str, Engine]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def forget_engines(subject: Subject) -> None:
    """Drop the engines built for ``subject`` (the next scan builds them again, e.g. to time that)."""
    with _LOCK:
        _ENGINES.pop(subject, None)


def engine_for(subject: Subject, method: Method, engine: str = "auto") -> Engine:
    """The engine for ``method`` on ``subject``, built once per subject and kept while it lives.

    ``engine``: ``"auto"`` (ONNX Runtime suffix engine, PyTorch when the model cannot be cut),
    ``"onnxruntime"`` or ``"torch"``; structured methods always use the DepGraph engine.
    """
    from explorer.sensitivity.engines.depgraph import StructuredEngine
    from explorer.sensitivity.engines.ort_suffix import OrtSuffixEngine
    from explorer.sensitivity.engines.torch_swap import TorchSwapEngine

    kind = "structured" if method.structured else engine
    with _LOCK:
        cache = _ENGINES.setdefault(subject, {})
        if kind in cache:
            return cache[kind]
    if method.structured:
        if subject.inventory.structured_error:
            raise PlanError(f"{method.name}: {subject.inventory.structured_error}")
        built: Engine = StructuredEngine(subject)
    elif engine == "torch":
        built = TorchSwapEngine(subject)
    elif engine in ("auto", "onnxruntime"):
        try:
            built = OrtSuffixEngine(subject)
        except Unavailable:
            if engine == "onnxruntime":
                raise
            built = engine_for(subject, method, "torch")
    else:
        raise ValueError(f"unknown engine {engine!r}")
    with _LOCK:
        _ENGINES[subject][kind] = built
    return built
