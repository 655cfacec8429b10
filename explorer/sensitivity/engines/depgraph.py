"""Structured scans: one DepGraph, built once and copied together with the model per point."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from explorer.errors import PlanError, PruneError
from explorer.evaluate import evaluate_torch
from explorer.inspect import build_dependency_graph, structured_groups
from explorer.methods import ChannelMethod, Method, get_method
from explorer.progress import Progress
from explorer.prune import kept_channels, remove_channels
from explorer.sensitivity.engines.base import CHUNK, Result, score_logits
from explorer.subject import Subject

__all__ = ["StructuredEngine"]


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
            found = structured_groups(self.dg, self.work)
        except Exception as e:
            raise PruneError(f"structured pruning needs a traceable model; DepGraph failed: {type(e).__name__}: {e}") from None
        by_members = {frozenset(members): group for group, members in found}
        self.groups: dict[str, tp.Group] = {}
        for gid, members in subject.inventory.groups.items():
            if frozenset(members) in by_members:
                self.groups[gid] = by_members[frozenset(members)]
        self._importance: dict[tuple[str, str], torch.Tensor] = {}
        self._scorers: dict[str, Callable[[tp.Group], torch.Tensor]] = {}
        self.lock = threading.Lock()
        split = subject.data.test
        with torch.no_grad():
            logits = np.concatenate([subject.model(split.x[i : i + CHUNK]).numpy() for i in range(0, len(split), CHUNK)])
        start = time.perf_counter()
        pruned = (self.pruned(next(iter(self.groups)), 0.5, None, get_method("l1-structured")) if self.groups
                  else copy.deepcopy(subject.model))
        self.copy_seconds = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_torch(pruned, split, logits)
        self.eval_seconds = time.perf_counter() - start
        self.reference = logits if split.y is None else None
        self.dense = score_logits(logits, subject, self.reference)

    def channels(self, gid: str) -> int:
        return len(self.groups[gid][0].idxs)

    def importance(self, gid: str, method: Method) -> torch.Tensor:
        """The channel scores of group ``gid`` under ``method`` on the unpruned model (cached)."""
        assert isinstance(method, ChannelMethod)
        with self.lock:
            if method.name not in self._scorers:
                self._scorers[method.name] = method.scorer(self.work, self.subject.calibration)
            if (gid, method.name) not in self._importance:
                with torch.no_grad():
                    self._importance[(gid, method.name)] = self._scorers[method.name](self.groups[gid])
            return self._importance[(gid, method.name)]

    def pruned(self, gid: str, ratio: float, round_to: int | None, method: Method) -> nn.Module:
        """A copy of the model with group ``gid`` pruned at ``ratio`` (the base model is untouched)."""
        group = self.groups[gid]
        n = len(group[0].idxs)
        n_prune = n - kept_channels(n, ratio, round_to)
        if n_prune <= 0:
            return copy.deepcopy(self.subject.model).eval()
        idxs = sorted(self.importance(gid, method).argsort()[:n_prune].tolist())
        # Share what is not the model's state: autograd nodes (cannot be copied) and Torch-Pruning's
        # pruner singletons (its code compares handlers with them by identity).
        memo: dict[int, object] = {id(self.dg.ops): self.dg.ops}
        for node in self.dg.module2node.values():
            memo[id(node.grad_fn)] = node.grad_fn
        for pruner in [*self.dg.REGISTERED_PRUNERS.values(), *self.dg.CUSTOMIZED_PRUNERS.values()]:
            memo[id(pruner)] = pruner
        with self.lock:
            model, dg, group_copy = copy.deepcopy((self.work, self.dg, group), memo)
        assert isinstance(method, ChannelMethod)
        try:
            remove_channels(dg, group_copy, idxs, method.compensation(model, self.subject.calibration))
        except PlanError:
            raise
        except Exception as e:
            raise PruneError(f"removing channels of group {gid!r} failed: {type(e).__name__}: {e}") from None
        model.requires_grad_(False)
        return model.eval()

    def cost(self, members: list[str], n_ratios: int) -> float:
        return (self.eval_seconds + self.copy_seconds) * n_ratios

    def overhead(self) -> float:
        return 0.0

    def run(self, method: Method, todo: dict[str, list[str]], ratios: dict[str, list[float]],
            on_progress: Progress, round_to: int | None = None) -> Iterator[tuple[str, float, Result]]:
        total, done = sum(len(rs) for rs in ratios.values()) or 1, 0
        for gid, rs in ratios.items():
            for ratio in rs:
                model = self.pruned(gid, ratio, round_to, method)
                result = Result(*evaluate_torch(model, self.subject.data.test, self.reference))
                done += 1
                on_progress(done / total, f"{gid} @ {ratio:.2f}")
                yield gid, ratio, result


