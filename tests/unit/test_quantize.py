"""int8: the quantized ONNX runs in ONNX Runtime and scores within 1 point of its fp32 source on
every
zoo model (dense, and structurally pruned); its graph holds the int8 operators of its mode; the CPU
note reads the flags; both recipes (full range for CPUs with VNNI, reduce-range for those without)
are exact in int8 arithmetic on any CPU, and the one chosen for this CPU runs as its arithmetic
says;
errors are ExportError naming the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from explorer.errors import ExportError
from explorer.plan import PruningPlan
from explorer.quantize import (
    RECIPES,
    choose_recipe,
    compare_int8,
    cpu_int8_support,
    measure_onnx,
    quantize_onnx,
    simulated_logits,
)
from explorer.report import export_bundle
from explorer.runtime import OrtModel, export_onnx
from explorer.subject import Subject

EXPECTED_MODE = {
    "digits-mlp": "dynamic",
    "digits-cnn": "static",
    "digits-resnet": "static",
    "mnist-lenet300": "dynamic",
    "mnist-lenet5": "static",
    "mnist1d-mlp": "dynamic",
    "mnist1d-cnn": "static",
}
TOLERANCE = 0.01  # one point of accuracy
# Share of test predictions int8 keeps. The MNIST-1D MLP is right on only ~61% of the test signals:
# many sit near a decision boundary, so int8's rounding flips more of them (measured: 97.4%).
MIN_AGREEMENT = {"mnist1d-mlp": 0.96}


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_scores_within_one_point(
    zoo_name: str, subject: Callable[..., Subject], tmp_path: Path
) -> None:
    subj = subject(f"zoo:{zoo_name}")
    fp32 = export_onnx(subj.model, subj.example_input, tmp_path / "model.onnx")
    cmp = compare_int8(fp32, subj.data, tmp_path / "model.int8.onnx", runs=30)
    assert cmp.mode == EXPECTED_MODE[zoo_name]
    assert cmp.path.is_file()
    assert abs(cmp.int8.accuracy - cmp.fp32.accuracy) <= TOLERANCE
    assert cmp.agreement >= MIN_AGREEMENT.get(zoo_name, 0.98)
    # int8 weights: about a quarter; the QDQ nodes and scales add a fixed few KB that only a model
    # as
    # small as the MNIST-1D CNN (5K weights, 22 KB of ONNX) notices.
    assert cmp.int8.onnx_bytes < 0.5 * cmp.fp32.onnx_bytes + 8192
    ops = _ops(cmp.path)
    if cmp.mode == "static":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert cmp.calibration == "train"
    else:
        assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    # the fp32 numbers are those of the source file
    logits = OrtModel(fp32)(subj.data.test.x.numpy())
    assert cmp.fp32.accuracy == pytest.approx(
        float((logits.argmax(1) == subj.data.test.y.numpy()).mean())
    )
    d = cmp.to_dict()
    assert d["mode"] == cmp.mode and d["fp32"]["accuracy"] == cmp.fp32.accuracy
    assert d["accuracy"] == cmp.int8.accuracy and "note" in d["cpu"]
    # the recipe for this CPU, and (static) its fused kernels agree with the exact int8 arithmetic
    assert d["recipe"]["name"] == cmp.recipe.name
    if not any("saturation" in note for note in cmp.notes):
        assert cmp.recipe == choose_recipe()
    if cmp.mode == "static":
        assert cmp.kernel_agreement is not None and cmp.kernel_agreement >= 0.99
    else:
        assert cmp.kernel_agreement is None


def test_int8_of_a_pruned_cnn(subject: Callable[..., Subject], tmp_path: Path) -> None:
    subj = subject("zoo:digits-cnn")
    convs = [layer.name for layer in subj.inventory.layers if layer.group is not None]
    pruned = subj.prune(PruningPlan.uniform("l1-structured", convs, 0.3))
    fp32 = export_onnx(pruned, subj.example_input, tmp_path / "pruned.onnx")
    cmp = compare_int8(fp32, subj.data, tmp_path / "pruned.int8.onnx", runs=30)
    assert cmp.mode == "static"
    assert abs(cmp.int8.accuracy - cmp.fp32.accuracy) <= TOLERANCE


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_both_modes_run_on_the_mlp(
    mode: str, subject: Callable[..., Subject], tmp_path: Path
) -> None:
    subj = subject("zoo:digits-mlp")
    fp32 = export_onnx(subj.model, subj.example_input, tmp_path / "model.onnx")
    assert subj.data.train is not None
    result = quantize_onnx(fp32, tmp_path / "q" / "int8.onnx", mode, subj.data.train.x.numpy())
    assert result.mode == mode and result.path.is_file()
    metrics, logits = measure_onnx(result.path, subj.data, runs=30)
    assert logits.shape == (len(subj.data.test), 10)
    dense, _ = subj.dense()
    assert abs(metrics.accuracy - dense.accuracy) <= TOLERANCE


def test_cpu_note_reads_the_flags(tmp_path: Path) -> None:
    vnni = tmp_path / "vnni"
    vnni.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2\n")
    fast = cpu_int8_support(vnni)
    assert fast.fast is True and fast.found == ("avx512_vnni",) and "avx512_vnni" in fast.note
    slow = cpu_int8_support(plain)
    assert slow.fast is False and slow.found == () and "lacks" in slow.note and "avx2" in slow.note
    unknown = cpu_int8_support(tmp_path / "missing")
    assert unknown.fast is None and "unknown" in unknown.note
    here = cpu_int8_support()  # this machine: whatever it has, the note says what was found
    assert here.note


def test_errors_are_export_errors(subject: Callable[..., Subject], tmp_path: Path) -> None:
    subj = subject("zoo:digits-cnn")
    fp32 = export_onnx(subj.model, subj.example_input, tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="'int4'"):
        quantize_onnx(fp32, tmp_path / "x.onnx", "int4")
    with pytest.raises(ExportError, match="calibration"):
        quantize_onnx(fp32, tmp_path / "x.onnx", "static", None)
    with pytest.raises(ExportError, match="calibration"):
        quantize_onnx(fp32, tmp_path / "x.onnx", "auto", np.zeros((0, 1, 32, 32), np.float32))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="garbage.onnx"):
        quantize_onnx(garbage, tmp_path / "y.onnx", "dynamic")
    with pytest.raises(ExportError, match="garbage.onnx"):
        measure_onnx(garbage, subj.data, runs=30)
    plan = PruningPlan.uniform("l1-unstructured", ["features.0"], 0.5)
    with pytest.raises(ExportError, match="'int4'"):
        export_bundle(subj, plan, tmp_path / "bundle", quantize="int4")


def test_calibrating_on_test_data_is_noted(subject: Callable[..., Subject], tmp_path: Path) -> None:
    """User data without train/val: static int8 calibrates on the evaluation data and says so."""
    from explorer.data import Dataset

    subj = subject("zoo:digits-cnn")
    only_test = Dataset(spec="user.npz", test=subj.data.test)
    fp32 = export_onnx(subj.model, subj.example_input, tmp_path / "model.onnx")
    cmp = compare_int8(fp32, only_test, tmp_path / "model.int8.onnx", runs=30)
    assert cmp.calibration == "test"
    assert any("optimistic" in note for note in cmp.notes)


def _int8_weights(path: Path) -> list[np.ndarray]:
    """The int8 weight tensors of a quantized graph (initializers of type int8)."""
    from onnx import numpy_helper

    return [
        numpy_helper.to_array(t)
        for t in onnx.load(str(path)).graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and t.dims and np.prod(t.dims) > 1
    ]


def test_the_recipe_follows_the_cpu(tmp_path: Path) -> None:
    """Full 8-bit weights where int8 dot products exist; 7-bit weights (reduce_range, ONNX Runtime's
    fix for u8s8 saturation) on AVX2 / AVX-512 without VNNI, and where the flags are unknown."""
    flags = {
        "vnni": "avx2 avx512f avx512bw avx512_vnni",
        "avxvnni": "avx2 avx_vnni",
        "amx": "avx2 amx_int8",
        "avx2": "avx avx2 fma",
        "avx512": "avx2 avx512f avx512bw",
        "arm-dot": "asimd asimddp",
    }
    expected = {
        "vnni": "u8s8",
        "avxvnni": "u8s8",
        "amx": "u8s8",
        "arm-dot": "u8s8",
        "avx2": "u8s8-reduce-range",
        "avx512": "u8s8-reduce-range",
    }
    for name, line in flags.items():
        info = tmp_path / name
        info.write_text(f"processor\t: 0\nflags\t\t: fpu sse {line}\n")
        assert choose_recipe(cpu_int8_support(info)).name == expected[name], name
    assert choose_recipe(cpu_int8_support(tmp_path / "missing")).name == "u8s8-reduce-range"
    assert not RECIPES["u8s8"].reduce_range and RECIPES["u8s8-reduce-range"].reduce_range


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("zoo", ["digits-cnn", "digits-resnet"])
def test_each_static_recipe_is_exact_in_int8_arithmetic(
    recipe: str, zoo: str, subject: Callable[..., Subject], tmp_path: Path
) -> None:
    """Both recipes, on any CPU: the int8 model computed exactly (QDQ unfused: no CPU kernel that
    can
    saturate) scores within a point of fp32, and the reduce-range recipe's weights fit in 7 bits."""
    subj = subject(f"zoo:{zoo}")
    fp32 = export_onnx(subj.model, subj.example_input, tmp_path / "model.onnx")
    assert subj.data.train is not None
    result = quantize_onnx(
        fp32, tmp_path / "int8.onnx", "static", subj.data.train.x.numpy(), recipe=recipe
    )
    assert result.recipe.name == recipe
    x, y = subj.data.test.x.numpy(), subj.data.test.y.numpy()
    fp32_acc = float((OrtModel(fp32)(x).argmax(1) == y).mean())
    exact_acc = float((simulated_logits(result.path, x).argmax(1) == y).mean())
    assert abs(exact_acc - fp32_acc) <= TOLERANCE
    weights = _int8_weights(result.path)
    assert weights, "no int8 weights in the quantized graph"
    widest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    if RECIPES[recipe].reduce_range:
        assert widest <= 64  # 7 bits: [-64, 63]
    else:
        assert widest > 64  # the full 8-bit range is used


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_dynamic_recipe(recipe: str, subject: Callable[..., Subject], tmp_path: Path) -> None:
    subj = subject("zoo:digits-mlp")
    fp32 = export_onnx(subj.model, subj.example_input, tmp_path / "model.onnx")
    result = quantize_onnx(fp32, tmp_path / "int8.onnx", "dynamic", recipe=recipe)
    widest = max(int(np.abs(w.astype(np.int32)).max()) for w in _int8_weights(result.path))
    assert (widest <= 64) == RECIPES[recipe].reduce_range
    metrics, _ = measure_onnx(result.path, subj.data, runs=30)
    dense, _ = subj.dense()
    assert abs(metrics.accuracy - dense.accuracy) <= TOLERANCE


def test_unknown_recipe_is_refused(subject: Callable[..., Subject], tmp_path: Path) -> None:
    subj = subject("zoo:digits-mlp")
    fp32 = export_onnx(subj.model, subj.example_input, tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="'u4s4'"):
        quantize_onnx(fp32, tmp_path / "x.onnx", "dynamic", recipe="u4s4")
