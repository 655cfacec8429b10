"""ONNX graphs with ops the interpreter does not run: those nodes run in ONNX Runtime.

Oracles: ONNX Runtime on the user's own file (the torch module must agree with it), the
initializers of the written file (they must be the loaded ones times the torch mask), and
``torch.nn.utils.prune`` for the L1 masks.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from torch.nn.utils import prune as torch_prune

from explorer import sensitivity as sens
from explorer.allocate import allocate
from explorer.cli import main
from explorer.errors import ExportError, PlanError, RecoverError
from explorer.evaluate import evaluate_torch
from explorer.methods import available_methods, get_method
from explorer.models.onnx_import import load_onnx
from explorer.plan import LayerRule, PruningPlan
from explorer.recover import finetune, not_recoverable
from explorer.report import export_bundle
from explorer.sensitivity.engines import engine_for
from explorer.subject import Subject

ORT_GRAPH = Path(__file__).resolve().parents[1] / "models" / "ort_graph.py"
UNSTRUCTURED = [m for m in available_methods() if not get_method(m).structured]
DATA_FREE = [
    m for m in UNSTRUCTURED if not get_method(m).needs_data
]  # data-aware ones read layer inputs
STRUCTURED = [m for m in available_methods() if get_method(m).structured]


def _ort_graph():
    spec = importlib.util.spec_from_file_location("_ort_graph", ORT_GRAPH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _ort_graph().write(tmp_path_factory.mktemp("ort-graph"))


@pytest.fixture(scope="module")
def subject(files: tuple[Path, Path]) -> Subject:
    return Subject(str(files[0]), str(files[1]), runs=30)


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _plan(method: str, layers: dict[str, float]) -> PruningPlan:
    return PruningPlan(method=method, layers={n: LayerRule(r) for n, r in layers.items()})


def test_ops_run_in_ort_and_the_module_agrees_with_the_file(
    subject: Subject, files: tuple[Path, Path]
) -> None:
    model = subject.model
    assert model.ort_ops == tuple(sorted(_ort_graph().OPS))
    x = subject.data.test.x
    with torch.no_grad():
        ours = model(x).numpy()
    np.testing.assert_allclose(ours, _ort_logits(files[0], x.numpy()), atol=1e-4)
    assert subject.layer_names == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert "ONNX Runtime" in subject.inventory.structured_error
    assert subject.inventory.groups == {}


def test_dense_model_is_measured_on_the_users_own_file(
    subject: Subject, files: tuple[Path, Path], tmp_path: Path
) -> None:
    path = tmp_path / "dense.onnx"
    subject.measure(subject.model, onnx_path=path)
    assert onnx.load(str(path)).SerializeToString() == onnx.load(str(files[0])).SerializeToString()
    logits = _ort_logits(files[0], subject.data.test.x.numpy())
    accuracy = float((logits.argmax(1) == subject.data.test.y.numpy()).mean())
    assert subject.dense()[0].accuracy == pytest.approx(accuracy)


@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_pruned_file_is_the_users_graph_with_the_torch_masks(
    method: str, subject: Subject, files: tuple[Path, Path], tmp_path: Path
) -> None:
    plan = _plan(method, {"conv2": 0.5, "conv3": 0.7, "fc1": 0.8})
    if why := get_method(method).applies_to(
        "conv2", subject.inventory
    ):  # e.g. SparseGPT updates weights
        assert "ONNX Runtime" in why
        with pytest.raises(PlanError, match="ONNX Runtime"):
            subject.prune(plan)
        return
    pruned = subject.prune(plan)
    path = tmp_path / "pruned.onnx"
    metrics = subject.measure(pruned, onnx_path=path)
    original, written = onnx.load(str(files[0])), onnx.load(str(path))
    assert [(n.domain, n.op_type) for n in written.graph.node] == [
        (n.domain, n.op_type) for n in original.graph.node
    ]
    before, after = _initializers(files[0]), _initializers(path)
    modules = dict(pruned.named_modules())
    for name in ("conv2", "conv3", "fc1"):
        weight = (
            modules[name].weight.detach().numpy()
        )  # Gemm transB=1 and Conv: same layout as the file
        np.testing.assert_array_equal(
            after[f"{name}.weight"], before[f"{name}.weight"] * (weight != 0)
        )
        assert (after[f"{name}.weight"] == 0).any()
    for name in ("conv1.weight", "fc2.weight", "conv2.bias", "norm.weight"):  # untouched
        np.testing.assert_array_equal(after[name], before[name])
    x = subject.data.test.x
    with torch.no_grad():
        ours = pruned(x).numpy()
    logits = _ort_logits(path, x.numpy())
    np.testing.assert_allclose(ours, logits, atol=1e-4)
    assert metrics.accuracy == pytest.approx(
        float((logits.argmax(1) == subject.data.test.y.numpy()).mean())
    )
    assert metrics.params_nonzero < subject.dense()[0].params_nonzero


def test_l1_masks_match_torch_prune(
    subject: Subject, files: tuple[Path, Path], tmp_path: Path
) -> None:
    pruned = subject.prune(_plan("l1-unstructured", {"conv3": 0.6, "fc1": 0.3}))
    path = tmp_path / "l1.onnx"
    subject.measure(pruned, onnx_path=path)
    before, after = _initializers(files[0]), _initializers(path)
    for name, ratio in (("conv3", 0.6), ("fc1", 0.3)):
        reference = torch.nn.Linear(1, 1)
        reference.weight = torch.nn.Parameter(torch.from_numpy(before[f"{name}.weight"].copy()))
        torch_prune.l1_unstructured(reference, "weight", amount=ratio)
        np.testing.assert_array_equal(
            after[f"{name}.weight"] != 0, reference.weight_mask.numpy() != 0
        )


@pytest.mark.parametrize("method", STRUCTURED)
def test_structured_methods_are_refused_with_the_ops(method: str, subject: Subject) -> None:
    with pytest.raises(PlanError, match="ONNX Runtime"):
        subject.prune(_plan(method, {"conv2": 0.5}))
    with pytest.raises(PlanError, match="InstanceNormalization"):
        sens.scan(subject, method, [0.5], cache=False)


def test_sensitivity_uses_the_fast_engine_and_matches_distillers_loop(subject: Subject) -> None:
    assert engine_for(subject, get_method("l1-unstructured")).name == "onnxruntime-suffix"
    fast = sens.scan(subject, "l1-unstructured", [0.3, 0.8], cache=False)
    slow = sens.reference_scan(subject, "l1-unstructured", [0.3, 0.8])
    assert len(fast) == len(slow) == 5 * 3
    np.testing.assert_allclose(
        fast.accuracy.to_numpy(), slow.accuracy.to_numpy(), atol=1.5 / len(subject.data.test)
    )
    np.testing.assert_allclose(fast.loss.to_numpy(), slow.loss.to_numpy(), atol=1e-3)


def test_allocation_for_sparsity_is_met_and_measured(subject: Subject) -> None:
    found = allocate(subject, ("sparsity", 0.6), "l1-unstructured")
    assert found.met and found.achieved >= 0.6
    pruned = subject.prune(found.plan)
    assert found.verified_accuracy == pytest.approx(evaluate_torch(pruned, subject.data.test)[0])


def test_nothing_but_zeros_is_written_back(subject: Subject, tmp_path: Path) -> None:
    assert "no gradient" in not_recoverable(subject.model)
    with pytest.raises(RecoverError, match="ONNX Runtime"):
        finetune(subject.model, subject.data, 1)
    changed = subject.prune(_plan("l1-unstructured", {"fc1": 0.5}))
    with torch.no_grad():
        changed.fc1.bias.add_(1.0)
    with pytest.raises(ExportError, match="fc1.bias"):
        subject.measure(changed, onnx_path=tmp_path / "x.onnx")
    tuned = subject.prune(_plan("l1-unstructured", {"fc1": 0.5}))
    with torch.no_grad():
        tuned.conv1.weight.mul_(1.5)
    with pytest.raises(ExportError, match="'conv1'"):
        subject.measure(tuned, onnx_path=tmp_path / "y.onnx")


def test_export_bundle_holds_the_users_graph(
    subject: Subject, files: tuple[Path, Path], tmp_path: Path
) -> None:
    written = export_bundle(
        subject, _plan("2:4", {"conv3": 0.5, "fc1": 0.5}), tmp_path / "out", quantize="int8"
    )
    assert "pt2" not in written and {"onnx", "int8", "state_dict", "report", "metrics"} <= set(
        written
    )
    metrics = json.loads(written["metrics"].read_text())
    assert "ONNX Runtime" in metrics["pt2_error"]
    ops = [(n.domain, n.op_type) for n in onnx.load(str(written["onnx"])).graph.node]
    assert ("com.microsoft", "Gelu") in ops and ("", "Resize") in ops
    state = torch.load(written["state_dict"], weights_only=True)
    fc1 = state["fc1.weight"].reshape(-1, 4)
    assert ((fc1 == 0).sum(1) >= 2).all()  # 2:4 along the input dimension
    assert metrics["accuracy"] == pytest.approx(
        float(
            (
                _ort_logits(written["onnx"], subject.data.test.x.numpy()).argmax(1)
                == subject.data.test.y.numpy()
            ).mean()
        )
    )


def test_cli_runs_the_whole_loop(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = ["--model", str(files[0]), "--data", str(files[1])]
    assert main(["layers", *spec, "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)] == [
        "conv1",
        "conv2",
        "conv3",
        "fc1",
        "fc2",
    ]
    assert (
        main(["allocate", *spec, "--target-sparsity", "0.5", "--out", str(tmp_path / "plan.json")])
        == 0
    )
    capsys.readouterr()
    assert (
        main(["evaluate", *spec, "--plan", str(tmp_path / "plan.json"), "--json", "--runs", "30"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["params_nonzero"] < result["dense"]["params_nonzero"]
    assert main(["sensitivity", *spec, "--ratios", "0.5", "--out", str(tmp_path / "s.csv")]) == 0
    assert (
        main(
            ["export", *spec, "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "out")]
        )
        == 0
    )
    structured = tmp_path / "structured.json"
    _plan("l1-structured", {"conv2": 0.5}).save(structured)
    capsys.readouterr()
    assert main(["evaluate", *spec, "--plan", str(structured)]) == 2
    assert "InstanceNormalization" in capsys.readouterr().err
    assert (
        main(
            [
                "export",
                *spec,
                "--plan",
                str(tmp_path / "plan.json"),
                "--out",
                str(tmp_path / "ft"),
                "--finetune-epochs",
                "1",
            ]
        )
        == 2
    )


def _hand_made(tmp_path: Path) -> Path:
    """MatMul with a constant (in, out) weight and a bias Add, Gemm with transB=0 and alpha, a
    weight
    in a Constant node, and an op the interpreter lacks (LpNormalization) in between."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 12)).astype(np.float32)
    b = rng.normal(size=(12,)).astype(np.float32)
    c = rng.normal(size=(12, 8)).astype(np.float32)
    d = rng.normal(size=(8, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["h0"], name="mm"),
        helper.make_node("Add", ["h0", "B"], ["h1"], name="bias"),
        helper.make_node("LpNormalization", ["h1"], ["h2"], axis=1, p=2, name="norm"),
        helper.make_node("Gemm", ["h2", "C"], ["h3"], alpha=0.5, transB=0, name="gemm"),
        helper.make_node("Relu", ["h3"], ["h4"], name="relu"),
        helper.make_node(
            "Constant", [], ["D"], value=numpy_helper.from_array(d, "D"), name="const"
        ),
        helper.make_node("MatMul", ["h4", "D"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])],
        [
            numpy_helper.from_array(a, "A"),
            numpy_helper.from_array(b, "B"),
            numpy_helper.from_array(c, "C"),
        ],
    )
    path = tmp_path / "hand.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path
    )
    return path


@pytest.mark.parametrize("method", ["l1-unstructured", "2:4"])
def test_transposed_and_constant_weights_are_written_back(method: str, tmp_path: Path) -> None:
    path = _hand_made(tmp_path)
    model = load_onnx(path)
    assert model.ort_ops == ("LpNormalization",)
    x = np.random.default_rng(1).normal(size=(32, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "data.npz", x=x)
    subject = Subject(str(path), str(tmp_path / "data.npz"), runs=30)
    layers = subject.layer_names
    assert len(layers) == 3
    pruned = subject.prune(_plan(method, {name: 0.5 for name in layers}))
    out = subject.measure(pruned, onnx_path=tmp_path / "pruned.onnx")
    assert not out.labels
    with torch.no_grad():
        ours = pruned(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _ort_logits(tmp_path / "pruned.onnx", x), atol=1e-4)
    written = onnx.load(str(tmp_path / "pruned.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in written.graph.initializer}
    constant = next(
        numpy_helper.to_array(n.attribute[0].t)
        for n in written.graph.node
        if n.op_type == "Constant"
    )
    for weight in (inits["A"], inits["C"], constant):  # (in, out): the reduction axis is 0
        assert (weight == 0).mean() == pytest.approx(0.5, abs=0.05)
        if method == "2:4":
            groups = weight.T.reshape(weight.shape[1], -1, 4)
            assert ((groups == 0).sum(-1) >= 2).all()


class _Recurrent(torch.nn.Module):
    """An LSTM over the rows of an image, then a ConvTranspose on its outputs: both run in ORT."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.up = torch.nn.ConvTranspose2d(1, 4, 2, stride=2)
        self.head = torch.nn.Linear(4 * 16 * 32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, _ = self.lstm(x.squeeze(1))  # (n, 8, 16)
        return self.head(self.up(rows.unsqueeze(1)).flatten(1))


@pytest.mark.parametrize("method", DATA_FREE)
def test_weights_that_ort_ops_read_are_prunable_layers(method: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(48, 1, 8, 8)
    torch.onnx.export(
        _Recurrent().eval(),
        (x[:1],),
        str(tmp_path / "rnn.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    np.savez(tmp_path / "x.npz", x=x.numpy())
    subject = Subject(str(tmp_path / "rnn.onnx"), str(tmp_path / "x.npz"), runs=30)
    assert subject.model.ort_ops == ("ConvTranspose", "LSTM")
    types = {info.name: info.type for info in subject.inventory.layers}
    assert types == {
        "head": "Linear",
        "lstm.W": "LSTM.W",
        "lstm.R": "LSTM.R",
        "up": "ConvTranspose.W",
    }
    pruned = subject.prune(_plan(method, {name: 0.5 for name in types}))
    path = tmp_path / "pruned.onnx"
    subject.measure(pruned, onnx_path=path)
    with torch.no_grad():
        ours = pruned(x).numpy()
    np.testing.assert_allclose(ours, _ort_logits(path, x.numpy()), atol=1e-4)
    before, after = _initializers(tmp_path / "rnn.onnx"), _initializers(path)
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert len(changed) == 4  # W, R, the kernel and the head; the LSTM's biases stay dense
    modules = dict(pruned.named_modules())
    for layer in ("lstm.W", "lstm.R", "up"):
        stored = modules[layer].weight.detach()
        file_value = next(
            after[name]
            for name in changed
            if after[name].shape == tuple(modules[layer].value().shape)
            and np.array_equal(after[name] != 0, modules[layer].value().numpy() != 0)
        )
        assert (file_value == 0).mean() == pytest.approx(0.5, abs=0.02)
        if (
            method == "2:4"
        ):  # groups along what the op sums over: the input features, the input channels
            rows = stored.reshape(stored.shape[0], -1, 4)
            assert ((rows == 0).sum(-1) >= 2).all()


def test_a_file_with_a_fixed_batch_size_is_fed_batch_by_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(21, 1, 8, 8)
    torch.onnx.export(
        _Recurrent().eval(),
        (x[:1],),
        str(tmp_path / "fixed.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
    )  # no dynamic axes: batch 1 only
    assert (
        onnx.load(str(tmp_path / "fixed.onnx"))
        .graph.input[0]
        .type.tensor_type.shape.dim[0]
        .dim_value
        == 1
    )
    np.savez(tmp_path / "x.npz", x=x.numpy(), y=np.arange(21) % 5)
    subject = Subject(str(tmp_path / "fixed.onnx"), str(tmp_path / "x.npz"), runs=30)
    session = ort.InferenceSession(str(tmp_path / "fixed.onnx"), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [session.run(None, {"x": x[i : i + 1].numpy()})[0] for i in range(len(x))]
    )
    dense, ort_logits = subject.dense()
    np.testing.assert_allclose(ort_logits, logits, atol=1e-6)
    assert dense.accuracy == pytest.approx(float((logits.argmax(1) == np.arange(21) % 5).mean()))
    assert (
        subject.evaluate(_plan("l1-unstructured", {"head": 0.5})).pruned.params_nonzero
        < dense.params_nonzero
    )


def test_data_aware_methods_refuse_weights_read_inside_onnx_runtime(tmp_path: Path) -> None:
    """A weight an op run in ONNX Runtime reads has no input a hook can see: data-aware criteria
    say so for it, and prune the real layers of the same graph."""
    x = torch.randn(48, 1, 8, 8)
    torch.onnx.export(
        _Recurrent().eval(),
        (x[:1],),
        str(tmp_path / "rnn.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    np.savez(tmp_path / "x.npz", x=x.numpy())
    subject = Subject(str(tmp_path / "rnn.onnx"), str(tmp_path / "x.npz"), runs=30)
    for method in (m for m in UNSTRUCTURED if get_method(m).needs_data):
        for layer in ("lstm.W", "lstm.R", "up"):
            why = get_method(method).applies_to(layer, subject.inventory)
            assert why, (method, layer)
            with pytest.raises(PlanError, match=layer):
                subject.prune(_plan(method, {layer: 0.5}))
        if get_method(method).applies_to("head", subject.inventory) is None:
            pruned = subject.prune(_plan(method, {"head": 0.5}))
            head = dict(pruned.named_modules())["head"].weight
            assert (head == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
