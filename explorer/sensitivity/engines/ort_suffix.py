"""Weight-only scans in ONNX Runtime: only the graph downstream of the pruned layer runs."""

from __future__ import annotations

import copy
import os
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explorer.methods import Method
from explorer.progress import Progress
from explorer.prune import pruned_weight
from explorer.runtime import INPUT_NAME, OUTPUT_NAME, ort_session, torchscript_export
from explorer.sensitivity.engines.base import CHUNK, Result, Unavailable, score_logits
from explorer.subject import Subject

__all__ = ["OrtSuffixEngine"]

# At most this much of captured inner tensors at a time. Measured on a residual CNN (3 ratios): a
# scan's peak RSS +747 MB at 256 MB, +356 MB at 64 MB, for 20 % more CPU time.
_CAPTURE_BYTES = 64 * 2**20
_SESSION_BYTES = 1024 * 2**20  # ONNX Runtime sessions kept between scans hold at most about this


class _WeightsAsInputs(nn.Module):
    """Wraps a model so that the weights of ``layers`` are inputs of ``forward`` (for export only).

    The weights stop being Parameters of ``model`` (so the exporter does not also store them as
    constants): it must wrap a private copy.
    """

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        super().__init__()
        self.model = model
        modules = dict(model.named_modules())
        self.targets = [modules[n] for n in layers]
        for module in self.targets:
            w = module._parameters.pop("weight")
            module.weight = w.detach()

    def forward(self, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        for module, w in zip(self.targets, weights):
            module.weight = w
        return self.model(x)




@dataclass
class _Cut:
    """The part of the graph a unit's weights influence, as a session of its own."""

    suffix: object  # inputs: ``activations`` then ``weights``; output: the logits
    activations: list[str]  # data-dependent inputs (the model input and/or inner tensors)
    weights: list[str]  # the unit's weight inputs
    fraction: float  # share of the model's MACs the suffix runs


class OrtSuffixEngine:
    """Weight-only scans in ONNX Runtime: only the graph downstream of the pruned layer runs.

    The model is exported once with every prunable layer's weight as a graph input. For a unit,
    the suffix is the part of the graph its weights reach, with the tensors it reads from the rest
    as inputs; other layers' weights become constants again, so ONNX Runtime folds and fuses the
    suffix as it would the whole model. A scan runs the dense model once per chunk of data with
    every needed inner tensor as an extra output (the capture), then each unit's suffix once per
    ratio on those tensors.
    """

    name = "onnxruntime-suffix"

    def __init__(self, subject: Subject) -> None:
        import onnx
        from onnx import helper, numpy_helper, shape_inference

        self._onnx, self._helper, self._nph = onnx, helper, numpy_helper
        self.subject = subject
        self.layers = list(subject.layer_names)
        self.input_of = {n: f"weight:{n}" for n in self.layers}
        work = copy.deepcopy(subject.model).eval()  # the wrapper turns its weights into inputs
        modules = dict(work.named_modules())
        dense = [modules[n].weight.detach().clone() for n in self.layers]
        self.dense_weights = {self.input_of[n]: w.numpy().copy() for n, w in zip(self.layers, dense)}
        buf = io.BytesIO()
        try:
            torchscript_export(_WeightsAsInputs(work, self.layers), (subject.example_input, *dense), buf,
                               input_names=[INPUT_NAME, *self.input_of.values()], output_names=[OUTPUT_NAME],
                               dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
            proto = onnx.load_model_from_string(buf.getvalue())
            inferred = shape_inference.infer_shapes(proto)
        except Exception as e:
            raise Unavailable(f"export with weights as inputs failed: {type(e).__name__}: {e}") from None
        graph = proto.graph
        if len(graph.output) != 1 or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                         for node in graph.node for a in node.attribute):
            raise Unavailable("the exported graph has several outputs or control flow")
        self.proto = proto
        self.nodes = list(graph.node)
        self.types: dict[str, int] = {}
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi.type.tensor_type.elem_type
        # Tensors that do not depend on the data: initializers, weights, and what only they feed.
        self.constant = {t.name for t in graph.initializer} | set(self.input_of.values()) | {""}
        for node in self.nodes:
            if all(i in self.constant for i in node.input):
                self.constant.update(node.output)
        self.producer = {o: k for k, node in enumerate(self.nodes) for o in node.output}
        self.macs = {n: subject.inventory[n].macs for n in self.layers}
        self.total_macs = max(sum(self.macs.values()), 1)
        self.weight_bytes = sum(a.nbytes for a in self.dense_weights.values()) + sum(
            int(np.prod(t.dims)) * 4 for t in graph.initializer)
        self.cuts: dict[str, _Cut | None] = {}
        self.captures: dict[tuple[str, ...], object] = {}
        self.lock = threading.Lock()
        self._dense_logits: np.ndarray | None = None
        self._eval_seconds: float | None = None  # one dense pass over the evaluation data
        try:
            self._capture(())
        except Exception as e:
            raise Unavailable(f"ONNX Runtime cannot run the export: {type(e).__name__}: {e}") from None

    # graph surgery

    def _session(self, node_ids: set[int], inputs: list[str], outputs: list[str], fed: set[str]) -> object:
        """A session of the nodes ``node_ids``; weights not in ``fed`` become initializers."""
        helper = self._helper
        nodes = [self.nodes[k] for k in sorted(node_ids)]
        used = {i for node in nodes for i in node.input}
        inits = [t for t in self.proto.graph.initializer if t.name in used]
        inits += [self._nph.from_array(a, name) for name, a in self.dense_weights.items()
                  if name in used and name not in fed]

        def info(name: str) -> object:
            if name in self.dense_weights:
                return helper.make_tensor_value_info(name, self._onnx.TensorProto.FLOAT, self.dense_weights[name].shape)
            if name not in self.types:
                raise Unavailable(f"no type known for tensor {name!r}")
            return helper.make_tensor_value_info(name, self.types[name], None)

        graph = helper.make_graph(nodes, "part", [info(n) for n in inputs], [info(n) for n in outputs],
                                  initializer=inits)
        model = helper.make_model(graph, opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version)
        # No memory arena: an engine keeps a session per unit, and each arena would keep the peak of a
        # whole-test-set run (measured on a residual CNN: two scans 2.1 GB RSS with arenas, 1.1 GB
        # without, at the same speed).
        return ort_session(model.SerializeToString(), os.cpu_count() or 1, arena=False)

    def _closure(self, tensors: set[str], stop: set[str]) -> set[int]:
        """Nodes needed to compute ``tensors`` from ``stop`` and constants."""
        needed: set[int] = set()
        stack = [t for t in tensors if t not in stop]
        while stack:
            k = self.producer.get(stack.pop())
            if k is None or k in needed:
                continue
            needed.add(k)
            stack.extend(i for i in self.nodes[k].input if i and i not in stop)
        return needed

    def cut(self, members: list[str]) -> _Cut | None:
        """The unit's suffix (built once); None when its weights do not reach the output."""
        key = ",".join(members)
        with self.lock:
            if key not in self.cuts:
                try:
                    self.cuts[key] = self._cut(members)
                except Unavailable:
                    raise
                except Exception as e:
                    raise Unavailable(f"cutting the graph at {members} failed: {type(e).__name__}: {e}") from None
            return self.cuts[key]

    def _cut(self, members: list[str]) -> _Cut | None:
        fed = {self.input_of[m] for m in members}
        downstream: set[int] = set()
        frontier = set(fed)
        for k, node in enumerate(self.nodes):  # nodes are topologically sorted
            if any(i in frontier for i in node.input):
                downstream.add(k)
                frontier.update(node.output)
        if OUTPUT_NAME not in frontier:
            return None
        made = {o for k in downstream for o in self.nodes[k].output}
        reads = {i for k in downstream for i in self.nodes[k].input if i and i not in made}
        activations = sorted(reads - self.constant)
        nodes = downstream | self._closure(reads & self.constant, set(self.input_of.values()))
        suffix = self._session(nodes, activations + sorted(fed), [OUTPUT_NAME], fed)
        downstream_layers = [n for n in self.layers if any(self.input_of[n] in self.nodes[k].input for k in downstream)]
        fraction = sum(self.macs[n] for n in downstream_layers) / self.total_macs
        return _Cut(suffix, activations, sorted(fed), fraction)

    def _capture(self, needed: tuple[str, ...]) -> object:
        """The dense model with the inner tensors ``needed`` as extra outputs (built once)."""
        if needed not in self.captures:
            nodes = self._closure({OUTPUT_NAME, *needed}, {INPUT_NAME})
            self.captures[needed] = self._session(nodes, [INPUT_NAME], [OUTPUT_NAME, *needed], set())
        return self.captures[needed]

    # evaluation

    def _timed_pass(self) -> None:
        x = self.subject.data.test.x.numpy()
        session = self._capture(())
        start = time.perf_counter()
        logits = np.concatenate([session.run(None, {INPUT_NAME: x[i : i + CHUNK]})[0] for i in range(0, len(x), CHUNK)])
        self._eval_seconds = time.perf_counter() - start
        if self._dense_logits is None:
            self._dense_logits = logits

    @property
    def eval_seconds(self) -> float:
        """Seconds of one dense pass over the evaluation data (measured once)."""
        with self.lock:
            if self._eval_seconds is None:
                self._timed_pass()
            assert self._eval_seconds is not None
            return self._eval_seconds

    @property
    def dense_logits(self) -> np.ndarray:
        with self.lock:
            if self._dense_logits is None:
                self._timed_pass()
            assert self._dense_logits is not None
            return self._dense_logits

    @property
    def reference(self) -> np.ndarray | None:
        return self.dense_logits if self.subject.data.test.y is None else None

    @property
    def dense(self) -> Result:
        return score_logits(self.dense_logits, self.subject, self.reference)

    def cost(self, members: list[str], n_ratios: int) -> float:
        """Estimated seconds for ``n_ratios`` points of a unit (one evaluation = ``eval_seconds``)."""
        cut = self.cut(members)
        if cut is None or not n_ratios:
            return 0.0
        return self.eval_seconds * n_ratios * max(cut.fraction, 0.02)

    def overhead(self) -> float:
        return self.eval_seconds  # the capture pass

    def run(self, method: Method, todo: dict[str, list[str]], ratios: dict[str, list[float]],
            on_progress: Progress, round_to: int | None = None) -> Iterator[tuple[str, float, Result]]:
        """Yield ``(unit, ratio, result)`` for every unit of ``todo`` at its ``ratios``."""
        cuts = {name: self.cut(todo[name]) for name in ratios}
        base, calibration = self.subject.model, self.subject.calibration
        weights: dict[str, list[dict[str, np.ndarray]]] = {}
        reuse: dict[str, list[bool]] = {}
        for name, rs in ratios.items():
            if cuts[name] is None:
                continue
            ws = [{self.input_of[m]: pruned_weight(method, base, m, r, calibration=calibration).numpy()
                   for m in todo[name]} for r in rs]
            weights[name] = ws
            # A ratio whose masks equal the previous ratio's (N:M, or a count that rounds the
            # same) gives the same logits.
            reuse[name] = [j > 0 and all(np.array_equal(ws[j][k], ws[j - 1][k]) for k in ws[j]) for j in range(len(ws))]
        needed = tuple(sorted({a for c in cuts.values() if c for a in c.activations} - {INPUT_NAME}))
        capture = self._capture(needed)
        x = self.subject.data.test.x.numpy()
        chunk = CHUNK
        if needed:  # bound the memory the captured tensors take
            per_sample = sum(a.nbytes for a in capture.run(list(needed), {INPUT_NAME: x[:1]}))
            chunk = int(min(CHUNK, max(8, _CAPTURE_BYTES // max(per_sample, 1))))
        starts = range(0, len(x), chunk)
        total = len(starts) * sum(len(w) for w in weights.values()) or 1
        done = 0
        dense_chunks: list[np.ndarray] = []
        logits: dict[str, list[list[np.ndarray]]] = {name: [[] for _ in ws] for name, ws in weights.items()}
        for i in starts:
            xc = x[i : i + chunk]
            outs = capture.run(None, {INPUT_NAME: xc})
            dense_chunks.append(outs[0])
            acts = {INPUT_NAME: xc, **dict(zip(needed, outs[1:]))}
            for name, ws in weights.items():
                cut = cuts[name]
                assert cut is not None
                feed = {a: acts[a] for a in cut.activations}
                for j, w in enumerate(ws):
                    if reuse[name][j]:
                        logits[name][j].append(logits[name][j - 1][-1])
                    else:
                        logits[name][j].append(cut.suffix.run(None, {**feed, **w})[0])
                    done += 1
                    on_progress(done / total, f"{name} @ {ratios[name][j]:.2f}")
        with self.lock:
            if self._dense_logits is None:
                self._dense_logits = np.concatenate(dense_chunks)
            # Each session holds its own copy of the weights it runs: keep them for the next scan
            # (the app scans unit by unit) unless that adds up to too much memory.
            if self.weight_bytes * (len(self.cuts) + len(self.captures)) > _SESSION_BYTES:
                self.cuts.clear()
                self.captures.clear()
        for name, rs in ratios.items():
            for j, r in enumerate(rs):
                if name not in logits:  # the unit does not influence the output
                    yield name, r, self.dense
                else:
                    yield name, r, score_logits(np.concatenate(logits[name][j]), self.subject, self.reference)


