"""Every registered method on every zoo model: the exported ONNX computes what the pruned torch
model computes (ONNX Runtime vs torch, max abs diff <= 1e-4), on the first 64 test samples."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from explorer.methods import get_method
from explorer.plan import PruningPlan
from explorer.runtime import OrtModel, export_onnx
from explorer.subject import Subject

ATOL = 1e-4
N = 64  # samples compared per model: enough to cover every class, cheap on 2 shared cores


def _torch_logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def test_pruned_onnx_matches_torch(
    zoo_name: str,
    method: str,
    subject: Callable[..., Subject],
    full_plan: Callable[..., PruningPlan],
    tmp_path: Path,
) -> None:
    subj = subject(f"zoo:{zoo_name}")
    plan = full_plan(subj, method, 0.5)
    pruned = subj.prune(plan)
    path = export_onnx(pruned, subj.example_input, tmp_path / "model.onnx")
    x = subj.data.test.x[:N]
    ort_out = OrtModel(path, threads=1)(x.numpy())
    torch_out = _torch_logits(pruned, x)
    assert ort_out.shape == torch_out.shape == (len(x), 10)
    assert np.abs(ort_out - torch_out).max() <= ATOL

    # the artifact is the pruned model: structured methods shrink the ONNX weights themselves
    graph = onnx.load(str(path)).graph
    onnx_params = sum(int(np.prod(init.dims)) for init in graph.initializer)
    dense_params = subj.inventory.total_params
    if not plan.layers:  # the method applies to no layer of this model: each says why
        assert all(get_method(method).applies_to(n, subj.inventory) for n in subj.layer_names)
    elif get_method(method).structured:
        assert onnx_params < 0.6 * dense_params
    else:
        assert onnx_params >= sum(layer.params for layer in subj.inventory.layers)


def test_dense_onnx_matches_torch(
    zoo_name: str, subject: Callable[..., Subject], tmp_path: Path
) -> None:
    subj = subject(f"zoo:{zoo_name}")
    path = export_onnx(subj.model, subj.example_input, tmp_path / "dense.onnx")
    x = subj.data.test.x[:N]
    assert np.abs(OrtModel(path)(x.numpy()) - _torch_logits(subj.model, x)).max() <= ATOL


@pytest.mark.parametrize("batch", [1, 3, 100])
def test_batch_dimension_is_dynamic(
    batch: int,
    subject: Callable[..., Subject],
    full_plan: Callable[..., PruningPlan],
    tmp_path: Path,
) -> None:
    subj = subject("zoo:digits-resnet")
    pruned = subj.prune(full_plan(subj, "l1-structured", 0.3))
    path = export_onnx(pruned, subj.example_input, tmp_path / "model.onnx")
    x = subj.data.test.x[:batch]
    out = OrtModel(path).session.run(None, {"input": x.numpy()})[0]
    assert out.shape == (len(x), 10)
    assert np.abs(out - _torch_logits(pruned, x)).max() <= ATOL


def test_measured_accuracy_is_the_onnx_accuracy(
    zoo_name: str,
    subject: Callable[..., Subject],
    mixed_plan: Callable[..., PruningPlan],
    tmp_path: Path,
) -> None:
    """Subject.evaluate's accuracy is the accuracy of the ONNX file it exported, recomputed here."""
    subj = subject(f"zoo:{zoo_name}")
    result = subj.evaluate(mixed_plan(subj, 0.4), onnx_path=tmp_path / "m.onnx").to_dict()
    logits = OrtModel(tmp_path / "m.onnx")(subj.data.test.x.numpy())
    assert subj.data.test.y is not None
    assert result["accuracy"] == float((logits.argmax(1) == subj.data.test.y.numpy()).mean())
    assert result["macs"] < result["dense"]["macs"]
    assert result["params_nonzero"] < result["params_total"] < result["dense"]["params_total"]
    assert result["latency_threads"] == 1 and result["latency_runs"] >= 30
    assert result["latency_ms_p90"] >= result["latency_ms_median"] > 0


class _ScalesByItsSum(torch.nn.Module):
    """A model that reads a value of its input in Python: the TorchScript exporter records the
    example's value as a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * float(x.sum())


def test_an_export_that_depends_on_its_example_input_is_refused() -> None:
    """The export agrees with the model on the example only: evaluating it would report another
    model's numbers, so measure refuses it, with the cause and the doors that work."""
    from explorer.data import Dataset, Split
    from explorer.errors import ExportError
    from explorer.evaluate import measure

    torch.manual_seed(0)
    x = torch.rand(16, 4) + 0.5
    data = Dataset(spec="mine.npz", test=Split(x, torch.randint(0, 3, (16,))))
    with pytest.raises(ExportError, match=r"mine\.npz: .*depends on its example input.*PATH\.py"):
        measure(_ScalesByItsSum().eval(), data, runs=30)
