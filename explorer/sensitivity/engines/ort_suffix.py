"""Weight-only scans in ONNX Runtime: only the graph downstream of the pruned layer runs.

One concern: this engine. Its parts (the graph walk as plain bytes and arrays, suffix sessions
grouped under a memory budget, one capture pass per group, the same groups as Ray tasks) only
make sense together; the engines' shared face is :mod:`.base`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explorer.distributed import Executor, LocalExecutor
from explorer.evaluate import sample_scores, samples_per_call
from explorer.inputs import Inputs
from explorer.methods import Method
from explorer.progress import Progress
from explorer.prune import pruned_weight
from explorer.runtime import INPUT_NAME, OUTPUT_NAME, ort_session, torchscript_export
from explorer.sensitivity.engines.base import CHUNK, Result, Unavailable, reduce_terms, score_logits
from explorer.subject import Subject

__all__ = ["GraphSpec", "OrtSuffixEngine", "ScanJob", "SuffixGraph", "run_chunk"]

# At most this much of captured inner tensors at a time. Measured on a residual CNN (3 ratios): a
# scan's peak RSS +747 MB at 256 MB, +356 MB at 64 MB, for 20 % more CPU time.
_CAPTURE_BYTES = 64 * 2**20
_SESSION_BYTES = 1024 * 2**20  # ONNX Runtime sessions kept between scans hold at most about this
_GROUP_BYTES = (
    384 * 2**20
)  # weights of the suffixes run in one capture pass (sessions hold 2-3x that)


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
        for module, w in zip(self.targets, weights, strict=False):
            module.weight = w
        return self.model(x)


@dataclass(frozen=True)
class _Plan:
    """The part of the graph a unit's weights influence (found by walking the graph: no session)."""

    nodes: frozenset[int]
    activations: list[str]  # data-dependent inputs (the model input and/or inner tensors)
    weights: list[str]  # the unit's weight inputs
    fraction: float  # share of the model's MACs the suffix runs
    bytes: int  # weights the suffix holds as constants (its session holds them, and more)


@dataclass
class _Cut:
    """A unit's suffix as a session of its own."""

    suffix: object  # inputs: ``activations`` then ``weights``; output: the logits
    activations: list[str]
    weights: list[str]
    fraction: float


@dataclass(frozen=True)
class GraphSpec:
    """What rebuilds the graph anywhere: the export with the prunable weights as graph inputs, the
    dense weights, and the layers' MACs. Bytes and arrays only (it crosses the wire to Ray)."""

    key: str  # hash of the export: workers keep one graph per key
    proto: bytes
    dense_weights: dict[str, np.ndarray]  # graph input name -> dense weight
    layers: list[str]
    macs: dict[str, int]


class SuffixGraph:
    """Graph surgery on the export: the suffix a unit's weights reach, and the dense model with
    inner tensors as extra outputs. Sessions are built once and kept (ONNX Runtime, ``threads``
    intra-op threads); no torch, no model object: workers build one from a :class:`GraphSpec`."""

    def __init__(self, spec: GraphSpec, threads: int | None = None) -> None:
        import onnx
        from onnx import helper, numpy_helper, shape_inference

        self._onnx, self._helper, self._nph = onnx, helper, numpy_helper
        self.spec = spec
        self.threads = threads or os.cpu_count() or 1
        self.layers = list(spec.layers)
        self.input_of = {n: f"weight:{n}" for n in self.layers}
        self.dense_weights = spec.dense_weights
        proto = onnx.load_model_from_string(spec.proto)
        inferred = shape_inference.infer_shapes(proto)
        graph = proto.graph
        if len(graph.output) != 1 or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for node in graph.node
            for a in node.attribute
        ):
            raise Unavailable("the exported graph has several outputs or control flow")
        self.proto = proto
        self.nodes = list(graph.node)
        self.types: dict[str, int] = {}
        self.sample_bytes: dict[str, int] = {}  # bytes per sample, where the shape says it
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi.type.tensor_type.elem_type
                dims = vi.type.tensor_type.shape.dim
                sizes = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
                if dims and not dims[0].HasField("dim_value") and all(sizes[1:]):
                    itemsize = helper.tensor_dtype_to_np_dtype(self.types[vi.name]).itemsize
                    self.sample_bytes[vi.name] = int(np.prod(sizes[1:])) * itemsize
        # Tensors that do not depend on the data: initializers, weights, and what only they feed.
        self.constant = {t.name for t in graph.initializer} | set(self.input_of.values()) | {""}
        for node in self.nodes:
            if all(i in self.constant for i in node.input):
                self.constant.update(node.output)
        self.producer = {o: k for k, node in enumerate(self.nodes) for o in node.output}
        self.macs = dict(spec.macs)
        self.total_macs = max(sum(self.macs.values()), 1)
        self.weight_bytes = sum(a.nbytes for a in self.dense_weights.values()) + sum(
            int(np.prod(t.dims)) * 4 for t in graph.initializer
        )
        self.init_bytes = {t.name: int(np.prod(t.dims)) * 4 for t in graph.initializer}
        self.plans: dict[str, _Plan | None] = {}
        self.cuts: dict[str, _Cut | None] = {}
        self.captures: dict[tuple[str, ...], object] = {}
        self.lock = threading.Lock()

    def _session(
        self, node_ids: set[int], inputs: list[str], outputs: list[str], fed: set[str]
    ) -> object:
        """A session of the nodes ``node_ids``; weights not in ``fed`` become initializers."""
        helper = self._helper
        nodes = [self.nodes[k] for k in sorted(node_ids)]
        used = {i for node in nodes for i in node.input}
        inits = [t for t in self.proto.graph.initializer if t.name in used]
        inits += [
            self._nph.from_array(a, name)
            for name, a in self.dense_weights.items()
            if name in used and name not in fed
        ]

        def info(name: str) -> object:
            if name in self.dense_weights:
                return helper.make_tensor_value_info(
                    name, self._onnx.TensorProto.FLOAT, self.dense_weights[name].shape
                )
            if name not in self.types:
                raise Unavailable(f"no type known for tensor {name!r}")
            return helper.make_tensor_value_info(name, self.types[name], None)

        graph = helper.make_graph(
            nodes, "part", [info(n) for n in inputs], [info(n) for n in outputs], initializer=inits
        )
        model = helper.make_model(
            graph, opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version
        )
        # No memory arena: an engine keeps a session per unit, and each arena would keep the peak of
        # a
        # whole-test-set run (measured on a residual CNN: two scans 2.1 GB RSS with arenas, 1.1 GB
        # without, at the same speed).
        return ort_session(model.SerializeToString(), self.threads, arena=False)

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

    def plan(self, members: list[str]) -> _Plan | None:
        """The unit's suffix, as nodes (found once); None when its weights do not reach the
        output."""
        key = ",".join(members)
        with self.lock:
            if key not in self.plans:
                self.plans[key] = self._plan(members)
            return self.plans[key]

    def _plan(self, members: list[str]) -> _Plan | None:
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
        downstream_layers = [
            n
            for n in self.layers
            if any(self.input_of[n] in self.nodes[k].input for k in downstream)
        ]
        fraction = sum(self.macs[n] for n in downstream_layers) / self.total_macs
        used = {i for k in nodes for i in self.nodes[k].input}
        size = sum(self.init_bytes.get(i, 0) for i in used) + sum(
            a.nbytes for name, a in self.dense_weights.items() if name in used and name not in fed
        )
        return _Plan(frozenset(nodes), activations, sorted(fed), fraction, size)

    def cut(self, members: list[str]) -> _Cut | None:
        """The unit's suffix as a session (built once, until :meth:`forget`); None when its weights
        do not reach the output."""
        key = ",".join(members)
        plan = self.plan(members)
        with self.lock:
            if key not in self.cuts:
                if plan is None:
                    self.cuts[key] = None
                else:
                    try:
                        suffix = self._session(
                            set(plan.nodes),
                            plan.activations + plan.weights,
                            [OUTPUT_NAME],
                            set(plan.weights),
                        )
                    except Unavailable:
                        raise
                    except Exception as e:
                        raise Unavailable(
                            f"cutting the graph at {members} failed: {type(e).__name__}: {e}"
                        ) from None
                    self.cuts[key] = _Cut(suffix, plan.activations, plan.weights, plan.fraction)
            return self.cuts[key]

    def held_bytes(self) -> int:
        """About how many weight bytes the sessions built so far hold."""
        with self.lock:
            cuts = [
                self.plans[k].bytes
                for k, c in self.cuts.items()
                if c is not None and self.plans.get(k)
            ]
            return sum(cuts) + self.weight_bytes * len(self.captures)

    def capture(self, needed: tuple[str, ...]) -> object:
        """The dense model with the inner tensors ``needed`` as extra outputs (built once)."""
        with self.lock:
            if needed not in self.captures:
                nodes = self._closure({OUTPUT_NAME, *needed}, {INPUT_NAME})
                self.captures[needed] = self._session(
                    nodes, [INPUT_NAME], [OUTPUT_NAME, *needed], set()
                )
            return self.captures[needed]

    def forget(self) -> None:
        """Drop the sessions (each holds its own copy of the weights it runs)."""
        with self.lock:
            self.cuts.clear()
            self.captures.clear()


@dataclass(frozen=True)
class ScanJob:
    """One weight-only scan's points: per unit its members and, per ratio, the pruned weights fed
    to its suffix (``reuse``: the same masks as the ratio before, the same numbers)."""

    members: dict[str, list[str]]
    weights: dict[str, list[dict[str, np.ndarray]]]
    reuse: dict[str, list[bool]]


Terms = tuple[np.ndarray, np.ndarray]  # per sample: correct, loss term


_WORKER_GRAPHS: dict[str, SuffixGraph] = {}  # a Ray worker's graphs, by export (the last few)


def _graph(spec: GraphSpec, threads: int) -> SuffixGraph:
    graph = _WORKER_GRAPHS.get(spec.key)
    if graph is None:
        while len(_WORKER_GRAPHS) >= 2:
            _WORKER_GRAPHS.pop(next(iter(_WORKER_GRAPHS)))
        graph = _WORKER_GRAPHS[spec.key] = SuffixGraph(spec, threads)
    return graph


Piece = tuple[
    int, int, list[str], tuple[str, ...]
]  # samples start:stop, the units, the tensors to capture


def run_chunk(
    graph: SuffixGraph | GraphSpec,
    job: ScanJob,
    data: dict[str, np.ndarray | None],
    piece: Piece,
    on_point: Callable[[str, int], None] | None = None,
) -> dict[str, list[Terms]]:
    """Evaluate ``job``'s points of the units ``piece[2]`` on samples ``piece[0]:piece[1]``: one
    pass of
    the capture (the dense model with the inner tensors ``piece[3]`` as extra outputs), then each
    unit's suffix per ratio. The unit of work of a scan, here or on a Ray worker (given a
    :class:`GraphSpec`, a worker builds the graph once, one thread per task, and keeps its sessions
    while they fit in memory).

    ``data``: ``x``, and ``y`` (labels) or ``reference`` (the dense model's logits).
    Returns, per unit, per ratio: per-sample correctness and loss terms.
    """
    on_worker = isinstance(graph, GraphSpec)
    if isinstance(graph, GraphSpec):
        graph = _graph(graph, threads=1)
    start, stop, units, needed = piece
    x = data["x"][start:stop]
    y = data["y"][start:stop] if data.get("y") is not None else None
    ref = data["reference"][start:stop] if y is None else None
    outs = graph.capture(needed).run(None, {INPUT_NAME: x})
    acts = {INPUT_NAME: x, **dict(zip(needed, outs[1:], strict=False))}
    results: dict[str, list[Terms]] = {}
    for name in units:
        cut = graph.cut(job.members[name])
        assert cut is not None
        feed = {a: acts[a] for a in cut.activations}
        terms: list[Terms] = []
        for j, w in enumerate(job.weights[name]):
            if job.reuse[name][j]:
                terms.append(terms[-1])
            else:
                terms.append(sample_scores(cut.suffix.run(None, {**feed, **w})[0], y, ref))
            if on_point is not None:
                on_point(name, j)
        results[name] = terms
    if on_worker and graph.held_bytes() > _SESSION_BYTES:
        graph.forget()
    return results


class OrtSuffixEngine:
    """Weight-only scans in ONNX Runtime: only the graph downstream of the pruned layer runs.

    The model is exported once with every prunable layer's weight as a graph input. For a unit,
    the suffix is the part of the graph its weights reach, with the tensors it reads from the rest
    as inputs; other layers' weights become constants again, so ONNX Runtime folds and fuses the
    suffix as it would the whole model. A scan runs the dense model once per chunk of data with
    every needed inner tensor as an extra output (the capture), then each unit's suffix once per
    ratio on those tensors (:func:`run_chunk`; on Ray, one task per chunk, or per part of the units
    of a chunk when there are fewer chunks than workers).
    """

    name = "onnxruntime-suffix"

    def __init__(self, subject: Subject) -> None:
        import onnx

        if isinstance(subject.example_input, Inputs):  # the suffix graphs feed one input
            raise Unavailable("the model takes several named inputs")
        self.subject = subject
        self.layers = list(subject.layer_names)
        input_of = {n: f"weight:{n}" for n in self.layers}
        work = copy.deepcopy(subject.model).eval()  # the wrapper turns its weights into inputs
        modules = dict(work.named_modules())
        dense = [modules[n].weight.detach().clone() for n in self.layers]
        buf = io.BytesIO()
        try:
            torchscript_export(
                _WeightsAsInputs(work, self.layers),
                (subject.example_input, *dense),
                buf,
                input_names=[INPUT_NAME, *input_of.values()],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
            onnx.load_model_from_string(buf.getvalue())
        except Exception as e:
            raise Unavailable(
                f"export with weights as inputs failed: {type(e).__name__}: {e}"
            ) from None
        raw = buf.getvalue()
        self.spec = GraphSpec(
            key=hashlib.sha256(raw).hexdigest()[:16],
            proto=raw,
            dense_weights={
                input_of[n]: w.numpy().copy() for n, w in zip(self.layers, dense, strict=False)
            },
            layers=self.layers,
            macs={n: subject.inventory[n].macs for n in self.layers},
        )
        self.graph = SuffixGraph(self.spec)
        self.input_of = input_of
        self.lock = threading.Lock()
        self._dense_logits: np.ndarray | None = None
        self._eval_seconds: float | None = None  # one dense pass over the evaluation data
        try:
            self.graph.capture(())
        except Exception as e:
            raise Unavailable(
                f"ONNX Runtime cannot run the export: {type(e).__name__}: {e}"
            ) from None

    def plan(self, members: list[str]) -> _Plan | None:
        return self.graph.plan(members)

    # evaluation

    def _timed_pass(self, sample: bool) -> None:
        """The dense logits of every sample (timed), or with ``sample`` only the time of one call,
        scaled to the whole evaluation data (the ETA need not score it all)."""
        x = self.subject.data.test.x.numpy()
        session = self.graph.capture(())
        n = samples_per_call(x, CHUNK)
        start = time.perf_counter()
        if sample:
            session.run(None, {INPUT_NAME: x[:n]})
            self._eval_seconds = (time.perf_counter() - start) * len(x) / min(n, len(x))
            return
        logits = np.concatenate(
            [session.run(None, {INPUT_NAME: x[i : i + n]})[0] for i in range(0, len(x), n)]
        )
        self._eval_seconds = time.perf_counter() - start
        self._dense_logits = logits

    @property
    def eval_seconds(self) -> float:
        """Seconds of one dense pass over the evaluation data (measured once)."""
        with self.lock:
            if self._eval_seconds is None:
                self._timed_pass(sample=True)
            assert self._eval_seconds is not None
            return self._eval_seconds

    @property
    def dense_logits(self) -> np.ndarray:
        with self.lock:
            if self._dense_logits is None:
                self._timed_pass(sample=False)
            assert self._dense_logits is not None
            return self._dense_logits

    @property
    def reference(self) -> np.ndarray | None:
        return self.dense_logits if self.subject.data.test.y is None else None

    @property
    def dense(self) -> Result:
        return score_logits(self.dense_logits, self.subject, self.reference)

    def cost(self, members: list[str], n_ratios: int) -> float:
        """Estimated seconds for ``n_ratios`` points of a unit (one evaluation =
        ``eval_seconds``)."""
        plan = self.plan(members)
        if plan is None or not n_ratios:
            return 0.0
        return self.eval_seconds * n_ratios * max(plan.fraction, 0.02)

    def overhead(self) -> float:
        return self.eval_seconds  # the capture pass

    def job(
        self, method: Method, todo: dict[str, list[str]], ratios: dict[str, list[float]]
    ) -> ScanJob:
        """The points of a scan: every unit's pruned weights at each ratio."""
        base, calibration = self.subject.model, self.subject.calibration
        weights: dict[str, list[dict[str, np.ndarray]]] = {}
        reuse: dict[str, list[bool]] = {}
        for name, rs in ratios.items():
            if self.plan(todo[name]) is None:
                continue
            ws = [
                {
                    self.input_of[m]: (
                        pruned_weight(method, base, m, r, calibration=calibration).numpy()
                    )
                    for m in todo[name]
                }
                for r in rs
            ]
            weights[name] = ws
            # A ratio whose masks equal the previous ratio's (N:M, or a count that rounds the
            # same) gives the same logits.
            reuse[name] = [
                j > 0 and all(np.array_equal(ws[j][k], ws[j - 1][k]) for k in ws[j])
                for j in range(len(ws))
            ]
        return ScanJob({n: todo[n] for n in weights}, weights, reuse)

    def groups(self, job: ScanJob) -> list[tuple[list[str], tuple[str, ...]]]:
        """The units in groups whose suffix sessions fit in :data:`_GROUP_BYTES` together (each
        group is one capture pass over the data), with the inner tensors each group's capture
        outputs. Decided by the job alone: Ray runs the very groups the local run does."""
        out: list[tuple[list[str], tuple[str, ...]]] = []
        group: list[str] = []
        size = 0
        for name in job.weights:
            plan = self.plan(job.members[name])
            assert plan is not None
            if group and size + plan.bytes > _GROUP_BYTES:
                out.append((group, self._needed(job, group)))
                group, size = [], 0
            group.append(name)
            size += plan.bytes
        if group:
            out.append((group, self._needed(job, group)))
        return out

    def _needed(self, job: ScanJob, units: list[str]) -> tuple[str, ...]:
        acts = {a for u in units for a in self.plan(job.members[u]).activations}  # type: ignore[union-attr]
        return tuple(sorted(acts - {INPUT_NAME}))

    def chunk_size(self, needed: tuple[str, ...]) -> int:
        """Samples per chunk: the captured tensors of a chunk take at most ``_CAPTURE_BYTES``."""
        x = self.subject.data.test.x.numpy()
        if not needed:
            return samples_per_call(x, CHUNK)
        known = self.graph.sample_bytes
        if all(name in known for name in needed):
            # From the shapes: running a capture would build its session (a copy of the weights)
            # for every group before the first point (a ResNet-50's scan held 2.8 GB of them).
            per_sample = sum(known[name] for name in needed)
        else:
            per_sample = sum(
                a.nbytes for a in self.graph.capture(needed).run(list(needed), {INPUT_NAME: x[:1]})
            )
        return int(min(samples_per_call(x, CHUNK), max(8, _CAPTURE_BYTES // max(per_sample, 1))))

    def run(
        self,
        method: Method,
        todo: dict[str, list[str]],
        ratios: dict[str, list[float]],
        on_progress: Progress,
        round_to: int | None = None,
        executor: Executor | None = None,
    ) -> Iterator[tuple[str, float, Result]]:
        """Yield ``(unit, ratio, result)`` for every unit of ``todo`` at its ``ratios``."""
        executor = executor or LocalExecutor()
        job = self.job(method, todo, ratios)
        n = len(self.subject.data.test)
        pieces: list[Piece] = []
        for units, needed in self.groups(job):
            chunk = self.chunk_size(needed)
            # Ray: at least two tasks per worker; several tasks of one chunk split its units (each
            # repeats the chunk's capture: the same graph, the same numbers).
            starts = list(range(0, n, chunk))
            parts = (
                1
                if executor.workers == 1
                else max(1, min(len(units), -(-2 * executor.workers // len(starts))))
            )
            pieces += [
                (i, min(i + chunk, n), units[p::parts], needed)
                for i in starts
                for p in range(parts)
            ]
        pieces = [p for p in pieces if p[2]]
        total = sum(len(job.weights[u]) * (p[1] - p[0]) for p in pieces for u in p[2]) or 1
        done = 0
        terms: dict[str, list[list[Terms]]] = {u: [[] for _ in job.weights[u]] for u in job.weights}
        by_piece: dict[int, dict[str, list[Terms]]] = {}
        data = {
            "x": self.subject.data.test.x.numpy(),
            "y": self.subject.data.test.y.numpy() if self.subject.data.test.y is not None else None,
            "reference": self.reference,
        }

        def point_done(size: int) -> Callable[[str, int], None]:
            def note(name: str, j: int) -> None:
                nonlocal done
                done += size
                on_progress(done / total, f"{name} @ {ratios[name][j]:.2f}")

            return note

        if isinstance(executor, LocalExecutor):
            for k, piece in enumerate(pieces):
                if k and piece[3] != pieces[k - 1][3]:  # a new group: free the last one's sessions
                    self.graph.forget()
                by_piece[k] = run_chunk(
                    self.graph, job, data, piece, point_done(piece[1] - piece[0])
                )
        else:

            def arrived(k: int, result: dict[str, list[Terms]]) -> None:
                nonlocal done
                by_piece[k] = result
                done += sum(
                    len(job.weights[u]) * (pieces[k][1] - pieces[k][0]) for u in pieces[k][2]
                )
                on_progress(
                    done / total,
                    f"{len(by_piece)} of {len(pieces)} tasks on {executor.workers} workers",
                )

            executor.map(
                run_chunk,
                (executor.put(self.spec), executor.put(job), executor.put(data)),
                pieces,
                arrived,
            )
        for k in range(len(pieces)):  # in data order, whatever order the tasks finished in
            for name, per_ratio in by_piece[k].items():
                for j, t in enumerate(per_ratio):
                    terms[name][j].append(t)
        with self.lock:
            # Each session holds its own copy of the weights it runs: keep them for the next scan
            # (the app scans unit by unit) unless that adds up to too much memory.
            if self.graph.held_bytes() > _SESSION_BYTES:
                self.graph.forget()
        labelled = self.subject.data.test.y is not None
        for name, rs in ratios.items():
            for j, r in enumerate(rs):
                if name not in terms:  # the unit does not influence the output
                    yield name, r, self.dense
                else:
                    yield name, r, reduce_terms(terms[name][j], labelled)
