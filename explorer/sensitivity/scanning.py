"""The measured curves: accuracy and loss with one unit pruned at a time, cached on disk; the ETA
before a scan; and Distiller's loop, the oracle the fast scan is tested against."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from explorer.distributed import Executor
from explorer.evaluate import evaluate_torch, samples_per_call
from explorer.inputs import run_model
from explorer.methods import get_method
from explorer.plan import LayerRule, PruningPlan
from explorer.progress import Eta, Progress, no_progress
from explorer.sensitivity.cache import PointCache, ratio_key
from explorer.sensitivity.engines import Result, engine_for
from explorer.sensitivity.units import DEFAULT_RATIOS, check_ratios, check_round_to, select
from explorer.subject import Subject

__all__ = [
    "COLUMNS",
    "Estimate",
    "estimate",
    "pending",
    "reference_scan",
    "scan",
    "scan_cache",
]

COLUMNS = ["layer", "ratio", "accuracy", "loss", "members"]


def scan_cache(subject: Subject, method: str, round_to: int | None) -> PointCache:
    extra: dict[str, object] = {"round_to": round_to} if round_to else {}
    return PointCache("scan", subject, method, COLUMNS, **extra)


def scan(
    subject: Subject,
    method: str = "l1-unstructured",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    layers: Sequence[str] | None = None,
    on_progress: Progress = no_progress,
    *,
    round_to: int | None = None,
    cache: bool = True,
    engine: str = "auto",
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Evaluate the model with one unit pruned at a time, at each ratio (ratio 0: the dense model).

    Args:
        layers: units to scan (layer names, or group ids for structured methods); all when None.
        round_to: structured methods only: kept channel counts rounded up to a multiple of it.
        cache: read and write the on-disk cache (side effect: files under :func:`cache_dir`).
        engine: ``"auto"`` (ONNX Runtime suffix engine, PyTorch when the model cannot be cut),
            ``"onnxruntime"``, ``"torch"``; structured methods always use the DepGraph engine.
        executor: where the points are evaluated (:func:`explorer.distributed.executor`: here, or
            Ray tasks); the same points either way. The PyTorch engine always runs here.

    Returns a DataFrame with columns ``layer, ratio, accuracy, loss, members``: for every unit a
    ratio-0 row (the dense model) then one row per ratio in increasing order.

    Raises:
        PlanError: a bad ratio, an unknown unit, or a structured method on an untraceable model.
        UnknownMethodError: ``method`` is not registered.
    """
    m = get_method(method)
    ratios = check_ratios(ratios)
    round_to = check_round_to(m, round_to)
    todo = select(subject, method, layers)
    store = scan_cache(subject, method, round_to) if cache else None
    known = store.load() if store is not None else {}
    rk = ratio_key
    missing = {name: [r for r in [0.0, *ratios] if (name, rk(r)) not in known] for name in todo}
    missing = {name: rs for name, rs in missing.items() if rs}
    fresh: dict[tuple[str, float], dict] = {}
    if missing:
        eng = engine_for(subject, m, engine)
        total = sum(len(rs) for rs in missing.values())
        where = (
            f" on {executor.workers} Ray worker(s)"
            if executor is not None and executor.name == "ray"
            else ""
        )
        on_progress(0.0, f"{method}: {total} points with the {eng.name} engine{where}")

        eta = Eta()

        def progress(fraction: float, message: str) -> None:
            on_progress(min(fraction, 1.0) * 0.999, message + eta.note(fraction))

        pruned = {name: [r for r in rs if r > 0] for name, rs in missing.items()}
        for name, ratio, result in eng.run(
            m,
            todo,
            {n: rs for n, rs in pruned.items() if rs},
            progress,
            round_to,
            executor=executor,
        ):
            fresh[(name, rk(ratio))] = _row(name, ratio, result, ",".join(todo[name]))
        for name, rs in missing.items():
            if 0.0 in rs:
                fresh[(name, 0.0)] = _row(name, 0.0, eng.dense, ",".join(todo[name]))
        if store is not None:
            store.save(fresh)
    on_progress(1.0, "done")
    known.update(fresh)
    rows = [known[(name, rk(r))] for name in todo for r in [0.0, *ratios]]
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["ratio"] = [0.0, *ratios] * len(todo)  # exact ratios asked, not the cache's rounded keys
    out["members"] = [",".join(todo[name]) for name in todo for _ in range(len(ratios) + 1)]
    return out.reset_index(drop=True)


def _row(name: str, ratio: float, result: Result, members: str) -> dict:
    return {
        "layer": name,
        "ratio": ratio,
        "accuracy": result.accuracy,
        "loss": result.loss,
        "members": members,
    }


def reference_scan(
    subject: Subject,
    method: str = "l1-unstructured",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    layers: Sequence[str] | None = None,
    on_progress: Progress = no_progress,
    *,
    round_to: int | None = None,
) -> pd.DataFrame:
    """Distiller's loop, the oracle of :func:`scan`: for each unit and ratio, a fresh pruned copy of
    the model (``Subject.prune``) evaluated in PyTorch on the whole evaluation data. No cache.

    Same columns and row order as :func:`scan`.
    """
    m = get_method(method)
    ratios = check_ratios(ratios)
    round_to = check_round_to(m, round_to)
    todo = select(subject, method, layers)
    split = subject.data.test
    with torch.no_grad():
        n = samples_per_call(split.x)
        dense_logits = np.concatenate(
            [run_model(subject.model, split.x[i : i + n]).numpy() for i in range(0, len(split), n)]
        )
    reference = dense_logits if split.y is None else None
    dense_acc, dense_loss = evaluate_torch(subject.model, split, reference)
    rows = []
    total, done, start = len(todo) * len(ratios), 0, time.perf_counter()
    for name, members in todo.items():
        rows.append((name, 0.0, dense_acc, dense_loss, ",".join(members)))
        for ratio in ratios:
            plan = PruningPlan(method=method, layers={n: LayerRule(ratio) for n in members})
            pruned = subject.prune(plan, round_to=round_to)
            acc, loss = evaluate_torch(pruned, split, reference)
            rows.append((name, ratio, acc, loss, ",".join(members)))
            done += 1
            elapsed = time.perf_counter() - start
            on_progress(
                done / total,
                f"{name} @ {ratio:.2f} ({done}/{total}, ~{elapsed / done * (total - done):.0f} s"
                " left)",
            )
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclass(frozen=True)
class Estimate:
    """What a scan will cost before it starts. ``seconds`` is 0 when everything is cached."""

    points: int  # points left to evaluate
    cached: int  # points the cache already holds
    seconds: float
    seconds_per_evaluation: float  # one full evaluation of the data, measured with the engine
    engine: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _missing(
    subject: Subject,
    method: str,
    ratios: Sequence[float],
    layers: Sequence[str] | None,
    round_to: int | None,
    cache: bool,
) -> tuple[dict[str, list[str]], dict[str, list[float]]]:
    """The units a scan covers (name -> members) and, per unit, the ratios the cache lacks."""
    ratios = check_ratios(ratios)
    round_to = check_round_to(get_method(method), round_to)
    todo = select(subject, method, layers)
    known = scan_cache(subject, method, round_to).load() if cache else {}
    return todo, {n: [r for r in ratios if (n, ratio_key(r)) not in known] for n in todo}


def pending(
    subject: Subject,
    method: str = "l1-unstructured",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    layers: Sequence[str] | None = None,
    *,
    round_to: int | None = None,
) -> tuple[int, int]:
    """``(left, cached)``: how many of a scan's points are still to evaluate and how many the
    on-disk cache holds; reads the cache only (no engine is built, nothing is timed)."""
    todo, missing = _missing(subject, method, ratios, layers, round_to, True)
    left = sum(len(v) for v in missing.values())
    return left, len(todo) * len(check_ratios(ratios)) - left


def estimate(
    subject: Subject,
    method: str = "l1-unstructured",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    layers: Sequence[str] | None = None,
    *,
    round_to: int | None = None,
    cache: bool = True,
    engine: str = "auto",
) -> Estimate:
    """Estimate :func:`scan`'s run time: one evaluation is timed (building the engine, which the
    scan then reuses), and multiplied by the share of the model each point runs."""
    m = get_method(method)
    todo, missing = _missing(subject, method, ratios, layers, round_to, cache)
    n_missing = sum(len(v) for v in missing.values())
    cached = len(todo) * len(check_ratios(ratios)) - n_missing
    if not n_missing:
        return Estimate(0, cached, 0.0, 0.0, "cache")
    eng = engine_for(subject, m, engine)
    seconds = eng.overhead() + sum(eng.cost(todo[n], len(rs)) for n, rs in missing.items() if rs)
    return Estimate(n_missing, cached, seconds, eng.eval_seconds, eng.name)
