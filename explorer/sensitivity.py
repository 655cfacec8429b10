"""Per-layer / per-group sensitivity: accuracy and loss when only one unit is pruned, fast and cached.

A unit is one layer for unstructured and N:M methods, and one dependency group for structured
methods (named by its first member): pruning one member alone would also remove the coupled
channels of the others, and a layer whose pruning alone changes nothing must not look robust.

Three tiers, from instant to exact:

- :func:`proxy`: data-free; the fraction of a unit's weight magnitude that each ratio removes
  (Sparsify's idea), computed with the very masks pruning would apply.
- :func:`estimate`: the time a scan will take (one evaluation timed, multiplied by the work left),
  and how many points the cache already holds.
- :func:`scan`: the measured curves, each point a full evaluation on the evaluation data. Weight-only
  methods (unstructured, N:M) run in ONNX Runtime on the part of the graph downstream of the
  pruned layer, fed with the inner tensors one dense pass captured and the masked weight as a
  graph input; no copy of the model per point. ONNX Runtime rounds differently from PyTorch: a
  point may differ from the PyTorch loop by one sample, rarely. Structured methods reuse one
  DepGraph (copied with the model) and evaluate the really shrunk model in PyTorch. Points are
  cached on disk per (model, data, method).

:func:`reference_scan` is Distiller's loop (for each unit and ratio: a fresh copy, prune, evaluate
everything): the oracle the fast scan is tested against. :func:`latency_curves` measures ONNX
Runtime latency of the model with one group pruned, per ratio.

The cache lives in ``$PRUNING_EXPLORER_CACHE`` (default ``~/.cache/pruning-explorer``), as CSV
tables with a JSON note of their key; nothing is pickled.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import platform
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch_pruning as tp
from torch import nn

from explorer.errors import PlanError, PruneError
from explorer.evaluate import evaluate_torch, scores
from explorer.inspect import build_dependency_graph, structured_groups
from explorer.plan import LayerRule, PruningPlan, check_ratio
from explorer.progress import Progress, no_progress
from explorer.prune import (
    PruneMethod,
    _generator,
    get_method,
    kept_channels,
    nm_mask,
    unstructured_mask,
)
from explorer.runtime import (
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    LatencyStats,
    OrtModel,
    export_onnx,
    measure_latency,
)
from explorer.subject import Subject

__all__ = [
    "CACHE_ENV",
    "COLUMNS",
    "DEFAULT_RATIOS",
    "LATENCY_COLUMNS",
    "PROXY_COLUMNS",
    "Estimate",
    "cache_dir",
    "clear_cache",
    "estimate",
    "kept_channels",
    "latency_curves",
    "masked_weight",
    "model_hash",
    "proxy",
    "reference_scan",
    "scan",
    "units",
]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COLUMNS = ["layer", "ratio", "accuracy", "loss", "members"]
PROXY_COLUMNS = ["layer", "ratio", "magnitude_removed", "members"]
LATENCY_COLUMNS = ["layer", "ratio", "channels_kept", "latency_ms_median", "latency_ms_p90",
                   "latency_ms_spread", "members"]
CACHE_ENV = "PRUNING_EXPLORER_CACHE"
_SCAN_VERSION = 1  # bump when the numbers a scan produces change: old cache files are then ignored
_CHUNK = 512  # samples per ONNX Runtime call
# At most this much of captured inner tensors at a time. Measured on a residual CNN (3 ratios): a
# scan's peak RSS +747 MB at 256 MB, +356 MB at 64 MB, for 20 % more CPU time.
_CAPTURE_BYTES = 64 * 2**20
_SESSION_BYTES = 1024 * 2**20  # ONNX Runtime sessions kept between scans hold at most about this


# --- units -----------------------------------------------------------------------------------------


def units(subject: Subject, method: str) -> dict[str, list[str]]:
    """What a scan prunes at a time: every layer, or every dependency group for structured methods."""
    if get_method(method).structured:
        if subject.inventory.structured_error:
            raise PlanError(f"{method}: {subject.inventory.structured_error}")
        return {gid: list(members) for gid, members in subject.inventory.groups.items()}
    return {name: [name] for name in subject.layer_names}


def _select(subject: Subject, method: str, layers: Sequence[str] | None) -> dict[str, list[str]]:
    todo = units(subject, method)
    if layers is None:
        return todo
    missing = [n for n in layers if n not in todo]
    if missing:
        kind = "group" if get_method(method).structured else "layer"
        raise PlanError(f"unknown {kind}(s) {missing} for {method}; choose from {list(todo)}")
    return {n: todo[n] for n in layers}


def _ratios(ratios: Sequence[float]) -> list[float]:
    return sorted({check_ratio(r, "sensitivity ratio") for r in ratios} - {0.0})


def _check_round_to(method: PruneMethod, round_to: int | None) -> int | None:
    if round_to is None or round_to == 1:
        return None
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise PlanError(f"round_to must be a positive integer, got {round_to!r}")
    if not method.structured:
        raise PlanError(f"round_to rounds kept channel counts; {method.name} removes no channels")
    return round_to


# --- masks -----------------------------------------------------------------------------------------


def masked_weight(method: str | PruneMethod, layer: str, weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """The weight an unstructured or N:M plan with ``{layer: ratio}`` leaves (a new tensor).

    Same masks as :func:`explorer.prune.apply_plan` (same scores, same seeded generator).
    """
    m = get_method(method) if isinstance(method, str) else method
    if m.structured:
        raise PlanError(f"{m.name} removes channels; it has no weight mask")
    if ratio == 0:
        return weight.detach().clone()
    if m.kind == "semi-structured":
        return weight * nm_mask(weight)
    assert m.score is not None
    return weight * unstructured_mask(m.score(weight, _generator(layer)), ratio)


# --- cache -----------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where curves are cached: ``$PRUNING_EXPLORER_CACHE`` or ``~/.cache/pruning-explorer``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pruning-explorer")


_HASHES: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def model_hash(model: nn.Module) -> str:
    """A short hash of the model's architecture (its repr) and every tensor of its state dict.

    Memoised per model object: the base model of a Subject is never modified.
    """
    if model in _HASHES:
        return _HASHES[model]
    h = hashlib.sha256(repr(model).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.hexdigest()[:16]
    _HASHES[model] = digest
    return digest


class _PointCache:
    """One CSV of points (unit, ratio -> values) per key; merged on save, replaced atomically."""

    def __init__(self, kind: str, subject: Subject, method: str, columns: list[str], **extra: object) -> None:
        self.key = {
            "kind": kind, "version": _SCAN_VERSION, "model": model_hash(subject.model),
            "data": subject.data.fingerprint(), "method": method, **extra,
        }
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        self.path = cache_dir() / "sensitivity" / f"{kind}-{digest}.csv"
        self.columns = columns

    @staticmethod
    def _rkey(ratio: float) -> float:
        return round(float(ratio), 6)

    def load(self) -> dict[tuple[str, float], dict]:
        try:
            df = pd.read_csv(self.path, dtype={"layer": str, "members": str}, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError):
            return {}
        if list(df.columns) != self.columns:
            return {}
        return {(r["layer"], self._rkey(r["ratio"])): r for r in df.to_dict(orient="records")}

    def save(self, points: dict[tuple[str, float], dict]) -> None:
        """Merge ``points`` into the file. Failing to write a cache is not an error."""
        merged = self.load()
        merged.update(points)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                pd.DataFrame(list(merged.values()), columns=self.columns).to_csv(f, index=False)
            os.replace(tmp, self.path)
            self.path.with_suffix(".json").write_text(json.dumps(self.key, indent=2) + "\n")
        except OSError:
            pass


def clear_cache() -> int:
    """Delete every cached curve; returns how many files were removed."""
    folder = cache_dir() / "sensitivity"
    removed = 0
    for path in folder.glob("*") if folder.is_dir() else []:
        if path.suffix in (".csv", ".json", ".tmp"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# --- engines ---------------------------------------------------------------------------------------


class _Unavailable(Exception):
    """The fast engine cannot handle this model; the caller falls back to the torch engine."""


@dataclass
class _Result:
    accuracy: float
    loss: float


def _scores(logits: np.ndarray, subject: Subject, reference: np.ndarray | None) -> _Result:
    y = subject.data.test.y.numpy() if subject.data.test.y is not None else None
    return _Result(*scores(logits, y, reference))


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


def _ort_session(model_bytes: bytes) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # No memory arena: an engine keeps a session per unit, and each arena would keep the peak of a
    # whole-test-set run (measured on a residual CNN: two scans 2.1 GB RSS with arenas, 1.1 GB
    # without, at the same speed).
    opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


@dataclass
class _Cut:
    """The part of the graph a unit's weights influence, as a session of its own."""

    suffix: object  # inputs: ``activations`` then ``weights``; output: the logits
    activations: list[str]  # data-dependent inputs (the model input and/or inner tensors)
    weights: list[str]  # the unit's weight inputs
    fraction: float  # share of the model's MACs the suffix runs


class _OrtEngine:
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
        # nn.TransformerEncoderLayer's inference fast path is one fused op that exporters refuse.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.backends.mha.set_fastpath_enabled(False)
                torch.onnx.export(
                    _WeightsAsInputs(work, self.layers), (subject.example_input, *dense), buf, dynamo=False,
                    opset_version=OPSET, input_names=[INPUT_NAME, *self.input_of.values()],
                    output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )
            proto = onnx.load_model_from_string(buf.getvalue())
            inferred = shape_inference.infer_shapes(proto)
        except Exception as e:
            raise _Unavailable(f"export with weights as inputs failed: {type(e).__name__}: {e}") from None
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        graph = proto.graph
        if len(graph.output) != 1 or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                         for node in graph.node for a in node.attribute):
            raise _Unavailable("the exported graph has several outputs or control flow")
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
            raise _Unavailable(f"ONNX Runtime cannot run the export: {type(e).__name__}: {e}") from None

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
                raise _Unavailable(f"no type known for tensor {name!r}")
            return helper.make_tensor_value_info(name, self.types[name], None)

        graph = helper.make_graph(nodes, "part", [info(n) for n in inputs], [info(n) for n in outputs],
                                  initializer=inits)
        model = helper.make_model(graph, opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version)
        return _ort_session(model.SerializeToString())

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
                except _Unavailable:
                    raise
                except Exception as e:
                    raise _Unavailable(f"cutting the graph at {members} failed: {type(e).__name__}: {e}") from None
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
        logits = np.concatenate([session.run(None, {INPUT_NAME: x[i : i + _CHUNK]})[0] for i in range(0, len(x), _CHUNK)])
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
    def dense(self) -> _Result:
        return _scores(self.dense_logits, self.subject, self.reference)

    def cost(self, members: list[str], n_ratios: int) -> float:
        """Estimated seconds for ``n_ratios`` points of a unit (one evaluation = ``eval_seconds``)."""
        cut = self.cut(members)
        if cut is None or not n_ratios:
            return 0.0
        return self.eval_seconds * n_ratios * max(cut.fraction, 0.02)

    def overhead(self) -> float:
        return self.eval_seconds  # the capture pass

    def run(self, method: PruneMethod, todo: dict[str, list[str]], ratios: dict[str, list[float]],
            on_progress: Progress, round_to: int | None = None) -> Iterator[tuple[str, float, _Result]]:
        """Yield ``(unit, ratio, result)`` for every unit of ``todo`` at its ``ratios``."""
        cuts = {name: self.cut(todo[name]) for name in ratios}
        modules = dict(self.subject.model.named_modules())
        weights: dict[str, list[dict[str, np.ndarray]]] = {}
        reuse: dict[str, list[bool]] = {}
        for name, rs in ratios.items():
            if cuts[name] is None:
                continue
            ws = [{self.input_of[m]: masked_weight(method, m, modules[m].weight, r).numpy() for m in todo[name]}
                  for r in rs]
            weights[name] = ws
            # A ratio whose masks equal the previous ratio's (N:M, or a count that rounds the
            # same) gives the same logits.
            reuse[name] = [j > 0 and all(np.array_equal(ws[j][k], ws[j - 1][k]) for k in ws[j]) for j in range(len(ws))]
        needed = tuple(sorted({a for c in cuts.values() if c for a in c.activations} - {INPUT_NAME}))
        capture = self._capture(needed)
        x = self.subject.data.test.x.numpy()
        chunk = _CHUNK
        if needed:  # bound the memory the captured tensors take
            per_sample = sum(a.nbytes for a in capture.run(list(needed), {INPUT_NAME: x[:1]}))
            chunk = int(min(_CHUNK, max(8, _CAPTURE_BYTES // max(per_sample, 1))))
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
                    yield name, r, _scores(np.concatenate(logits[name][j]), self.subject, self.reference)


class _TorchEngine:
    """Weight-only scans in PyTorch on one working copy: swap the weight in place, evaluate, restore.

    The fallback for models ONNX Runtime cannot run cut in two; every point is a full evaluation,
    but no copy of the model is made per point.
    """

    name = "torch-swap"

    def __init__(self, subject: Subject) -> None:
        self.subject = subject
        self.work = copy.deepcopy(subject.model).eval()
        self.modules = dict(self.work.named_modules())
        self.lock = threading.Lock()
        split = subject.data.test
        start = time.perf_counter()
        with torch.no_grad():
            self.dense_logits = np.concatenate([self.work(split.x[i : i + _CHUNK]).numpy()
                                                for i in range(0, len(split), _CHUNK)])
        self.eval_seconds = time.perf_counter() - start
        self.reference = self.dense_logits if split.y is None else None
        self.dense = _scores(self.dense_logits, subject, self.reference)

    def cost(self, members: list[str], n_ratios: int) -> float:
        return self.eval_seconds * n_ratios

    def overhead(self) -> float:
        return 0.0

    def run(self, method: PruneMethod, todo: dict[str, list[str]], ratios: dict[str, list[float]],
            on_progress: Progress, round_to: int | None = None) -> Iterator[tuple[str, float, _Result]]:
        base = dict(self.subject.model.named_modules())
        total, done = sum(len(rs) for rs in ratios.values()) or 1, 0
        for name, rs in ratios.items():
            members = todo[name]
            for ratio in rs:
                with self.lock, torch.no_grad():
                    for m in members:
                        self.modules[m].weight.copy_(masked_weight(method, m, base[m].weight, ratio))
                    try:
                        result = _Result(*evaluate_torch(self.work, self.subject.data.test, self.reference))
                    finally:
                        for m in members:
                            self.modules[m].weight.copy_(base[m].weight)
                done += 1
                on_progress(done / total, f"{name} @ {ratio:.2f}")
                yield name, ratio, result


class _StructuredEngine:
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
        self._importance: dict[tuple[str, int], torch.Tensor] = {}
        self.lock = threading.Lock()
        split = subject.data.test
        with torch.no_grad():
            logits = np.concatenate([subject.model(split.x[i : i + _CHUNK]).numpy() for i in range(0, len(split), _CHUNK)])
        start = time.perf_counter()
        pruned = self.pruned(next(iter(self.groups)), 0.5, None, 1) if self.groups else copy.deepcopy(subject.model)
        self.copy_seconds = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_torch(pruned, split, logits)
        self.eval_seconds = time.perf_counter() - start
        self.reference = logits if split.y is None else None
        self.dense = _scores(logits, subject, self.reference)

    def channels(self, gid: str) -> int:
        return len(self.groups[gid][0].idxs)

    def importance(self, gid: str, p: int) -> torch.Tensor:
        with self.lock:
            if (gid, p) not in self._importance:
                with torch.no_grad():
                    self._importance[(gid, p)] = tp.importance.GroupMagnitudeImportance(p=p)(self.groups[gid])
            return self._importance[(gid, p)]

    def pruned(self, gid: str, ratio: float, round_to: int | None, p: int) -> nn.Module:
        """A copy of the model with group ``gid`` pruned at ``ratio`` (the base model is untouched)."""
        group = self.groups[gid]
        n = len(group[0].idxs)
        n_prune = n - kept_channels(n, ratio, round_to)
        if n_prune <= 0:
            return copy.deepcopy(self.subject.model).eval()
        idxs = sorted(self.importance(gid, p).argsort()[:n_prune].tolist())
        # Share what is not the model's state: autograd nodes (cannot be copied) and Torch-Pruning's
        # pruner singletons (its code compares handlers with them by identity).
        memo: dict[int, object] = {id(self.dg.ops): self.dg.ops}
        for node in self.dg.module2node.values():
            memo[id(node.grad_fn)] = node.grad_fn
        for pruner in [*self.dg.REGISTERED_PRUNERS.values(), *self.dg.CUSTOMIZED_PRUNERS.values()]:
            memo[id(pruner)] = pruner
        with self.lock:
            model, dg, root = copy.deepcopy((self.work, self.dg, group[0].dep), memo)
        try:
            dg.get_pruning_group(root.target.module, root.handler, idxs).prune()
        except Exception as e:
            raise PruneError(f"removing channels of group {gid!r} failed: {type(e).__name__}: {e}") from None
        model.requires_grad_(False)
        return model.eval()

    def cost(self, members: list[str], n_ratios: int) -> float:
        return (self.eval_seconds + self.copy_seconds) * n_ratios

    def overhead(self) -> float:
        return 0.0

    def run(self, method: PruneMethod, todo: dict[str, list[str]], ratios: dict[str, list[float]],
            on_progress: Progress, round_to: int | None = None) -> Iterator[tuple[str, float, _Result]]:
        assert method.norm_p is not None
        total, done = sum(len(rs) for rs in ratios.values()) or 1, 0
        for gid, rs in ratios.items():
            for ratio in rs:
                model = self.pruned(gid, ratio, round_to, method.norm_p)
                result = _Result(*evaluate_torch(model, self.subject.data.test, self.reference))
                done += 1
                on_progress(done / total, f"{gid} @ {ratio:.2f}")
                yield gid, ratio, result


_Engine = _OrtEngine | _TorchEngine | _StructuredEngine
_ENGINES: weakref.WeakKeyDictionary[Subject, dict[str, _Engine]] = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def _engine(subject: Subject, method: PruneMethod, engine: str = "auto") -> _Engine:
    """The engine for ``method`` on ``subject``, built once per subject and kept while it lives."""
    kind = "structured" if method.structured else engine
    with _ENGINES_LOCK:
        cache = _ENGINES.setdefault(subject, {})
        if kind in cache:
            return cache[kind]
    if method.structured:
        if subject.inventory.structured_error:
            raise PlanError(f"{method.name}: {subject.inventory.structured_error}")
        built: _Engine = _StructuredEngine(subject)
    elif engine == "torch":
        built = _TorchEngine(subject)
    elif engine in ("auto", "onnxruntime"):
        try:
            built = _OrtEngine(subject)
        except _Unavailable:
            if engine == "onnxruntime":
                raise
            built = _engine(subject, method, "torch")
    else:
        raise ValueError(f"unknown engine {engine!r}")
    with _ENGINES_LOCK:
        _ENGINES[subject][kind] = built
    return built


def release(subject: Subject) -> None:
    """Drop the engines built for ``subject`` (sessions per unit, captured activations: hundreds
    of MB on a CNN). A later scan builds them again; points already scanned come from the cache."""
    with _ENGINES_LOCK:
        _ENGINES.pop(subject, None)


# --- the scan --------------------------------------------------------------------------------------


def _scan_cache(subject: Subject, method: str, round_to: int | None) -> _PointCache:
    extra: dict[str, object] = {"round_to": round_to} if round_to else {}
    return _PointCache("scan", subject, method, COLUMNS, **extra)


def scan(subject: Subject, method: str = "l1-unstructured", ratios: Sequence[float] = DEFAULT_RATIOS,
         layers: Sequence[str] | None = None, on_progress: Progress = no_progress, *,
         round_to: int | None = None, cache: bool = True, engine: str = "auto") -> pd.DataFrame:
    """Evaluate the model with one unit pruned at a time, at each ratio (ratio 0: the dense model).

    Args:
        layers: units to scan (layer names, or group ids for structured methods); all when None.
        round_to: structured methods only: kept channel counts rounded up to a multiple of it.
        cache: read and write the on-disk cache (side effect: files under :func:`cache_dir`).
        engine: ``"auto"`` (ONNX Runtime suffix engine, PyTorch when the model cannot be cut),
            ``"onnxruntime"``, ``"torch"``; structured methods always use the DepGraph engine.

    Returns a DataFrame with columns ``layer, ratio, accuracy, loss, members``: for every unit a
    ratio-0 row (the dense model) then one row per ratio in increasing order.

    Raises:
        PlanError: a bad ratio, an unknown unit, or a structured method on an untraceable model.
        UnknownMethodError: ``method`` is not registered.
    """
    m = get_method(method)
    ratios = _ratios(ratios)
    round_to = _check_round_to(m, round_to)
    todo = _select(subject, method, layers)
    store = _scan_cache(subject, method, round_to) if cache else None
    known = store.load() if store is not None else {}
    rk = _PointCache._rkey
    missing = {name: [r for r in [0.0, *ratios] if (name, rk(r)) not in known] for name in todo}
    missing = {name: rs for name, rs in missing.items() if rs}
    fresh: dict[tuple[str, float], dict] = {}
    if missing:
        eng = _engine(subject, m, engine)
        total = sum(len(rs) for rs in missing.values())
        start = time.perf_counter()
        on_progress(0.0, f"{method}: {total} points with the {eng.name} engine")

        def progress(fraction: float, message: str) -> None:
            left = (time.perf_counter() - start) * (1 - fraction) / max(fraction, 1e-9)
            on_progress(min(fraction, 1.0) * 0.999, f"{message} (~{left:.0f} s left)")

        pruned = {name: [r for r in rs if r > 0] for name, rs in missing.items()}
        for name, ratio, result in eng.run(m, todo, {n: rs for n, rs in pruned.items() if rs}, progress, round_to):
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


def _row(name: str, ratio: float, result: _Result, members: str) -> dict:
    return {"layer": name, "ratio": ratio, "accuracy": result.accuracy, "loss": result.loss, "members": members}


def reference_scan(subject: Subject, method: str = "l1-unstructured", ratios: Sequence[float] = DEFAULT_RATIOS,
                   layers: Sequence[str] | None = None, on_progress: Progress = no_progress, *,
                   round_to: int | None = None) -> pd.DataFrame:
    """Distiller's loop, the oracle of :func:`scan`: for each unit and ratio, a fresh pruned copy of
    the model (``Subject.prune``) evaluated in PyTorch on the whole evaluation data. No cache.

    Same columns and row order as :func:`scan`.
    """
    from explorer.prune import apply_plan

    m = get_method(method)
    ratios = _ratios(ratios)
    round_to = _check_round_to(m, round_to)
    todo = _select(subject, method, layers)
    split = subject.data.test
    with torch.no_grad():
        dense_logits = np.concatenate([subject.model(split.x[i : i + 512]).numpy() for i in range(0, len(split), 512)])
    reference = dense_logits if split.y is None else None
    dense_acc, dense_loss = evaluate_torch(subject.model, split, reference)
    rows = []
    total, done, start = len(todo) * len(ratios), 0, time.perf_counter()
    for name, members in todo.items():
        rows.append((name, 0.0, dense_acc, dense_loss, ",".join(members)))
        for ratio in ratios:
            plan = PruningPlan(method=method, layers={n: LayerRule(ratio) for n in members})
            if round_to:
                pruned = apply_plan(subject.model, plan, subject.example_input, subject.inventory, round_to=round_to)
            else:
                pruned = subject.prune(plan)
            acc, loss = evaluate_torch(pruned, split, reference)
            rows.append((name, ratio, acc, loss, ",".join(members)))
            done += 1
            elapsed = time.perf_counter() - start
            on_progress(done / total, f"{name} @ {ratio:.2f} ({done}/{total}, ~{elapsed / done * (total - done):.0f} s left)")
    return pd.DataFrame(rows, columns=COLUMNS)


# --- the data-free proxy ---------------------------------------------------------------------------


def proxy(subject: Subject, method: str = "l1-unstructured", ratios: Sequence[float] = DEFAULT_RATIOS,
          layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Data-free sensitivity: the fraction of a unit's weight magnitude each ratio removes.

    Unstructured and N:M: the L1 mass of the weights the mask zeroes, over the layer's L1 mass.
    Structured: the group importance (the method's channel norm, summed over coupled layers) of
    the channels removed, over the group's total. 0 at ratio 0; no data is read.

    Returns a DataFrame with columns ``layer, ratio, magnitude_removed, members``.
    """
    m = get_method(method)
    ratios = _ratios(ratios)
    todo = _select(subject, method, layers)
    rows = []
    if m.structured:
        eng = _engine(subject, m)
        assert isinstance(eng, _StructuredEngine) and m.norm_p is not None
        for gid, members in todo.items():
            imp = eng.importance(gid, m.norm_p).double()
            order = imp.sort().values
            total = float(order.sum()) or 1.0
            rows.append((gid, 0.0, 0.0, ",".join(members)))
            for r in ratios:
                n_prune = len(order) - kept_channels(len(order), r)
                rows.append((gid, r, float(order[:n_prune].sum()) / total, ",".join(members)))
        return pd.DataFrame(rows, columns=PROXY_COLUMNS)
    modules = dict(subject.model.named_modules())
    for name, members in todo.items():
        w = modules[name].weight.detach()
        total = float(w.abs().double().sum()) or 1.0
        rows.append((name, 0.0, 0.0, name))
        for r in ratios:
            kept = masked_weight(m, name, w, r)
            rows.append((name, r, 1.0 - float(kept.abs().double().sum()) / total, name))
    return pd.DataFrame(rows, columns=PROXY_COLUMNS)


# --- ETA -------------------------------------------------------------------------------------------


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


def estimate(subject: Subject, method: str = "l1-unstructured", ratios: Sequence[float] = DEFAULT_RATIOS,
             layers: Sequence[str] | None = None, *, round_to: int | None = None, cache: bool = True,
             engine: str = "auto") -> Estimate:
    """Estimate :func:`scan`'s run time: one evaluation is timed (building the engine, which the
    scan then reuses), and multiplied by the share of the model each point runs."""
    m = get_method(method)
    ratios = _ratios(ratios)
    round_to = _check_round_to(m, round_to)
    todo = _select(subject, method, layers)
    known = _scan_cache(subject, method, round_to).load() if cache else {}
    rk = _PointCache._rkey
    missing = {n: [r for r in ratios if (n, rk(r)) not in known] for n in todo}
    n_missing = sum(len(v) for v in missing.values())
    cached = len(todo) * len(ratios) - n_missing
    if not n_missing:
        return Estimate(0, cached, 0.0, 0.0, "cache")
    eng = _engine(subject, m, engine)
    seconds = eng.overhead() + sum(eng.cost(todo[n], len(rs)) for n, rs in missing.items() if rs)
    return Estimate(n_missing, cached, seconds, eng.eval_seconds, eng.name)


# --- latency curves --------------------------------------------------------------------------------


def latency_curves(subject: Subject, method: str = "l1-structured", ratios: Sequence[float] = DEFAULT_RATIOS,
                   layers: Sequence[str] | None = None, on_progress: Progress = no_progress, *,
                   round_to: int | None = None, cache: bool = True) -> pd.DataFrame:
    """Measured ONNX Runtime latency of the model with only one group pruned, per ratio.

    Each point exports the really shrunk model and times it (``subject.threads`` intra-op threads,
    ``subject.runs`` timed runs after warm-up; median, p90 and run-to-run spread). The ratio-0 row
    of every group is the dense model, timed once per call. ``round_to`` rounds kept channel counts
    up to a multiple of it (the staircase of channel alignment is then flat between multiples).

    Returns a DataFrame with columns ``layer, ratio, channels_kept, latency_ms_median,
    latency_ms_p90, latency_ms_spread, members``.

    Raises:
        PlanError: a method that removes no channels (zeros do not change dense latency), or an
            unknown group.
    """
    m = get_method(method)
    if not m.structured:
        raise PlanError(f"latency curves need a structured method: {method} only zeroes weights, which does not "
                        "change dense ONNX Runtime latency")
    ratios = _ratios(ratios)
    round_to = _check_round_to(m, round_to)
    todo = _select(subject, method, layers)
    eng = _engine(subject, m)
    assert isinstance(eng, _StructuredEngine) and m.norm_p is not None
    store = None
    if cache:
        store = _PointCache("latency", subject, method, LATENCY_COLUMNS, round_to=round_to, threads=subject.threads,
                            runs=subject.runs, machine=f"{platform.machine()}/{os.cpu_count()}/{platform.node()}")
    known = store.load() if store is not None else {}
    rk = _PointCache._rkey
    x = subject.example_input
    missing = [(g, r) for g in todo for r in [0.0, *ratios] if (g, rk(r)) not in known]
    fresh: dict[tuple[str, float], dict] = {}
    dense_stats = None
    with tempfile.TemporaryDirectory(prefix="explorer-latency-") as tmp:
        for done, (gid, ratio) in enumerate(missing, start=1):
            n = eng.channels(gid)
            if ratio == 0.0:
                if dense_stats is None:
                    dense_stats = _time_model(subject.model, x, Path(tmp) / "dense.onnx", subject)
                stats, kept = dense_stats, n
            else:
                kept = kept_channels(n, ratio, round_to)
                stats = _time_model(eng.pruned(gid, ratio, round_to, m.norm_p), x, Path(tmp) / "pruned.onnx", subject)
            fresh[(gid, rk(ratio))] = {
                "layer": gid, "ratio": ratio, "channels_kept": kept, "latency_ms_median": stats.median_ms,
                "latency_ms_p90": stats.p90_ms, "latency_ms_spread": stats.spread_ms, "members": ",".join(todo[gid]),
            }
            on_progress(done / len(missing), f"{gid} @ {ratio:.2f}: {stats.median_ms:.3f} ms ({done}/{len(missing)})")
    if store is not None and fresh:
        store.save(fresh)
    on_progress(1.0, "done")
    known.update(fresh)
    out = pd.DataFrame([known[(g, rk(r))] for g in todo for r in [0.0, *ratios]], columns=LATENCY_COLUMNS)
    out["ratio"] = [0.0, *ratios] * len(todo)
    return out


def _time_model(model: nn.Module, x: torch.Tensor, path: Path, subject: Subject) -> LatencyStats:
    export_onnx(model, x, path)
    return measure_latency(OrtModel(path, threads=subject.threads), x.numpy(), runs=subject.runs)
