"""Models and data users bring: ``.onnx`` (our interpreter against ONNX Runtime on the original
file), ``.pt2`` (against the torch model it was exported from), CSV and image folders.

Oracles: ORT outputs of the user's own ONNX file; the original torch model's outputs; the same
plan applied to the original model (layer names survive, so plans transfer).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from explorer.data import load_data
from explorer.errors import DataError, ModelLoadError
from explorer.models import load_model
from explorer.models.onnx_import import load_onnx
from explorer.models.pt2_import import load_program
from explorer.models.zoo import build
from explorer.plan import LayerRule, PruningPlan
from explorer.prune import apply_plan
from explorer.runtime import OrtModel, export_onnx
from explorer.subject import Subject

TOL = 1e-4


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    return OrtModel(path, threads=1)(x.astype(np.float32))


def _export_dynamo(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x[:2],),
            dynamo=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    assert program is not None
    program.save(str(path), external_data=False)
    return path


def _save_program(
    model: torch.nn.Module,
    x: torch.Tensor,
    path: Path,
    dynamic: bool = True,
    decompose: bool = False,
) -> Path:
    if dynamic:
        program = torch.export.export(
            model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
    else:
        program = torch.export.export(model, (x[:1],))
    if (
        decompose
    ):  # core ATen: aten.convolution, addmm on a transposed weight, decomposed batch norm
        program = program.run_decompositions()
    torch.export.save(program, path)
    return path


@pytest.fixture(scope="module")
def digits_cnn_x() -> torch.Tensor:
    return load_data("zoo:digits-cnn").test.x[:16]


# --- ONNX ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("zoo_name", ["digits-cnn", "digits-resnet"])
def test_onnx_interpreter_matches_ort_on_the_original_file(
    zoo_name: str, exporter: str, tmp_path: Path
) -> None:
    model = build(zoo_name).eval()
    x = load_data(f"zoo:{zoo_name}").test.x[:16]
    path = tmp_path / "model.onnx"
    export_onnx(model, x[:1], path) if exporter == "torchscript" else _export_dynamo(model, x, path)
    module = load_onnx(path)
    with torch.no_grad():
        ours = module(x).numpy()
    np.testing.assert_allclose(ours, _ort(path, x.numpy()), atol=TOL, rtol=TOL)
    # Layers are real modules named as in the torch model.
    torch_names = {
        n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    }
    onnx_names = {
        n for n, m in module.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    }
    assert onnx_names == torch_names


def test_onnx_unseen_models_match_ort(unseen: object, tmp_path: Path) -> None:
    for name in ("mobilenet", "inception", "residual_1d", "tabular_mlp", "transformer"):
        model = getattr(unseen, name)().eval()
        x = torch.from_numpy(unseen.make_data(name, 12)[0])  # type: ignore[attr-defined]
        path = export_onnx(model, x[:1], tmp_path / f"{name}.onnx")
        with torch.no_grad():
            ours = load_onnx(path)(x).numpy()
        np.testing.assert_allclose(ours, _ort(path, x.numpy()), atol=TOL, rtol=TOL, err_msg=name)


def test_onnx_structured_pruning_removes_channels_and_reexports(
    tmp_path: Path, digits_cnn_x: torch.Tensor
) -> None:
    """DepGraph groups the interpreter's layers; the pruned module exports and ORT agrees with
    it."""
    model = build("digits-cnn").eval()
    src = export_onnx(model, digits_cnn_x[:1], tmp_path / "cnn.onnx")
    module = load_model(str(src))
    module.requires_grad_(False)
    from explorer.inspect import inventory

    inv = inventory(module, digits_cnn_x[:1])
    assert not inv.structured_error
    assert set(inv.groups) == {"features.0", "features.3", "features.7", "features.11"}
    plan = PruningPlan.uniform("l1-structured", list(inv.groups), 0.5)
    pruned = apply_plan(module, plan, digits_cnn_x[:1], inv)
    assert pruned.get_submodule("features.3").out_channels == 32
    assert sum(p.numel() for p in pruned.parameters()) < 0.3 * sum(
        p.numel() for p in module.parameters()
    )
    out = export_onnx(pruned, digits_cnn_x[:1], tmp_path / "pruned.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(
            _ort(out, digits_cnn_x.numpy()), pruned(digits_cnn_x).numpy(), atol=TOL, rtol=TOL
        )
    assert out.stat().st_size < 0.3 * src.stat().st_size


def test_onnx_plan_transfers_from_the_torch_model(tmp_path: Path) -> None:
    """A plan made on the torch MLP gives the same pruned outputs on its ONNX export."""
    model = build("digits-mlp").eval()
    x = load_data("zoo:digits-mlp").test.x[:32]
    module = load_onnx(export_onnx(model, x[:1], tmp_path / "mlp.onnx"))
    plan = PruningPlan(
        method="l1-structured",
        layers={"hidden.0": LayerRule(0.5), "classifier": LayerRule(0.3, "l1-unstructured")},
    )
    with torch.no_grad():
        a = apply_plan(model, plan, x[:1])(x)
        b = apply_plan(module, plan, x[:1])(x)
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def _check_graph(
    tmp_path: Path,
    name: str,
    nodes: list,
    inputs: list,
    output: tuple[str, list],
    inits: dict[str, np.ndarray],
    x: np.ndarray,
    opset: int = 17,
) -> None:
    graph = helper.make_graph(
        nodes,
        name,
        inputs,
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    with torch.no_grad():
        ours = load_onnx(path)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _ort(path, x), atol=TOL, rtol=TOL, err_msg=name)


def test_onnx_conv_and_pooling_ops_match_ort(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    nodes = [
        helper.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 0, 0, 1], strides=[1, 1], name="/stem/Conv"
        ),
        helper.make_node(
            "BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"], epsilon=1e-3
        ),
        helper.make_node("LeakyRelu", ["bn"], ["a1"], alpha=0.1),
        helper.make_node(
            "Conv", ["a1", "w2"], ["c2"], group=2, auto_pad="SAME_UPPER", strides=[2, 2]
        ),
        helper.make_node(
            "MaxPool", ["c2"], ["p1"], kernel_shape=[3, 3], auto_pad="SAME_LOWER", strides=[1, 1]
        ),
        helper.make_node(
            "AveragePool",
            ["p1"],
            ["p2"],
            kernel_shape=[2, 2],
            pads=[1, 1, 0, 0],
            count_include_pad=1,
        ),
        helper.make_node("HardSigmoid", ["p2"], ["h"], alpha=0.3, beta=0.4),
        helper.make_node("Mul", ["h", "p2"], ["hs"]),
        helper.make_node("GlobalAveragePool", ["hs"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["logits"], alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    inits = {
        "w1": f(4, 3, 3, 3),
        "b1": f(4),
        "g": f(4),
        "be": f(4),
        "mu": f(4),
        "var": np.abs(f(4)) + 0.5,
        "w2": f(6, 2, 3, 3),
        "wg": f(6, 5),
        "bg": f(5),
    }
    _check_graph(
        tmp_path,
        "convs",
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 9, 9])],
        ("y", ["n", 5]),
        inits,
        f(3, 3, 9, 9),
    )


def test_onnx_shape_and_elementwise_ops_match_ort(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),  # (n, 6, 4)
        helper.make_node(
            "Slice", ["t", "s_start", "s_end", "s_axes", "s_steps"], ["sl"]
        ),  # reverse, step 2
        helper.make_node("Shape", ["sl"], ["shp"]),
        helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["newshape"], axis=0),
        helper.make_node("Reshape", ["sl", "newshape"], ["flat"]),  # (n, 12)
        helper.make_node("MatMul", ["flat", "wm"], ["mm"]),
        helper.make_node("Add", ["mm", "bm"], ["lin"]),  # folded into a Linear
        helper.make_node("Split", ["lin", "split"], ["a", "b"], axis=1),
        helper.make_node("Clip", ["a", "lo", "hi"], ["ca"]),
        helper.make_node("Erf", ["b"], ["eb"]),
        helper.make_node("Greater", ["ca", "zero_f"], ["mask"]),
        helper.make_node("Where", ["mask", "ca", "eb"], ["w"]),
        helper.make_node("Unsqueeze", ["w", "axes1"], ["w3"]),  # (n, 1, 4)
        helper.make_node("Pad", ["w3", "pads", "pad_value"], ["pd"], mode="constant"),  # (n, 1, 6)
        helper.make_node("ReduceMean", ["pd"], ["rm"], axes=[1], keepdims=0),  # (n, 6)
        helper.make_node("Tanh", ["rm"], ["th"]),
        helper.make_node("Sub", ["th", "c"], ["d"]),
        helper.make_node("Div", ["d", "two"], ["y"]),
    ]
    inits = {
        "s_start": i64(-1),
        "s_end": i64(-100),
        "s_axes": i64(2),
        "s_steps": i64(-2),
        "zero": np.array(0, dtype=np.int64),
        "axes0": i64(0),
        "minus1": i64(-1),
        "wm": f(12, 8),
        "bm": f(8),
        "split": i64(4, 4),
        "lo": np.array(-0.5, np.float32),
        "hi": np.array(0.7, np.float32),
        "zero_f": np.array(0.0, np.float32),
        "axes1": i64(1),
        "pads": i64(0, 0, 1, 0, 0, 1),
        "pad_value": np.array(0.25, np.float32),
        "c": f(6),
        "two": np.array(2.0, np.float32),
    }
    _check_graph(
        tmp_path,
        "shapes",
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6])],
        ("y", ["n", 6]),
        inits,
        f(5, 4, 6),
    )


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    model = build("digits-mlp").eval()
    src = export_onnx(model, torch.rand(1, 64), tmp_path / "mlp.onnx")
    proto = onnx.load(src)
    tensor = proto.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    onnx.save(proto, tmp_path / "external.onnx")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_onnx(tmp_path / "external.onnx")


# --- .pt2 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dynamic", "decompose"),
    [(True, False), (False, False), (True, True)],
    ids=["dynamic-batch", "static-batch", "core-aten"],
)
@pytest.mark.parametrize("zoo_name", ["digits-cnn", "digits-resnet"])
def test_pt2_matches_the_torch_model_at_any_batch(
    zoo_name: str, dynamic: bool, decompose: bool, tmp_path: Path
) -> None:
    model = build(zoo_name).eval()
    x = load_data(f"zoo:{zoo_name}").test.x[:7]
    loaded = load_program(_save_program(model, x, tmp_path / "m.pt2", dynamic, decompose))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
    layer_types = (torch.nn.Conv2d, torch.nn.Linear)
    assert [n for n, m in loaded.named_modules() if isinstance(m, layer_types)] == [
        n for n, m in model.named_modules() if isinstance(m, layer_types)
    ]
    loaded.train()  # real layers: train()/eval() work (torch's rebuilt module refuses them)
    loaded.eval()


def test_pt2_plan_transfers_from_the_torch_model(tmp_path: Path) -> None:
    """The same structured plan on the torch model and on its .pt2 gives the same outputs."""
    model = build("digits-resnet").eval()
    x = load_data("zoo:digits-resnet").test.x[:8]
    loaded = load_model(str(_save_program(model, x, tmp_path / "resnet.pt2")))
    plan = PruningPlan(
        method="l2-structured",
        layers={
            "layer1.0.conv1": LayerRule(0.5),
            "stem.0": LayerRule(0.25),
            "fc": LayerRule(0.4, "l1-unstructured"),
        },
    )
    with torch.no_grad():
        torch.testing.assert_close(
            apply_plan(loaded, plan, x[:1])(x),
            apply_plan(model, plan, x[:1])(x),
            atol=1e-5,
            rtol=1e-5,
        )


def test_pt2_guard_code_is_never_run(tmp_path: Path) -> None:
    """Guard code in the file would be exec'd by ExportedProgram.module(); we drop it."""
    import json
    import zipfile

    model = build("digits-mlp").eval()
    src = _save_program(model, torch.rand(2, 64), tmp_path / "mlp.pt2")
    sentinel = tmp_path / "RAN"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "guards.pt2", "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("models/model.json"):
                program = json.loads(data)
                program["guards_code"] = [f"open({str(sentinel)!r}, 'w') is None"]
                data = json.dumps(program).encode()
            zout.writestr(name, data)
    loaded = load_program(tmp_path / "guards.pt2")
    with torch.no_grad():
        loaded(torch.rand(3, 64))
    assert not sentinel.exists()


def test_pt2_through_the_subject(tmp_path: Path) -> None:
    model = build("digits-cnn").eval()
    data = load_data("zoo:digits-cnn").test
    np.savez(tmp_path / "d.npz", x=data.x.numpy()[:64], y=data.y.numpy()[:64])
    spec = str(_save_program(model, data.x[:2], tmp_path / "cnn.pt2"))
    s = Subject(spec, str(tmp_path / "d.npz"), runs=30)
    assert s.inventory.groups and not s.inventory.structured_error
    with torch.no_grad():
        zoo_acc = float((model(data.x[:64]).argmax(1) == data.y[:64]).float().mean())
    dense, _ = s.dense()
    assert dense.accuracy == pytest.approx(zoo_acc, abs=1e-9)


# --- data ----------------------------------------------------------------------------------------


def test_csv_with_and_without_labels(tmp_path: Path) -> None:
    d = load_data("zoo:digits-mlp").test
    x, y = d.x.numpy()[:50], d.y.numpy()[:50]
    frame = pd.DataFrame(x, columns=[f"p{i}" for i in range(64)])
    frame.insert(10, "label", y)  # the label column may be anywhere
    frame.to_csv(tmp_path / "l.csv", index=False)
    frame.drop(columns="label").to_csv(tmp_path / "u.csv", index=False)
    pd.DataFrame(x).to_csv(tmp_path / "noheader.csv", index=False, header=False)
    labelled = load_data(str(tmp_path / "l.csv"))
    np.testing.assert_allclose(labelled.test.x.numpy(), x, atol=1e-6)
    assert labelled.test.y is not None and labelled.test.y.tolist() == y.tolist()
    for name in ("u.csv", "noheader.csv"):
        unlabelled = load_data(str(tmp_path / name))
        assert not unlabelled.has_labels and unlabelled.test.x.shape == (50, 64)


def test_csv_rows_take_the_model_input_shape(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((6, 2 * 3 * 4), dtype=np.float32)
    pd.DataFrame(x).to_csv(tmp_path / "rows.csv", index=False)
    data = load_data(str(tmp_path / "rows.csv"), input_shape=(2, 3, 4))
    assert data.test.x.shape == (6, 2, 3, 4)
    with pytest.raises(DataError, match=r"\(24,\) but the model takes \(5, 5\)"):
        load_data(str(tmp_path / "rows.csv"), input_shape=(5, 5))


def test_unlabelled_data_scores_agreement_with_the_dense_model(tmp_path: Path) -> None:
    d = load_data("zoo:digits-mlp").test
    pd.DataFrame(d.x.numpy()[:80]).to_csv(tmp_path / "u.csv", index=False)
    s = Subject("zoo:digits-mlp", str(tmp_path / "u.csv"), runs=30)
    dense, _ = s.dense()
    assert (
        dense.labels is False
        and dense.accuracy == 1.0
        and dense.loss == pytest.approx(0.0, abs=1e-6)
    )
    plan = PruningPlan.uniform("l1-unstructured", s.layer_names, 0.9)
    result = s.evaluate(plan).to_dict()
    assert result["labels"] is False and result["accuracy"] < 1.0 and result["loss"] > 0


def _write_digit_images(root: Path, n: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    d = load_data("zoo:digits-mlp").test
    images, labels = d.x.numpy()[:n].reshape(n, 8, 8), d.y.numpy()[:n]
    for i, (img, label) in enumerate(zip(images, labels, strict=False)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).round().astype(np.uint8), mode="L").convert(mode).save(
            folder / f"{i}.png"
        )
    return images, labels


def test_image_folder_is_resized_to_the_model_input(tmp_path: Path) -> None:
    _write_digit_images(tmp_path / "rgb", 40, "RGB")
    gray = load_data(str(tmp_path / "rgb"), input_shape=(1, 32, 32))  # RGB files, a 1-channel model
    assert gray.test.x.shape == (40, 1, 32, 32) and gray.has_labels
    rgb = load_data(str(tmp_path / "rgb"), input_shape=(3, None, None))  # native size, 3 channels
    assert rgb.test.x.shape == (40, 3, 8, 8)
    torch.testing.assert_close(rgb.test.x[:, 0], rgb.test.x[:, 2])  # gray pixels in RGB files
    assert float(rgb.test.x.min()) >= 0 and float(rgb.test.x.max()) <= 1
    # Labels are the indices of the sorted class folder names.
    classes = sorted(p.name for p in (tmp_path / "rgb").iterdir())
    assert sorted(set(gray.test.y.tolist())) == list(range(len(classes)))
    with pytest.raises(DataError, match="2 input channels"):
        load_data(str(tmp_path / "rgb"), input_shape=(2, 8, 8))


def test_image_folder_through_the_subject_matches_the_zoo_accuracy(tmp_path: Path) -> None:
    """The zoo CNN's own test digits, as PNG files resized by us, keep its accuracy (within 2%)."""
    _write_digit_images(tmp_path / "digits", 120, "L")
    s = Subject("zoo:digits-cnn", str(tmp_path / "digits"), runs=30)
    assert s.data.test.x.shape[1:] == (1, 32, 32)
    zoo = load_data("zoo:digits-cnn").test
    model = build("digits-cnn").eval()
    with torch.no_grad():
        zoo_acc = float((model(zoo.x[:120]).argmax(1) == zoo.y[:120]).float().mean())
    # Folder labels are indices of the sorted class names: class_0 ... class_9 are the digits.
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == [
        f"class_{i}" for i in range(10)
    ]
    dense, _ = s.dense()
    assert dense.accuracy == pytest.approx(zoo_acc, abs=0.02)


def test_zoo_digits_are_scikit_learns_digits() -> None:
    """Read from scikit-learn's data file without importing it: the same arrays as load_digits."""
    from sklearn.datasets import load_digits

    from explorer.data import _digits_arrays

    images, target = _digits_arrays()
    digits = load_digits()
    assert np.array_equal(images, digits.images.astype(np.float32) / 16.0)
    assert np.array_equal(target, digits.target)
