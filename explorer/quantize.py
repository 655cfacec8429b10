"""int8 with ``onnxruntime.quantization``: dynamic (MatMul/Gemm) and static QDQ, measured next to fp32.

- **dynamic**: weights of MatMul/Gemm stored as int8, activations quantized on the fly at run
  time. No calibration data; convolutions stay fp32. Right for MLPs.
- **static QDQ**: weights (per channel) and activations quantized with scales computed once from
  calibration data (a ``CalibrationDataReader`` over the data set), written as
  QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels. Covers
  convolutions: right for CNNs.

``quant_pre_process`` (symbolic shape inference and graph optimisation) runs first when it works;
when it fails, quantization goes ahead on the model as exported and says so in ``notes``.

Whether int8 is faster depends on the CPU: int8 dot products are fast with VNNI (``avx512_vnni``,
``avx_vnni``) or AMX; without them ONNX Runtime falls back to slower instruction sequences and int8
may be no faster than fp32. ``cpu_int8_support()`` reports what this machine has.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from explorer.data import Dataset, Split
from explorer.errors import ExportError
from explorer.evaluate import OnnxMetrics, measure_onnx
from explorer.progress import Progress, no_progress
from explorer.runtime import OrtModel

__all__ = [
    "MODES",
    "CpuInt8Support",
    "Int8Comparison",
    "OnnxMetrics",
    "QuantizeResult",
    "calibration_split",
    "choose_mode",
    "compare_int8",
    "cpu_int8_support",
    "measure_onnx",
    "quantize_onnx",
]

Mode = Literal["dynamic", "static"]
MODES = ("auto", "dynamic", "static")
CALIBRATION_SAMPLES = 512  # enough for stable min/max ranges on small models; seconds to collect
CALIBRATION_BATCH = 64
ACCURACY_WARNING = 0.01  # an int8 model losing more than one point gets a note
_FAST_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")  # x86; asimddp / i8mm on Arm
_ARM_FLAGS = ("asimddp", "i8mm")


# --- what this CPU offers ------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuInt8Support:
    """The int8 dot-product instructions found in ``/proc/cpuinfo``.

    ``fast`` is True when one was found, False when none was, None when the flags are unknown.
    """

    found: tuple[str, ...]
    fast: bool | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"found": list(self.found), "fast": self.fast, "note": self.note}


def cpu_int8_support(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuInt8Support:
    """Read the CPU flags and say whether int8 kernels have fast dot-product instructions."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return CpuInt8Support((), None, "CPU flags unknown (no /proc/cpuinfo): int8 may or may not be faster "
                                        "than fp32 here")
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    found = tuple(f for f in (*_FAST_FLAGS, *_ARM_FLAGS) if f in flags)
    if found:
        return CpuInt8Support(found, True, f"this CPU has {', '.join(found)}: ONNX Runtime's int8 kernels "
                                           "can use fast int8 dot products")
    has = "avx512bw" if "avx512bw" in flags else "avx2" if "avx2" in flags else None
    base = f" (it has {has}, which int8 kernels use without VNNI)" if has else ""
    return CpuInt8Support((), False, "this CPU lacks avx512_vnni, avx_vnni and AMX" + base +
                          ": int8 is smaller but may not run faster than fp32 here")


# --- quantization --------------------------------------------------------------------------------


def calibration_split(data: Dataset) -> tuple[Split, str]:
    """The split static quantization calibrates on: train, else val, else test (named)."""
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if split is not None and len(split):
            return split, name
    raise ExportError(f"{data.spec}: no data to calibrate int8 quantization on")


def choose_mode(onnx_path: str | Path) -> Mode:
    """``static`` when the graph has convolutions (dynamic mode would leave them fp32), else ``dynamic``."""
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as e:
        raise ExportError(f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    ops = {node.op_type for node in graph.node}
    return "static" if ops & {"Conv", "ConvTranspose"} else "dynamic"


def _reader(x: np.ndarray, input_name: str, batch_size: int) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):  # type: ignore[misc]
        """Feeds ``x`` in batches to the calibrator."""

        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] | None = None
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            assert self._it is not None
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(
                [{input_name: np.ascontiguousarray(x[i : i + batch_size])} for i in range(0, len(x), batch_size)]
            )

    return _Batches()


def _calibration_sample(x: np.ndarray, max_samples: int, seed: int = 0) -> np.ndarray:
    if len(x) <= max_samples:
        return x
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=max_samples, replace=False))
    return x[idx]


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    mode: Mode
    preprocessed: bool  # quant_pre_process ran on the model first
    notes: tuple[str, ...] = ()


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs its skips (a weight it cannot quantize per channel) on the root
    logger; the notes we return say what matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(src: str | Path, dst: str | Path, mode: str = "auto", calibration: np.ndarray | None = None,
                  *, per_channel: bool = True, max_samples: int = CALIBRATION_SAMPLES) -> QuantizeResult:
    """Write an int8 version of the fp32 ONNX model ``src`` to ``dst``.

    Args:
        mode: ``"dynamic"``, ``"static"`` (QDQ, needs ``calibration``) or ``"auto"`` (``choose_mode``).
        calibration: inputs (N x input shape, float32) for static mode; at most ``max_samples``
            of them (a seeded random subset) are used.
        per_channel: static mode: one weight scale per output channel (more accurate).

    Side effects: writes ``dst`` (and its parent folder); temporary files are removed.

    Raises:
        ExportError: unknown mode, no calibration data for static mode, or quantization failed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise ExportError(f"unknown quantization mode {mode!r}; choose from {list(MODES)}")
    src, dst = Path(src), Path(dst)
    chosen: Mode = choose_mode(src) if mode == "auto" else mode  # type: ignore[assignment]
    if chosen == "static" and (calibration is None or len(calibration) == 0):
        raise ExportError("static int8 quantization needs calibration data")
    dst.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="explorer-int8-") as tmp, warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        source = src
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            source = pre
        except Exception as e:
            notes.append(f"quant_pre_process skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        try:
            if chosen == "dynamic":
                quantize_dynamic(str(source), str(dst), op_types_to_quantize=["MatMul", "Gemm"],
                                 weight_type=QuantType.QInt8, per_channel=False)
            else:
                assert calibration is not None
                input_name = OrtModel(source).input_name
                x = _calibration_sample(np.asarray(calibration, dtype=np.float32), max_samples)
                quantize_static(
                    str(source), str(dst), _reader(x, input_name, CALIBRATION_BATCH),
                    quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"CalibTensorRangeSymmetric": False},
                )
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(f"{src}: int8 {chosen} quantization failed: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return QuantizeResult(path=dst, mode=chosen, preprocessed=source != src, notes=tuple(notes))


@dataclass(frozen=True)
class Int8Comparison:
    """An int8 model measured next to its fp32 source, in the same run."""

    mode: Mode
    path: Path  # the int8 ONNX file
    fp32: OnnxMetrics
    int8: OnnxMetrics
    agreement: float  # top-1 agreement of int8 with fp32 on the test split
    cpu: CpuInt8Support
    calibration: str = ""  # split used for static calibration ("" for dynamic)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def accuracy_drop(self) -> float:
        return self.fp32.accuracy - self.int8.accuracy

    @property
    def gzip_ratio(self) -> float:
        """int8 gzip bytes / fp32 gzip bytes."""
        return self.int8.onnx_gzip_bytes / self.fp32.onnx_gzip_bytes

    @property
    def speedup(self) -> float:
        """fp32 median latency / int8 median latency (above 1: int8 is faster)."""
        return self.fp32.latency_ms_median / self.int8.latency_ms_median

    def to_dict(self) -> dict[str, Any]:
        """The int8 metrics plus mode, agreement, ratios, the CPU note and the fp32 numbers."""
        d: dict[str, Any] = self.int8.to_dict()
        d.update(mode=self.mode, file=self.path.name, agreement_with_fp32=self.agreement,
                 gzip_ratio_to_fp32=self.gzip_ratio, speedup_vs_fp32=self.speedup,
                 calibration_split=self.calibration or None, cpu=self.cpu.to_dict(), notes=list(self.notes),
                 fp32=self.fp32.to_dict())
        return d


def compare_int8(fp32_path: str | Path, data: Dataset, int8_path: str | Path, *, mode: str = "auto",
                 reference: np.ndarray | None = None, threads: int = 1, runs: int = 50,
                 on_progress: Progress = no_progress) -> Int8Comparison:
    """Quantize ``fp32_path`` to ``int8_path`` and measure both side by side.

    Static mode calibrates on ``calibration_split(data)`` (train when there is one). Accuracy is on
    ``data.test``; latency at batch 1 with ``threads`` threads, fp32 and int8 timed one after the
    other in this call.

    Side effects: writes ``int8_path``.

    Raises:
        ExportError: quantization or ONNX Runtime failed (the message names the file).
    """
    on_progress(0.0, "int8: quantizing")
    calibration, split_name = (None, "")
    chosen = choose_mode(fp32_path) if mode == "auto" else mode
    if chosen == "static":
        split, split_name = calibration_split(data)
        calibration = split.x.numpy()
    result = quantize_onnx(fp32_path, int8_path, mode, calibration)
    on_progress(0.4, "int8: measuring fp32")
    fp32, fp32_logits = measure_onnx(fp32_path, data, reference=reference, threads=threads, runs=runs)
    on_progress(0.7, "int8: measuring int8")
    int8, int8_logits = measure_onnx(result.path, data, reference=reference, threads=threads, runs=runs)
    on_progress(1.0, "int8: done")
    notes = list(result.notes)
    drop = fp32.accuracy - int8.accuracy
    if drop > ACCURACY_WARNING:
        what = "accuracy" if fp32.labels else "agreement with the dense model"
        notes.append(f"int8 loses {100 * drop:.1f} points of {what} on this model ({result.mode} mode); "
                     "keep the fp32 model or try the other mode")
    if split_name == "test":
        notes.append("calibrated on the evaluation data (no train or val split): the int8 accuracy is optimistic")
    return Int8Comparison(
        mode=result.mode, path=result.path, fp32=fp32, int8=int8,
        agreement=float((fp32_logits.argmax(1) == int8_logits.argmax(1)).mean()),
        cpu=cpu_int8_support(), calibration=split_name, notes=tuple(notes),
    )
