"""The failure classes users met at the doors, each on the smallest model that shows it.

Oracles: ONNX Runtime on the user's own file, the original torch model, and for structured
removal the dense model with the removed channels silenced (zero weights produce zeros: removing
those channels must compute exactly the same).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from explorer.data import load_data
from explorer.errors import DataError, ModelLoadError
from explorer.inputs import Inputs, run_model
from explorer.inspect import inventory
from explorer.models import load_model
from explorer.models.onnx_import import load_onnx
from explorer.models.pt2_import import _PATH, _check_name
from explorer.plan import LayerRule, PruningPlan
from explorer.prune import apply_plan
from explorer.runtime import OrtModel, export_onnx
from explorer.tolerance import REL_TOL, relative_error


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    return OrtModel(path)(x)


# --- ONNX: constant subgraphs are folded, not refused
# -----------------------------------------------


def test_onnx_computed_bias_and_weight_are_folded(tmp_path: Path) -> None:
    """The TorchScript exporter deduplicates equal initializers behind an ``Identity`` (a
    "computed bias") and may leave a weight scaled by a constant: onnxscript's optimizer folds both,
    and the convolution becomes a layer like any other."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["b"], ["b2"], name="/features/Identity"),
        helper.make_node("Mul", ["w", "s"], ["ws"], name="/features/Mul"),
        helper.make_node(
            "Conv", ["x", "ws", "b2"], ["c"], pads=[1, 1, 1, 1], name="/features/features.0/Conv"
        ),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.full((4, 1, 1, 1), 0.5, np.float32), "s"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", 1, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", 1, ["n", 4])],
        inits,
    )
    path = tmp_path / "computed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    module = load_onnx(path)
    assert module.folded_nodes == 2 and not module.ort_ops
    assert isinstance(module.get_submodule("features.0"), nn.Conv2d)
    x = rng.normal(size=(5, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        assert relative_error(module(torch.from_numpy(x)), _ort(path, x)) <= REL_TOL


def test_deduplicated_initializers_are_separate_layers(tmp_path: Path) -> None:
    """Two batch norms whose scales the exporter stored once are two layers: pruning one group's
    channels must not touch the other's (they were one module in the interpreter before)."""

    class TwoBlocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.bn_a, self.bn_b = nn.BatchNorm2d(8), nn.BatchNorm2d(8)  # equal fresh parameters
            self.fc = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn_b(self.b(torch.relu(self.bn_a(self.a(x))))))
            return self.fc(x.mean((2, 3)))

    model = TwoBlocks().eval()
    x = torch.rand(4, 3, 8, 8)
    module = load_onnx(export_onnx(model, x[:1], tmp_path / "two.onnx"))
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 2 or not norms  # the exporter may fold them into the convolutions
    inv = inventory(module, x[:1])
    pruned = apply_plan(
        module, PruningPlan(method="l1-structured", layers={"a": LayerRule(0.5)}), x[:1], inv
    )
    with torch.no_grad():
        assert pruned(x).shape == (4, 2)


# --- ONNX ops text and vision models use
# ------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "gather_nd",
        "gather_nd_batch",
        "gather_elements",
        "resize_linear",
        "resize_cubic_sizes",
        "resize_align_corners",
    ],
)
def test_onnx_ops_match_ort(case: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    inits: list = []
    if case.startswith("gather"):
        x = x[:, 0]  # (2, 5, 6)
        if case == "gather_nd":
            idx = np.array([[1, 4], [0, -1]], np.int64)
            node = helper.make_node("GatherND", ["x", "i"], ["y"])
        elif case == "gather_nd_batch":
            idx = rng.integers(0, 5, (2, 3, 1)).astype(np.int64)
            node = helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=1)
        else:
            idx = rng.integers(-6, 6, (2, 5, 4)).astype(np.int64)
            node = helper.make_node("GatherElements", ["x", "i"], ["y"], axis=2)
        inits.append(numpy_helper.from_array(idx, "i"))
    else:
        mode = "cubic" if "cubic" in case else "linear"
        coords = "align_corners" if "align" in case else "half_pixel"
        inits.append(numpy_helper.from_array(np.zeros(0, np.float32), "roi"))
        if "sizes" in case:
            inits.append(numpy_helper.from_array(np.array([2, 3, 7, 9], np.int64), "sizes"))
            node = helper.make_node(
                "Resize",
                ["x", "roi", "", "sizes"],
                ["y"],
                mode=mode,
                coordinate_transformation_mode=coords,
            )
        else:
            inits.append(numpy_helper.from_array(np.array([1, 1, 2, 1.5], np.float32), "scales"))
            node = helper.make_node(
                "Resize",
                ["x", "roi", "scales"],
                ["y"],
                mode=mode,
                coordinate_transformation_mode=coords,
            )
    graph = helper.make_graph(
        [node],
        case,
        [helper.make_tensor_value_info("x", 1, list(x.shape))],
        [helper.make_tensor_value_info("y", 1, None)],
        inits,
    )
    path = tmp_path / f"{case}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    expected = _ort(path, x)
    # ONNX's checker wants the output's shape declared, as exporters write it: ONNX Runtime's.
    graph.output[0].CopyFrom(helper.make_tensor_value_info("y", 1, list(expected.shape)))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    module = load_onnx(path)
    assert module.ort_ops == ()  # run by the interpreter, not handed to ONNX Runtime
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=1e-5)


# --- .pt2: names torch accepts, tolerance relative to the outputs ---------------------------------


def test_pt2_weight_names_may_hold_a_dash_but_code_names_may_not(tmp_path: Path) -> None:
    _check_name(
        "trunk_output.block1.block1-0.proj.0.weight", tmp_path, _PATH
    )  # torchvision's RegNet
    for bad in ('block1-0"); import os; ("', "a.b\\c", "a b"):
        with pytest.raises(ModelLoadError, match="only identifiers"):
            _check_name(bad, tmp_path, _PATH)
    with pytest.raises(ModelLoadError, match="only identifiers"):
        _check_name("x-y", tmp_path)  # a variable of the generated code: identifiers only


def test_pt2_with_large_outputs_loads(tmp_path: Path) -> None:
    """Logits of scale ~1e3 (a ResNet-50's reach 13): the check that turning the program into layers
    kept its outputs is relative to their scale, not absolute."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 14 * 14, 10),
    ).eval()
    with torch.no_grad():
        model[4].weight.mul_(5000.0)  # logits of scale ~1e3
    x = torch.rand(2, 3, 16, 16)
    path = tmp_path / "big.pt2"
    torch.export.save(
        torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), path
    )
    loaded = load_model(str(path))
    with torch.no_grad():
        ref = model(x)
        assert float(ref.abs().max()) > 100
        assert relative_error(loaded(x), ref) <= REL_TOL


# --- structured removal: grouped convolutions
# -------------------------------------------------------


class _Grouped(nn.Module):
    """A 1x1 conv feeding a grouped 3x3 conv (RegNet's pattern), no biases and no norms, so that a
    removed channel and a silenced one compute the same."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1, bias=False)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.c = nn.Conv2d(16, 8, 1, bias=False)
        self.fc = nn.Linear(8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


def test_grouped_convolution_loses_the_same_positions_in_every_group() -> None:
    """A layer read by a grouped convolution loses the same positions in every block of the groups
    it feeds (so the blocks stay equal); the grouped convolution keeps its outputs and reads fewer
    channels per group. The result is the model with those channels silenced."""
    torch.manual_seed(0)
    model = _Grouped().eval()
    x = torch.rand(4, 3, 8, 8)
    inv = inventory(model, x[:1])
    assert inv.groups["a"] == ("a",) and inv.groups["b"] == ("b",)
    pruned = apply_plan(
        model, PruningPlan(method="l1-structured", layers={"a": LayerRule(0.25)}), x[:1], inv
    )
    assert (
        pruned.a.out_channels == 12
        and pruned.b.groups == 4
        and pruned.b.weight.shape == (16, 3, 3, 3)
    )
    kept = [
        next(i for i in range(16) if torch.equal(model.a.weight[i], w)) for w in pruned.a.weight
    ]
    positions = [sorted(k % 4 for k in kept if k // 4 == g) for g in range(4)]
    assert all(p == positions[0] for p in positions), positions  # the same positions in every block
    silenced = _Grouped().eval()
    silenced.load_state_dict(model.state_dict())
    with torch.no_grad():
        for i in set(range(16)) - set(kept):
            silenced.a.weight[i] = 0
        assert relative_error(pruned(x), silenced(x)) <= REL_TOL
    both = apply_plan(
        model,
        PruningPlan(method="l1-structured", layers={"a": LayerRule(0.25), "b": LayerRule(0.25)}),
        x[:1],
        inv,
    )
    assert (
        both.b.groups == 4
        and both.b.out_channels % 4 == 0
        and both.c.in_channels == both.b.out_channels
    )
    assert both(x).shape == (4, 3)


# --- several named inputs -------------------------------------------------------------------------


class _Tokens(nn.Module):
    """A text model's signature: ``forward(input_ids, attention_mask)``, integer inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.proj(self.embed(input_ids)))
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * mask).sum(1) / mask.sum(1).clamp_min(1))


def tokens() -> nn.Module:
    torch.manual_seed(0)
    return _Tokens().eval()


def test_npz_with_named_inputs_feeds_them_by_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (20, 8))
    mask = (np.arange(8)[None] < rng.integers(3, 9, 20)[:, None]).astype(np.int32)
    np.savez(tmp_path / "text.npz", attention_mask=mask, input_ids=ids, y=rng.integers(0, 3, 20))
    data = load_data(str(tmp_path / "text.npz"))
    x = data.test.x
    assert isinstance(x, Inputs) and x.names == ("attention_mask", "input_ids") and len(x) == 20
    assert x.as_dict()["attention_mask"].dtype == torch.int64 and data.has_labels
    assert data.inputs == "attention_mask int64 (8,), input_ids int64 (8,)"
    model = tokens()
    with torch.no_grad():  # by keyword, whatever the order in the file
        expected = model(torch.from_numpy(ids), torch.from_numpy(mask).long())
        assert torch.equal(run_model(model, x), expected)
    path = export_onnx(model, x[:1], tmp_path / "text.onnx")
    assert [i.name for i in onnx.load(path).graph.input] == ["input_ids", "attention_mask"]
    assert relative_error(OrtModel(path)(x.numpy()), expected) <= REL_TOL
    # The exported file opens through the .onnx door with the same data, fed by name.
    module = load_model(str(path))
    assert module.input_names == ("input_ids", "attention_mask")
    with torch.no_grad():
        assert relative_error(run_model(module, x), expected) <= REL_TOL


def test_named_inputs_of_different_lengths_are_refused(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "bad.npz",
        input_ids=np.zeros((5, 8), np.int64),
        attention_mask=np.ones((4, 8), np.int64),
    )
    with pytest.raises(DataError, match=re.escape("different numbers of samples")):
        load_data(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "none.npz", y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="no array named 'x'"):
        load_data(str(tmp_path / "none.npz"))


def test_cli_evaluate_says_which_inputs_it_fed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from explorer.cli import main

    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "t.npz",
        input_ids=rng.integers(1, 50, (16, 8)),
        attention_mask=np.ones((16, 8), np.int64),
        y=rng.integers(0, 3, 16),
    )
    spec = ["--model", f"{Path(__file__)}:tokens", "--data", str(tmp_path / "t.npz")]
    assert main(["evaluate", *spec, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["inputs"] == "input_ids int64 (8,), attention_mask int64 (8,)"
    assert main(["evaluate", *spec]) == 0
    assert "fed: input_ids int64 (8,), attention_mask int64 (8,)" in capsys.readouterr().out
