"""The one place that exports to ONNX, builds ONNX Runtime sessions and times them.

Sessions follow the house rule: CPU provider, a fixed ``intra_op_num_threads``, one inter-op
thread, sequential execution. Latency: warm-up, at least 30 timed runs, median and p90 (and the
run-to-run spread, so a UI can say "within noise").
"""

from __future__ import annotations

import gzip
import io
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from explorer.capabilities import ort_ops
from explorer.errors import ExportError

__all__ = ["LatencyStats", "OrtModel", "export_onnx", "gzip_size", "measure_latency", "ort_session",
           "torchscript_export"]

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"
MIN_RUNS = 30


def ort_session(model: str | Path | bytes, threads: int = 1, *, optimize: bool = True,
                arena: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of a file or a serialized model, with ``threads`` intra-op threads.

    ``optimize=False`` turns every graph optimisation off (no fusion). ``arena=False`` turns the CPU
    memory arena off (the session then gives back what a run allocated instead of keeping its
    peak). Raises what ONNX Runtime raises; callers say which file it was.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = arena
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def torchscript_export(model: nn.Module, args: tuple[torch.Tensor, ...], f: str | Path | io.BytesIO, *,
                       input_names: list[str], output_names: list[str],
                       dynamic_axes: dict[str, dict[int, str]]) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (tens of milliseconds on small models) at
    our opset, warnings silenced. nn.TransformerEncoderLayer's inference fast path is one fused op
    that no exporter handles: it is off during the export. Raises what the exporter raises."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.backends.mha.set_fastpath_enabled(False)
            torch.onnx.export(model, args, f if isinstance(f, io.BytesIO) else str(f), dynamo=False,
                              opset_version=OPSET, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Export ``model`` to a single ONNX file with a dynamic batch dimension.

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
    try:
        torchscript_export(model, (example_input,), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                           dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        return path
    except Exception as e:
        errors.append(f"torchscript exporter: {type(e).__name__}: {e}")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            # A batch of 2: torch.export specializes a dimension of size 1 to a constant.
            batch2 = torch.cat([example_input[:1], example_input[:1]])
            program = torch.onnx.export(
                model, (batch2,), dynamo=True, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
            assert program is not None
            program.save(str(path), external_data=False)
            return path
        except Exception as e:
            errors.append(f"dynamo exporter: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise ExportError("ONNX export failed; " + "; ".join(errors))


def gzip_size(path: str | Path) -> int:
    """Bytes of the file after gzip (level 6): what unstructured zeros really save on disk."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6))


class OrtModel:
    """An ONNX Runtime CPU session with a fixed number of intra-op threads.

    ``optimize=False`` turns every graph optimisation off (no fusion), e.g. to run a QDQ int8
    graph as exact float arithmetic on its dequantized values.
    """

    def __init__(self, path: str | Path, threads: int = 1, *, optimize: bool = True) -> None:
        self.threads = threads
        try:
            self.session = ort_session(path, threads, optimize=optimize)
        except Exception as e:
            raise ExportError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}") from None
        self.input_name = self.session.get_inputs()[0].name
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

    def __call__(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        batch_size = self.fixed_batch or batch_size
        outs = [
            self.session.run(None, {self.input_name: self.fit(x[i : i + batch_size])})[0][: len(x[i : i + batch_size])]
            for i in range(0, len(x), batch_size)
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


def measure_latency(model: OrtModel, example_input: np.ndarray, runs: int = 50, warmup: int = 10) -> LatencyStats:
    """Time ``runs`` inferences of ``example_input`` (padded to a fixed batch size the file declares)
    after ``warmup`` untimed ones."""
    runs = max(runs, MIN_RUNS)
    feed = {model.input_name: np.ascontiguousarray(model.fit(example_input))}
    run = model.session.run
    for _ in range(warmup):
        run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    median = statistics.median(times)
    return LatencyStats(
        median_ms=median,
        p90_ms=float(np.percentile(times, 90)),
        spread_ms=statistics.median(abs(t - median) for t in times),
        runs=runs,
        threads=model.threads,
    )
