"""The one place that exports to ONNX, builds ONNX Runtime sessions and times them.

Sessions follow the house rule: CPU provider, a fixed ``intra_op_num_threads``, one inter-op
thread, sequential execution. Latency: warm-up, at least 30 timed runs, median and p90.

A speedup is never the ratio of two latencies measured at different moments (on a busy machine
that gives fake ratios): :func:`measure_speedup` times the dense and the pruned session
alternately in one window, ``rounds`` rounds (at least 5) of a few runs each, the two back to back
in every round and their order alternating from round to round. The speedup is the median of the
per-round ratios (dense / pruned), its spread the lowest and highest per-round ratio, and it is
"within noise" when that spread covers 1.0 (:class:`RoundRatios`).
"""

from __future__ import annotations

import gzip
import io
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from explorer.capabilities import ort_ops
from explorer.errors import ExportError
from explorer.inputs import Inputs, export_args

__all__ = [
    "DEFAULT_ROUNDS",
    "MIN_ROUNDS",
    "LatencyStats",
    "OrtModel",
    "RoundRatios",
    "Speedup",
    "Timeable",
    "export_onnx",
    "gzip_size",
    "measure_latency",
    "measure_speedup",
    "ort_session",
    "time_interleaved",
    "torchscript_export",
]

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"
MIN_RUNS = 30
MIN_ROUNDS = 5  # DESIGN.md rule 7: a speedup is measured in at least 5 alternating rounds
DEFAULT_ROUNDS = (
    7  # odd: the median is one round's ratio; all 7 on one side of 1.0 by chance: 1.6 %
)
MIN_ROUND_RUNS = 10  # timed runs of each session per round (its median is that round's latency)


def ort_session(
    model: str | Path | bytes, threads: int = 1, *, optimize: bool = True, arena: bool = True
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a file or a serialized model, with ``threads`` intra-op
    threads.

    ``optimize=False`` turns every graph optimisation off (no fusion). ``arena=False`` turns the CPU
    memory arena off (the session then gives back what a run allocated instead of keeping its
    peak). Raises what ONNX Runtime raises; callers say which file it was.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = arena
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def torchscript_export(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    f: str | Path | io.BytesIO,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    kwargs: dict[str, torch.Tensor] | None = None,
) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (tens of milliseconds on small models) at
    our opset, warnings silenced. nn.TransformerEncoderLayer's inference fast path is one fused op
    that no exporter handles: it is off during the export. Raises what the exporter raises."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.backends.mha.set_fastpath_enabled(False)
            torch.onnx.export(
                model,
                args,
                f if isinstance(f, io.BytesIO) else str(f),
                kwargs=kwargs or None,
                dynamo=False,
                opset_version=OPSET,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
            )
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def export_onnx(model: nn.Module, example_input: torch.Tensor | Inputs, path: str | Path) -> Path:
    """Export ``model`` to a single ONNX file with a dynamic batch dimension.

    One input is named ``input``; several named ``Inputs`` keep their names (``input_ids``...), so
    the file is fed by name.

    Uses the TorchScript exporter (tens of milliseconds on small models, which keeps the app live);
    falls back to the dynamo exporter for models it cannot handle. An ONNX file loaded with ops
    that run in ONNX Runtime (``OnnxModule.ort_ops``) is written back as the user's own graph with
    its pruned weights instead.

    Raises:
        ExportError: both exporters failed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ort_ops(model):  # an ONNX graph partly run in ONNX Runtime: the user's own graph
        return model.write_onnx(path)  # type: ignore[operator]
    model = model.eval()
    errors = []
    args, kwargs, named = export_args(model, example_input)
    names = named or [INPUT_NAME]
    try:
        torchscript_export(
            model,
            args,
            path,
            kwargs=kwargs,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_axes={**{name: {0: "batch"} for name in names}, OUTPUT_NAME: {0: "batch"}},
        )
        return path
    except Exception as e:
        errors.append(f"torchscript exporter: {type(e).__name__}: {e}")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            # A batch of 2: torch.export specializes a dimension of size 1 to a constant.
            one = example_input[:1]
            batch2 = one.cat(one) if isinstance(one, Inputs) else torch.cat([one, one])
            args, kwargs, _ = export_args(model, batch2)
            batch = torch.export.Dim("batch")
            dims = (
                {name: {0: batch} for name in kwargs} if kwargs else tuple({0: batch} for _ in args)
            )
            program = torch.onnx.export(
                model,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dims,
                verbose=False,
            )
            assert program is not None
            program.save(str(path), external_data=False)
            return path
        except Exception as e:
            errors.append(
                f"dynamo exporter: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
    raise ExportError("ONNX export failed; " + "; ".join(errors))


def gzip_size(path: str | Path) -> int:
    """Bytes of the file after gzip (level 6): what unstructured zeros really save on disk."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6))


class OrtModel:
    """An ONNX Runtime CPU session with a fixed number of intra-op threads.

    ``optimize=False`` turns every graph optimisation off (no fusion), e.g. to run a QDQ int8
    graph as exact float arithmetic on its dequantized values.
    """

    def __init__(
        self,
        path: str | Path | bytes,
        threads: int = 1,
        *,
        optimize: bool = True,
        name: str | None = None,
    ) -> None:
        self.threads = threads
        where = name or ("the ONNX model" if isinstance(path, bytes) else str(path))
        try:
            self.session = ort_session(path, threads, optimize=optimize)
        except Exception as e:
            raise ExportError(
                f"{where}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}"
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_name = self.input_names[0]
        first = (self.session.get_inputs()[0].shape or [None])[0]
        # A file that fixes its batch size (often 1): fed in batches of exactly that size.
        self.fixed_batch: int | None = first if isinstance(first, int) and first > 0 else None

    def fit(self, x: np.ndarray) -> np.ndarray:
        """``x`` padded (repeating its last row) to the file's fixed batch size, if it has one."""
        if self.fixed_batch is None or len(x) == self.fixed_batch:
            return x
        if len(x) > self.fixed_batch:
            return x[: self.fixed_batch]
        return np.concatenate([x, np.repeat(x[-1:], self.fixed_batch - len(x), axis=0)])

    def feeds(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The session's feeds for one array (its only input) or named arrays (by name; in order
        where the file names its inputs otherwise), padded to a fixed batch size."""
        if not isinstance(x, dict):
            return {self.input_name: np.ascontiguousarray(self.fit(x))}
        named = (
            x
            if set(x) == set(self.input_names)
            else dict(zip(self.input_names, x.values(), strict=False))
        )
        if len(named) != len(self.input_names):
            raise ExportError(
                f"the ONNX model takes inputs {self.input_names}; the data has {list(x)}"
            )
        return {name: np.ascontiguousarray(self.fit(named[name])) for name in self.input_names}

    def __call__(self, x: np.ndarray | dict[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
        batch_size = self.fixed_batch or batch_size
        n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        piece = (
            (lambda i: {k: v[i : i + batch_size] for k, v in x.items()})
            if isinstance(x, dict)
            else (lambda i: x[i : i + batch_size])
        )
        outs = [
            self.session.run(None, self.feeds(piece(i)))[0][: min(batch_size, n - i)]
            for i in range(0, n, batch_size)
        ]
        return np.concatenate(outs)


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    spread_ms: float  # median absolute deviation of the runs: the run-to-run noise
    runs: int
    threads: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _stats(times: Sequence[float], threads: int) -> LatencyStats:
    median = statistics.median(times)
    return LatencyStats(
        median_ms=median,
        p90_ms=float(np.percentile(times, 90)),
        spread_ms=statistics.median(abs(t - median) for t in times),
        runs=len(times),
        threads=threads,
    )


def measure_latency(
    model: OrtModel,
    example_input: np.ndarray | dict[str, np.ndarray],
    runs: int = 50,
    warmup: int = 10,
) -> LatencyStats:
    """Time ``runs`` inferences of ``example_input`` (padded to a fixed batch size the file
    declares)
    after ``warmup`` untimed ones."""
    runs = max(runs, MIN_RUNS)
    feed = model.feeds(example_input)
    run = model.session.run
    for _ in range(warmup):
        run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return _stats(times, model.threads)


# --- speedups: dense and pruned timed alternately in one window -----------------------------------


class _Session(Protocol):
    def run(self, output_names: None, feed: dict[str, np.ndarray]) -> object: ...


class Timeable(Protocol):
    """What :func:`time_interleaved` needs of a model (an :class:`OrtModel`, or a fake in tests)."""

    session: _Session
    input_name: str
    threads: int

    def fit(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RoundRatios:
    """One ratio per round of an interleaved window, and its summary.

    ``value`` is the median of the per-round ratios, ``low``/``high`` the lowest and highest of
    them (the spread). The ratio is *within noise* when the spread covers 1.0: some round saw no
    change or the opposite one.
    """

    per_round: tuple[float, ...]

    @property
    def value(self) -> float:
        return statistics.median(self.per_round)

    @property
    def low(self) -> float:
        return min(self.per_round)

    @property
    def high(self) -> float:
        return max(self.per_round)

    @property
    def within_noise(self) -> bool:
        return self.low <= 1.0 <= self.high

    def inverse(self) -> RoundRatios:
        """The same rounds as the reciprocal ratio (a speedup as a share of the dense latency)."""
        return RoundRatios(tuple(1.0 / r for r in self.per_round))

    def to_dict(self) -> dict[str, object]:
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "within_noise": self.within_noise,
            "per_round": list(self.per_round),
        }


@dataclass(frozen=True)
class Speedup:
    """Dense over pruned latency, the two timed alternately in one window (``DESIGN.md`` rule 7).

    ``median``: per round, the dense median over the pruned median (above 1: the pruned model is
    faster); ``p90`` the same of the rounds' 90th percentiles. ``dense`` and ``pruned`` pool every
    timed run of the window (so a dense p90 is measured exactly like the pruned one).
    """

    median: RoundRatios
    p90: RoundRatios
    dense: LatencyStats
    pruned: LatencyStats
    rounds: int
    runs_per_round: int

    @property
    def ratio(self) -> float:
        return self.median.value

    @property
    def within_noise(self) -> bool:
        return self.median.within_noise

    @property
    def slower(self) -> bool:
        """Every round timed the pruned model slower than the dense one."""
        return self.median.high < 1.0

    @property
    def faster(self) -> bool:
        """Every round timed the pruned model faster than the dense one."""
        return self.median.low > 1.0

    @property
    def latency_share(self) -> RoundRatios:
        """Pruned over dense latency per round (what a latency target is measured in)."""
        return self.median.inverse()

    def describe(self) -> str:
        """'1.32x (rounds 1.25-1.41x)', with ', within noise' when the rounds' spread covers 1.0."""
        m = self.median
        return (
            f"{m.value:.2f}x (rounds"
            f" {m.low:.2f}-{m.high:.2f}x{', within noise' if m.within_noise else ''})"
        )

    def method_text(self) -> str:
        return (
            f"dense and pruned timed alternately in {self.rounds} rounds of {self.runs_per_round}"
            f" runs each, batch 1, {self.pruned.threads} thread(s); the median of the per-round"
            " ratios"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "ratio": self.ratio,
            "low": self.median.low,
            "high": self.median.high,
            "within_noise": self.within_noise,
            "per_round": list(self.median.per_round),
            "p90": self.p90.to_dict(),
            "rounds": self.rounds,
            "runs_per_round": self.runs_per_round,
            "threads": self.pruned.threads,
            "dense_ms_median": self.dense.median_ms,
            "pruned_ms_median": self.pruned.median_ms,
        }


def round_order(n_models: int, round_index: int) -> list[int]:
    """The order the models are timed in during round ``round_index``: rotated by one each round,
    so every model is timed first equally often; with two models the order alternates (A B, B A,
    A B, ...)."""
    return [(i + round_index) % n_models for i in range(n_models)]


def time_interleaved(
    models: Sequence[Timeable],
    example_input: np.ndarray | dict[str, np.ndarray],
    rounds: int = DEFAULT_ROUNDS,
    runs_per_round: int = MIN_ROUND_RUNS,
    warmup: int = 10,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[list[list[float]]]:
    """Time every model in one window: ``rounds`` rounds; in each, every model ``runs_per_round``
    times back to back, in the order :func:`round_order` gives. Every model is warmed up
    (``warmup`` untimed runs) before the first round.

    Returns milliseconds as ``times[model][round][run]``. ``clock`` returns nanoseconds (a fake in
    tests).
    """
    if rounds < 1 or runs_per_round < 1:
        raise ValueError(
            f"need at least one round and one run per round, got {rounds} x {runs_per_round}"
        )
    feeds = [
        (
            m.feeds(example_input)
            if isinstance(example_input, dict)  # named inputs (an OrtModel)
            else {m.input_name: np.ascontiguousarray(m.fit(example_input))}
        )
        for m in models
    ]
    for m, feed in zip(models, feeds, strict=False):
        for _ in range(warmup):
            m.session.run(None, feed)
    times: list[list[list[float]]] = [[[] for _ in range(rounds)] for _ in models]
    for r in range(rounds):
        for i in round_order(len(models), r):
            run, feed, out = models[i].session.run, feeds[i], times[i][r]
            for _ in range(runs_per_round):
                t0 = clock()
                run(None, feed)
                out.append((clock() - t0) / 1e6)
    return times


def per_round_ratios(
    numerator: Sequence[Sequence[float]],
    denominator: Sequence[Sequence[float]],
    stat: Callable[[Sequence[float]], float] = statistics.median,
) -> RoundRatios:
    """``stat`` of each round of ``numerator`` over the same of ``denominator``."""
    return RoundRatios(
        tuple(stat(a) / max(stat(b), 1e-12) for a, b in zip(numerator, denominator, strict=False))
    )


def _p90(values: Sequence[float]) -> float:
    return float(np.percentile(values, 90))


def speedup_of(
    times: Sequence[Sequence[Sequence[float]]], dense: int, pruned: int, threads: int
) -> Speedup:
    """The :class:`Speedup` of model ``pruned`` over model ``dense`` in an interleaved window."""
    d, p = times[dense], times[pruned]
    return Speedup(
        median=per_round_ratios(d, p),
        p90=per_round_ratios(d, p, _p90),
        dense=_stats([t for r in d for t in r], threads),
        pruned=_stats([t for r in p for t in r], threads),
        rounds=len(d),
        runs_per_round=len(d[0]),
    )


def rounds_for(runs: int, rounds: int = DEFAULT_ROUNDS) -> tuple[int, int]:
    """(rounds, runs per round) that time each session at least ``runs`` (and 30) times in all."""
    rounds = max(rounds, MIN_ROUNDS)
    return rounds, max(MIN_ROUND_RUNS, math.ceil(max(runs, MIN_RUNS) / rounds))


def measure_speedup(
    dense: Timeable,
    pruned: Timeable,
    example_input: np.ndarray,
    *,
    runs: int = 50,
    rounds: int = DEFAULT_ROUNDS,
    warmup: int = 10,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> Speedup:
    """Dense over pruned latency, timed alternately in one window (see the module docstring).

    ``runs``: timed runs of each session in all (at least 30), split over ``rounds`` rounds (at
    least 5) of at least 10 runs.
    """
    rounds, per_round = rounds_for(runs, rounds)
    times = time_interleaved([dense, pruned], example_input, rounds, per_round, warmup, clock)
    return speedup_of(times, 0, 1, pruned.threads)
