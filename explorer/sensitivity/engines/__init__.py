"""The engines that evaluate sensitivity points, and the one function that picks one.

Every engine answers the same questions: ``dense`` (the unpruned model's result), ``eval_seconds``
(one evaluation of the data, measured), ``cost(members, n_ratios)`` and ``overhead()`` (for the
ETA), and ``run(method, todo, ratios, on_progress, round_to, executor)``, which yields ``(unit,
ratio,
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

from explorer.errors import PlanError
from explorer.methods import Method
from explorer.sensitivity.engines.base import (
    CHUNK,
    Engine,
    Result,
    Unavailable,
    reduce_terms,
    score_logits,
)
from explorer.sensitivity.engines.depgraph import StructuredEngine
from explorer.sensitivity.engines.ort_suffix import OrtSuffixEngine
from explorer.sensitivity.engines.torch_swap import TorchSwapEngine
from explorer.subject import Subject

__all__ = [
    "CHUNK",
    "Engine",
    "Result",
    "Unavailable",
    "engine_for",
    "forget_engines",
    "reduce_terms",
    "score_logits",
]

_ENGINES: weakref.WeakKeyDictionary[Subject, dict[str, Engine]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def forget_engines(subject: Subject) -> None:
    """Drop the engines built for ``subject`` (sessions per unit, captured activations: hundreds of
    MB on a CNN). The next scan builds them again (e.g. to time that); points already scanned come
    from the cache. The public face calls it ``explorer.sensitivity.release``."""
    with _LOCK:
        _ENGINES.pop(subject, None)


def engine_for(subject: Subject, method: Method, engine: str = "auto") -> Engine:
    """The engine for ``method`` on ``subject``, built once per subject and kept while it lives.

    ``engine``: ``"auto"`` (ONNX Runtime suffix engine, PyTorch when the model cannot be cut),
    ``"onnxruntime"`` or ``"torch"``; structured methods always use the DepGraph engine.
    """
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
