"""Structured scans: one DepGraph, built once and copied together with the model per point; each
shrunk model is written to ONNX (from the dense export's template: no exporter run) and scored in
ONNX Runtime, here or as one Ray task per point (the file crosses the wire, not the model)."""

from __future__ import annotations

import copy
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from explorer.distributed import Executor, LocalExecutor
from explorer.errors import PlanError, PruneError
from explorer.evaluate import sample_scores, samples_per_call
from explorer.groups import GroupShape
from explorer.heads import FusedInProj
from explorer.inspect import build_dependency_graph, classified_groups
from explorer.methods import ChannelMethod, Method, get_method
from explorer.onnx_template import write_onnx
from explorer.progress import Progress
from explorer.prune import group_scores, prune_mha_heads, removal, remove_channels
from explorer.runtime import OrtModel, ort_session
from explorer.sensitivity.engines.base import CHUNK, Result, reduce_terms, score_logits
from explorer.subject import Subject

__all__ = ["StructuredEngine", "score_onnx"]


def score_onnx(
    data: dict[str, Any], onnx: bytes, threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (correct, loss) terms of the model in ``onnx`` on ``data`` (``x``, and ``y`` or
    the
    dense model's logits as ``reference``), scored in chunks of :data:`CHUNK`. One structured point,
    here or on a Ray worker."""
    session = ort_session(onnx, threads)
    names = [i.name for i in session.get_inputs()]
    x, y, ref = data["x"], data.get("y"), data.get("reference")
    if isinstance(
        x, dict
    ):  # named inputs, fed by name (in the file's order where it names them otherwise)
        named = x if set(x) == set(names) else dict(zip(names, x.values(), strict=False))
        length = len(next(iter(named.values())))
    else:
        named, length = {names[0]: x}, len(x)
    n = samples_per_call(x, CHUNK)
    terms = [
        sample_scores(
            session.run(None, {k: v[i : i + n] for k, v in named.items()})[0],
            y[i : i + n] if y is not None else None,
            ref[i : i + n] if y is None else None,
        )
        for i in range(0, length, n)
    ]
    return np.concatenate([c for c, _ in terms]), np.concatenate([lo for _, lo in terms])


class StructuredEngine:
    """Structured scans: one DepGraph, built once and copied together with the model per point.

    Channel scores come from the unpruned model, as :func:`explorer.prune.apply_plan` ranks them,
    so a point's model is the one a plan pruning only that group gives.
    """

    name = "torch-depgraph"

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.work = copy.deepcopy(subject.model).eval()
        self.work.requires_grad_(True)
        try:
            self.dg = build_dependency_graph(self.work, subject.example_input)
            found = classified_groups(self.dg, self.work)
        except Exception as e:
            raise PruneError(
                "structured pruning needs a traceable model; DepGraph failed:"
                f" {type(e).__name__}: {e}"
            ) from None
        by_members = {
            frozenset(members): (group, shape)
            for group, members, shape in found
            if not shape.refused
        }
        self.groups: dict[str, tp.Group] = {}
        self.shapes: dict[
            str, GroupShape
        ] = {}  # how each group loses channels (heads, channel groups)
        self.heads: dict[
            str, int
        ] = {}  # nn.MultiheadAttention's fused projections: pruned by heads, no group
        modules = dict(self.work.named_modules())
        for gid, members in subject.inventory.groups.items():
            if frozenset(members) in by_members:
                self.groups[gid], self.shapes[gid] = by_members[frozenset(members)]
            elif isinstance(modules.get(gid), FusedInProj):
                self.heads[gid] = subject.inventory[gid].heads
        self._importance: dict[tuple[str, str], torch.Tensor] = {}
        self._scorers: dict[str, Callable[[tp.Group], torch.Tensor]] = {}
        self.lock = threading.Lock()
        split = subject.data.test
        x = split.x.numpy()  # an array, or named arrays for a model of several inputs
        with tempfile.TemporaryDirectory(prefix="explorer-structured-") as tmp:
            path = Path(tmp) / "dense.onnx"
            write_onnx(subject, subject.model, path)
            logits = OrtModel(path, threads=os.cpu_count() or 1)(
                x, batch_size=samples_per_call(x, CHUNK)
            )
        self.reference = logits if split.y is None else None
        self.dense = score_logits(logits, subject, self.reference)
        self.data = {
            "x": x,
            "y": split.y.numpy() if split.y is not None else None,
            "reference": self.reference,
        }
        start = time.perf_counter()
        onnx = (
            self.point_file(next(iter(self.groups)), 0.5, None, get_method("l1-structured"))
            if self.groups
            else None
        )
        self.copy_seconds = time.perf_counter() - start
        start = time.perf_counter()
        if onnx is not None:
            score_onnx(self.data, onnx, os.cpu_count() or 1)
        self.eval_seconds = time.perf_counter() - start

    def channels(self, gid: str) -> int:
        return self.heads[gid] if gid in self.heads else len(self.groups[gid][0].idxs)

    def importance(self, gid: str, method: Method) -> torch.Tensor:
        """The channel scores of group ``gid`` under ``method`` on the unpruned model (cached)."""
        assert isinstance(method, ChannelMethod)
        with self.lock:
            if method.name not in self._scorers:
                self._scorers[method.name] = method.scorer(self.work, self.subject.calibration)
            if (gid, method.name) not in self._importance:
                with torch.no_grad():
                    self._importance[(gid, method.name)] = group_scores(
                        method,
                        self._scorers[method.name],
                        self.dg,
                        self.groups[gid],
                        self.shapes[gid],
                        list(self.subject.inventory.groups[gid]),
                    )
            return self._importance[(gid, method.name)]

    def pruned(self, gid: str, ratio: float, round_to: int | None, method: Method) -> nn.Module:
        """A copy of the model with group ``gid`` pruned at ``ratio`` (the base model is untouched),
        its channels removed by the same rule as :func:`explorer.prune.apply_plan`'s."""
        assert isinstance(method, ChannelMethod)
        if gid in self.heads:
            model = copy.deepcopy(self.subject.model).eval()
            prune_mha_heads(model, gid, ratio, method)
            return model
        group = self.groups[gid]
        idxs = removal(self.shapes[gid], self.importance(gid, method), ratio, round_to)
        if not idxs:
            return copy.deepcopy(self.subject.model).eval()
        # Share what is not the model's state: autograd nodes (cannot be copied) and Torch-Pruning's
        # pruner singletons (its code compares handlers with them by identity).
        memo: dict[int, object] = {id(self.dg.ops): self.dg.ops}
        for node in self.dg.module2node.values():
            memo[id(node.grad_fn)] = node.grad_fn
        for pruner in [*self.dg.REGISTERED_PRUNERS.values(), *self.dg.CUSTOMIZED_PRUNERS.values()]:
            memo[id(pruner)] = pruner
        with self.lock:
            model, dg, group_copy = copy.deepcopy((self.work, self.dg, group), memo)
        try:
            remove_channels(
                dg,
                model,
                group_copy,
                list(self.subject.inventory.groups[gid]),
                self.shapes[gid],
                idxs,
                method.compensation(model, self.subject.calibration),
            )
        except (PlanError, PruneError):
            raise
        except Exception as e:
            raise PruneError(
                f"removing channels of group {gid!r} failed: {type(e).__name__}: {e}"
            ) from None
        model.requires_grad_(False)
        return model.eval()

    def point_file(self, gid: str, ratio: float, round_to: int | None, method: Method) -> bytes:
        """The ONNX file of the model with group ``gid`` pruned at ``ratio`` (the template's bytes,
        or the exporter's where the template cannot vouch for it)."""
        with tempfile.TemporaryDirectory(prefix="explorer-structured-") as tmp:
            path = Path(tmp) / "pruned.onnx"
            write_onnx(self.subject, self.pruned(gid, ratio, round_to, method), path)
            return path.read_bytes()

    def cost(self, members: list[str], n_ratios: int) -> float:
        return (self.eval_seconds + self.copy_seconds) * n_ratios

    def overhead(self) -> float:
        return 0.0

    def run(
        self,
        method: Method,
        todo: dict[str, list[str]],
        ratios: dict[str, list[float]],
        on_progress: Progress,
        round_to: int | None = None,
        executor: Executor | None = None,
    ) -> Iterator[tuple[str, float, Result]]:
        """Yield ``(group, ratio, result)`` for every point: the shrunk model's file scored in ONNX
        Runtime (one task per point on Ray; the files are written as tasks are submitted)."""
        executor = executor or LocalExecutor()
        points = [(gid, ratio) for gid, rs in ratios.items() for ratio in rs]
        total, done = len(points) or 1, 0
        results: dict[int, Result] = {}
        labelled = self.subject.data.test.y is not None
        threads = (os.cpu_count() or 1) if isinstance(executor, LocalExecutor) else 1

        def arrived(k: int, terms: tuple[np.ndarray, np.ndarray]) -> None:
            nonlocal done
            results[k] = reduce_terms([terms], labelled)
            done += 1
            gid, ratio = points[k]
            on_progress(done / total, f"{gid} @ {ratio:.2f}")

        files = (self.point_file(gid, ratio, round_to, method) for gid, ratio in points)
        executor.map(_score_point, (executor.put(self.data), threads), files, arrived)
        for k, (gid, ratio) in enumerate(points):
            yield gid, ratio, results[k]


def _score_point(
    data: dict[str, np.ndarray | None], threads: int, onnx: bytes
) -> tuple[np.ndarray, np.ndarray]:
    return score_onnx(data, onnx, threads)
