"""int8: the quantized ONNX runs in ONNX Runtime and scores within 1 point of its fp32 source on every
zoo model (dense, and structurally pruned); its graph holds the int8 operators of its mode; the CPU
note reads the flags; errors are ExportError naming the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from explorer.errors import ExportError
from explorer.plan import PruningPlan
from explorer.quantize import (
    compare_int8,
    cpu_int8_support,
    measure_onnx,
    quantize_onnx,
)
from explorer.report import export_bundle
from explorer.runtime import OrtModel, export_onnx
from explorer.subject import Subject

EXPECTED_MODE = {"digits-mlp": "dynamic", "digits-cnn": "static", "digits-resnet": "static"}
TOLERANCE = 0.01  # one point of accuracy


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_scores_within_one_point(zoo_name: str, subject: Callable[..., Subject], tmp_path: Path) -> None:
    subj = subject(f"zoo:{zoo_name}")
    fp32 = export_onnx(subj.model, subj.example_input, tmp_path / "model.onnx")
    cmp = compare_int8(fp32, subj.data, tmp_path / "model.int8.onnx", runs=30)
    assert cmp.mode == EXPECTED_MODE[zoo_name]
    assert cmp.path.is_file()
    assert abs(cmp.int8.accuracy - cmp.fp32.accuracy) <= TOLERANCE
    assert cmp.agreement >= 0.98
    assert cmp.int8.onnx_bytes < 0.5 * cmp.fp32.onnx_bytes  # int8 weights: about a quarter
    ops = _ops(cmp.path)
    if cmp.mode == "static":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert cmp.calibration == "train"
    else:
        assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    # the fp32 numbers are those of the source file
    logits = OrtModel(fp32)(subj.data.test.x.numpy())
    assert cmp.fp32.accuracy == pytest.approx(float((logits.argmax(1) == subj.data.test.y.numpy()).mean()))
    d = cmp.to_dict()
    assert d["mode"] == cmp.mode and d["fp32"]["accuracy"] == cmp.fp32.accuracy
    assert d["accuracy"] == cmp.int8.accuracy and "note" in d["cpu"]


def test_int8_of_a_pruned_cnn(subject: Callable[..., Subject], tmp_path: Path) -> None:
    subj = subject("zoo:digits-cnn")
    convs = [layer.name for layer in subj.inventory.layers if layer.group is not None]
    pruned = subj.prune(PruningPlan.uniform("l1-structured", convs, 0.3))
    fp32 = export_onnx(pruned, subj.example_input, tmp_path / "pruned.onnx")
    cmp = compare_int8(fp32, subj.data, tmp_path / "pruned.int8.onnx", runs=30)
    assert cmp.mode == "static"
    assert abs(cmp.int8.accuracy - cmp.fp32.accuracy) <= TOLERANCE


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_both_modes_run_on_the_mlp(mode: str, subject: Callable[..., Subject], tmp_path: Path) -> None:
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
