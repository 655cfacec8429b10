"""int8 with ``onnxruntime.quantization``: dynamic (MatMul/Gemm) and static QDQ, measured next to
fp32.

- **dynamic**: weights of MatMul/Gemm stored as int8, activations quantized on the fly at run
  time. No calibration data; convolutions stay fp32. Right for MLPs.
- **static QDQ**: weights (per channel) and activations quantized with scales computed once from
  calibration data (a ``CalibrationDataReader`` over the data set), written as
  QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels. Covers
  convolutions: right for CNNs.

``quant_pre_process`` (symbolic shape inference and graph optimisation) runs first when it works;
when it fails, quantization goes ahead on the model as exported and says so in ``notes``.

How int8 is written depends on the CPU, as ONNX Runtime's quantization guide documents: on x86
without VNNI (AVX2, AVX-512 without VNNI), its u8s8 kernels multiply uint8 activations by int8
weights with ``vpmaddubsw``, whose 16-bit intermediate sums saturate, and accuracy can collapse
(12-23 points seen on the digits CNNs on an AMD EPYC). The documented remedy is ``reduce_range``:
weights quantized to 7 bits, so that no pair of products can overflow. ``choose_recipe`` picks
the full-range recipe where the CPU has int8 dot products (VNNI, AMX, Arm's dot product) and the
reduce-range recipe elsewhere, and every result says which recipe it used. Static models are also
checked after the fact: the int8 model run by ONNX Runtime's fused kernels is compared with the same
QDQ graph run unfused (Dequantize then float ops: the exact int8 arithmetic, on any CPU); a model
whose fused run disagrees is re-quantized with the reduce-range recipe and says so.

Whether int8 is faster depends on the CPU as well: int8 dot products are fast with VNNI
(``avx512_vnni``, ``avx_vnni``) or AMX; without them int8 may be no faster than fp32.
``cpu_int8_support()`` reports what this machine has.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
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
    "RECIPES",
    "CpuInt8Support",
    "Int8Recipe",
    "Int8Comparison",
    "OnnxMetrics",
    "QuantizeResult",
    "calibration_split",
    "choose_mode",
    "choose_recipe",
    "compare_int8",
    "cpu_int8_support",
    "measure_onnx",
    "quantize_onnx",
    "simulated_logits",
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
        return CpuInt8Support(
            (),
            None,
            "CPU flags unknown (no /proc/cpuinfo): int8 may or may not be faster than fp32 here",
        )
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    found = tuple(f for f in (*_FAST_FLAGS, *_ARM_FLAGS) if f in flags)
    if found:
        return CpuInt8Support(
            found,
            True,
            f"this CPU has {', '.join(found)}: ONNX Runtime's int8 kernels "
            "can use fast int8 dot products",
        )
    has = "avx512bw" if "avx512bw" in flags else "avx2" if "avx2" in flags else None
    base = f" (it has {has}, which int8 kernels use without VNNI)" if has else ""
    return CpuInt8Support(
        (),
        False,
        "this CPU lacks avx512_vnni, avx_vnni and AMX"
        + base
        + ": int8 is smaller but may not run faster than fp32 here",
    )


# --- the recipe for this CPU ---------------------------------------------------------------------


@dataclass(frozen=True)
class Int8Recipe:
    """How weights are quantized for a kind of CPU (activations are always uint8, weights int8)."""

    name: str
    reduce_range: bool  # weights in 7 bits instead of 8
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Int8Recipe] = {
    r.name: r
    for r in (
        Int8Recipe(
            "u8s8",
            False,
            "uint8 activations, int8 weights in the full 8-bit range: exact where the CPU "
            "has int8 dot products (VNNI, AMX, Arm dot product)",
        ),
        Int8Recipe(
            "u8s8-reduce-range",
            True,
            "uint8 activations, int8 weights in 7 bits (reduce_range): ONNX "
            "Runtime's documented fix for the saturation of its u8s8 kernels on "
            "x86 CPUs without VNNI (AVX2, AVX-512 without VNNI)",
        ),
    )
}
SATURATION_AGREEMENT = 0.99  # fused vs exact int8: below this, the kernels saturated


def choose_recipe(cpu: CpuInt8Support | None = None) -> Int8Recipe:
    """The full-range recipe where ``cpu`` has int8 dot products, the reduce-range one elsewhere
    (also where the flags are unknown: 7-bit weights are exact on every CPU)."""
    cpu = cpu if cpu is not None else cpu_int8_support()
    return RECIPES["u8s8"] if cpu.fast else RECIPES["u8s8-reduce-range"]


def _recipe(recipe: str | Int8Recipe | None) -> Int8Recipe:
    if recipe is None:
        return choose_recipe()
    if isinstance(recipe, Int8Recipe):
        return recipe
    try:
        return RECIPES[recipe]
    except KeyError:
        raise ExportError(f"unknown int8 recipe {recipe!r}; choose from {list(RECIPES)}") from None


# --- quantization --------------------------------------------------------------------------------


def calibration_split(data: Dataset) -> tuple[Split, str]:
    """The split static quantization calibrates on: train, else val, else test (named)."""
    found = data.calibration()
    if found is not None:
        return found
    raise ExportError(f"{data.spec}: no data to calibrate int8 quantization on")


def choose_mode(onnx_path: str | Path) -> Mode:
    """``static`` when the graph has convolutions (dynamic mode would leave them fp32), else
    ``dynamic``."""
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as e:
        raise ExportError(
            f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})"
        ) from None
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
                [
                    {input_name: np.ascontiguousarray(x[i : i + batch_size])}
                    for i in range(0, len(x), batch_size)
                ]
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
    recipe: Int8Recipe = RECIPES["u8s8"]
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


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    mode: str = "auto",
    calibration: np.ndarray | None = None,
    *,
    per_channel: bool = True,
    max_samples: int = CALIBRATION_SAMPLES,
    recipe: str | Int8Recipe | None = None,
) -> QuantizeResult:
    """Write an int8 version of the fp32 ONNX model ``src`` to ``dst``.

    Args:
        mode: ``"dynamic"``, ``"static"`` (QDQ, needs ``calibration``) or ``"auto"``
        (``choose_mode``).
        recipe: a name of ``RECIPES`` or a recipe; None: ``choose_recipe()`` for this CPU.
        calibration: inputs (N x input shape, float32) for static mode; at most ``max_samples``
            of them (a seeded random subset) are used.
        per_channel: static mode: one weight scale per output channel (more accurate).

    Side effects: writes ``dst`` (and its parent folder); temporary files are removed.

    Raises:
        ExportError: unknown mode or recipe, no calibration data for static mode, or quantization
            failed.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise ExportError(f"unknown quantization mode {mode!r}; choose from {list(MODES)}")
    how = _recipe(recipe)
    src, dst = Path(src), Path(dst)
    chosen: Mode = choose_mode(src) if mode == "auto" else mode  # type: ignore[assignment]
    if chosen == "static" and (calibration is None or len(calibration) == 0):
        raise ExportError("static int8 quantization needs calibration data")
    dst.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="explorer-int8-") as tmp,
        warnings.catch_warnings(),
        _quiet_root_logger(),
    ):
        warnings.simplefilter("ignore")
        source = src
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            source = pre
        except Exception as e:
            notes.append(
                f"quant_pre_process skipped ({type(e).__name__}:"
                f" {str(e).splitlines()[0] if str(e) else ''})"
            )
        try:
            if chosen == "dynamic":
                quantize_dynamic(
                    str(source),
                    str(dst),
                    op_types_to_quantize=["MatMul", "Gemm"],
                    weight_type=QuantType.QInt8,
                    per_channel=False,
                    reduce_range=how.reduce_range,
                )
            else:
                assert calibration is not None
                input_name = OrtModel(source).input_name
                x = _calibration_sample(np.asarray(calibration, dtype=np.float32), max_samples)
                quantize_static(
                    str(source),
                    str(dst),
                    _reader(x, input_name, CALIBRATION_BATCH),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    reduce_range=how.reduce_range,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"CalibTensorRangeSymmetric": False},
                )
        except ExportError:
            raise
        except Exception as e:
            raise ExportError(
                f"{src}: int8 {chosen} quantization failed: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}"
            ) from None
    return QuantizeResult(
        path=dst, mode=chosen, preprocessed=source != src, recipe=how, notes=tuple(notes)
    )


def simulated_logits(int8_path: str | Path, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of a QDQ int8 model computed exactly, whatever the CPU: with every graph optimisation
    off, ONNX Runtime does not fuse QuantizeLinear/DequantizeLinear pairs into int8 kernels, so each
    layer runs in float on the dequantized int8 values (the arithmetic int8 promises, with no
    kernel that can saturate)."""
    model = OrtModel(int8_path, threads=os.cpu_count() or 1, optimize=False)
    return model(np.ascontiguousarray(x, dtype=np.float32), batch_size=batch_size)


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
    recipe: Int8Recipe = RECIPES["u8s8"]
    # static: top-1 agreement of ONNX Runtime's fused int8 kernels with the exact int8 arithmetic
    # (simulated_logits) on the test split; None for dynamic models
    kernel_agreement: float | None = None

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
        d.update(
            mode=self.mode,
            file=self.path.name,
            agreement_with_fp32=self.agreement,
            gzip_ratio_to_fp32=self.gzip_ratio,
            speedup_vs_fp32=self.speedup,
            calibration_split=self.calibration or None,
            cpu=self.cpu.to_dict(),
            recipe=self.recipe.to_dict(),
            kernel_agreement=self.kernel_agreement,
            notes=list(self.notes),
            fp32=self.fp32.to_dict(),
        )
        return d


def compare_int8(
    fp32_path: str | Path,
    data: Dataset,
    int8_path: str | Path,
    *,
    mode: str = "auto",
    reference: np.ndarray | None = None,
    threads: int = 1,
    runs: int = 50,
    recipe: str | Int8Recipe | None = None,
    on_progress: Progress = no_progress,
) -> Int8Comparison:
    """Quantize ``fp32_path`` to ``int8_path`` and measure both side by side.

    Static mode calibrates on ``calibration_split(data)`` (train when there is one). Accuracy is on
    ``data.test``; latency at batch 1 with ``threads`` threads, fp32 and int8 timed one after the
    other in this call. ``recipe``: None chooses the one for this CPU (``choose_recipe``). A static
    model whose fused int8 kernels disagree with the exact int8 arithmetic (saturation, on a CPU
    whose flags misled us) is quantized again with the reduce-range recipe, and the notes say so.

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
    result = quantize_onnx(fp32_path, int8_path, mode, calibration, recipe=recipe)
    notes = list(result.notes)
    kernel_agreement = None
    if result.mode == "static":
        on_progress(0.2, "int8: checking the kernels against the exact int8 arithmetic")
        kernel_agreement = _kernel_agreement(result.path, data.test.x.numpy())
        if kernel_agreement < SATURATION_AGREEMENT and not result.recipe.reduce_range:
            first = kernel_agreement
            result = quantize_onnx(
                fp32_path, int8_path, mode, calibration, recipe="u8s8-reduce-range"
            )
            kernel_agreement = _kernel_agreement(result.path, data.test.x.numpy())
            notes.append(
                "ONNX Runtime's int8 kernels agreed with the exact int8 arithmetic on only"
                f" {100 * first:.1f}% of the samples (saturation): quantized again with 7-bit"
                f" weights (reduce_range), which agree on {100 * kernel_agreement:.1f}%"
            )
    on_progress(0.4, "int8: measuring fp32")
    fp32, fp32_logits = measure_onnx(
        fp32_path, data, reference=reference, threads=threads, runs=runs
    )
    on_progress(0.7, "int8: measuring int8")
    int8, int8_logits = measure_onnx(
        result.path, data, reference=reference, threads=threads, runs=runs
    )
    on_progress(1.0, "int8: done")
    drop = fp32.accuracy - int8.accuracy
    if drop > ACCURACY_WARNING:
        what = "accuracy" if fp32.labels else "agreement with the dense model"
        notes.append(
            f"int8 loses {100 * drop:.1f} points of {what} on this model ({result.mode} mode); "
            "keep the fp32 model or try the other mode"
        )
    if split_name == "test":
        notes.append(
            "calibrated on the evaluation data (no train or val split): the int8 accuracy is"
            " optimistic"
        )
    return Int8Comparison(
        mode=result.mode,
        path=result.path,
        fp32=fp32,
        int8=int8,
        agreement=float((fp32_logits.argmax(1) == int8_logits.argmax(1)).mean()),
        cpu=cpu_int8_support(),
        calibration=split_name,
        notes=tuple(notes),
        recipe=result.recipe,
        kernel_agreement=kernel_agreement,
    )


def _kernel_agreement(int8_path: Path, x: np.ndarray) -> float:
    """Top-1 agreement of the fused int8 model with its exact arithmetic (``simulated_logits``)."""
    fused = OrtModel(int8_path, threads=os.cpu_count() or 1)(
        np.ascontiguousarray(x, dtype=np.float32)
    )
    exact = simulated_logits(int8_path, x)
    return float((fused.argmax(1) == exact.argmax(1)).mean())
