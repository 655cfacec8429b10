"""Recovery: fine-tuning keeps the pruned structure and its zeros, BN recalibration only touches the
running statistics (their mean is the mean of the layer's input over the data), cancel and early
stop end training, bad settings are specific errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from explorer.data import Dataset, Split, load_data
from explorer.errors import DataError, RecoverError
from explorer.inspect import PRUNABLE_TYPES
from explorer.models import load_model
from explorer.plan import LayerRule, PruningPlan
from explorer.prune import apply_plan
from explorer.recover import batchnorm_layers, finetune, recalibrate_bn, zero_masks
from explorer.runtime import OrtModel
from explorer.subject import Subject


def _small(data: Dataset, n_train: int = 128, n_val: int | None = 64) -> Dataset:
    """A slice of a zoo data set: enough to train a step or two, fast on shared cores.
    ``n_val=None``: no validation split (fine-tuning then returns its last epoch)."""
    assert data.train is not None and data.val is not None and data.train.y is not None
    return Dataset(
        spec=data.spec,
        train=Split(data.train.x[:n_train], data.train.y[:n_train]),
        val=(
            None
            if n_val is None
            else Split(data.val.x[:n_val], None if data.val.y is None else data.val.y[:n_val])
        ),
        test=data.test,
    )


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.weight.detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES)
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("zoo", ["digits-mlp", "digits-cnn"])
def test_finetune_keeps_zeros_and_shapes(
    zoo: str, method: str, subject: Callable[..., Subject], full_plan: Callable[..., PruningPlan]
) -> None:
    subj = subject(f"zoo:{zoo}")
    pruned = subj.prune(full_plan(subj, method, 0.5))
    before = _weights(pruned)
    state_before = _state(pruned)
    result = finetune(pruned, _small(subj.data, n_val=None), epochs=1, lr=1e-2, recalibrate=False)
    after = _weights(result.model)
    assert after.keys() == before.keys()
    changed = False
    for name, w in before.items():
        assert after[name].shape == w.shape, name
        zeros = w == 0
        assert bool((after[name][zeros] == 0).all()), f"{name}: a pruned weight came back"
        changed |= not torch.equal(after[name], w)
    assert changed, "fine-tuning did not change any weight"
    # a full state dict of the same shapes: the structure did not change
    assert {k: v.shape for k, v in result.model.state_dict().items()} == {
        k: v.shape for k, v in state_before.items()
    }
    # the model handed in is not modified
    for k, v in pruned.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    assert not any(p.requires_grad for p in result.model.parameters())
    assert not result.model.training
    assert [r.epoch for r in result.history] == [0, 1]
    assert result.best_epoch == 1  # without validation, the last epoch


def test_finetune_recovers_masked_mlp(subject: Callable[..., Subject]) -> None:
    """Oracle: validation accuracy after fine-tuning is at least the accuracy before (best
    checkpoint)."""
    subj = subject("zoo:digits-mlp")
    plan = PruningPlan(
        method="l1-unstructured",
        scope="global",
        ratio=0.9,
        layers={n: LayerRule(0.9) for n in subj.layer_names},
    )
    pruned = subj.prune(plan)
    masks = zero_masks(pruned)
    assert set(masks) == {f"{n}.weight" for n in subj.layer_names}
    result = finetune(pruned, subj.data, epochs=3, lr=3e-3)
    accs = [r.val_accuracy for r in result.history]
    assert all(a is not None for a in accs)
    assert result.history[result.best_epoch].val_accuracy == max(accs)  # type: ignore[type-var]
    assert max(accs) > accs[0]  # type: ignore[operator]
    for name, keep in masks.items():
        module = dict(result.model.named_modules())[name.rsplit(".", 1)[0]]
        assert int(torch.count_nonzero(module.weight)) <= int(keep.sum())


def test_recalibrate_bn_changes_stats_not_weights(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-cnn")
    convs = [layer.name for layer in subj.inventory.layers if layer.group is not None]
    pruned = subj.prune(PruningPlan.uniform("l1-structured", convs, 0.5))
    assert batchnorm_layers(pruned)
    state = _state(pruned)
    assert subj.data.train is not None
    calib = Split(subj.data.train.x[:128], None)
    out = recalibrate_bn(pruned, calib, batch_size=64)
    new = out.state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")):
            assert not torch.allclose(new[key], value), f"{key} did not change"
        elif key.endswith("num_batches_tracked"):
            assert int(new[key]) == 2
        else:
            assert torch.equal(new[key], value), f"{key} changed"
    for key, value in pruned.state_dict().items():  # the input model is untouched
        assert torch.equal(value, state[key]), key
    # oracle: with momentum=None and equal batches, running_mean is the mean of the BN input
    conv, bn = pruned.features[0], out.features[1]
    with torch.no_grad():
        expected = conv(calib.x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected, atol=1e-5, rtol=1e-4)
    assert bn.momentum == pruned.features[1].momentum  # momentum restored
    assert not out.training


def test_recalibration_finds_the_batch_norms_of_a_pt2_model(tmp_path: Path) -> None:
    """The .pt2 importer's batch-norm class is not torch's: found by its running statistics."""
    from explorer.models.zoo import build

    model = build("digits-cnn").eval()
    data = load_data("zoo:digits-cnn")
    assert data.train is not None
    x = data.test.x[:2]
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "cnn.pt2")
    loaded = load_model(str(tmp_path / "cnn.pt2"))
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    found = batchnorm_layers(loaded)
    assert len(found) == len(expected) > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())  # really another class
    out = recalibrate_bn(loaded, Split(data.train.x[:128], None))
    bn = dict(out.named_modules())[found[0]]
    before = dict(loaded.named_modules())[found[0]]
    assert not torch.allclose(bn.running_mean, before.running_mean)
    result = finetune(loaded, _small(data, n_train=64, n_val=32), epochs=1, lr=1e-3)
    assert result.recalibrated


def test_recalibrate_bn_without_bn_is_a_copy(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    assert batchnorm_layers(subj.model) == []
    out = recalibrate_bn(subj.model, subj.data.test)
    assert out is not subj.model
    for k, v in subj.model.state_dict().items():
        assert torch.equal(out.state_dict()[k], v)


def test_cancel_stops_early(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    data = _small(subj.data)
    pruned = subj.prune(PruningPlan.uniform("l1-unstructured", subj.layer_names, 0.8))
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3  # stop inside the second epoch (2 batches of 64 per epoch)

    result = finetune(pruned, data, epochs=50, lr=1e-3, should_stop=stop)
    assert result.stopped == "cancelled"
    assert [r.epoch for r in result.history] == [0, 1]
    assert calls == 4


def test_cancel_before_any_step_returns_the_input(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    pruned = subj.prune(PruningPlan.uniform("l1-unstructured", subj.layer_names, 0.8))
    result = finetune(pruned, _small(subj.data), epochs=5, should_stop=lambda: True)
    assert result.stopped == "cancelled" and result.best_epoch == 0
    for k, v in pruned.state_dict().items():
        assert torch.equal(result.model.state_dict()[k], v)


def test_early_stop_after_patience(subject: Callable[..., Subject]) -> None:
    """A learning rate too small to change a prediction: validation never improves."""
    subj = subject("zoo:digits-mlp")
    pruned = subj.prune(PruningPlan.uniform("l1-unstructured", subj.layer_names, 0.5))
    result = finetune(pruned, _small(subj.data), epochs=20, lr=1e-12, patience=2)
    assert result.stopped == "early-stop"
    assert [r.epoch for r in result.history] == [0, 1, 2]
    assert result.best_epoch == 0


def test_progress_is_monotonic_and_global_rng_untouched(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    seen: list[tuple[float, str]] = []
    rng = torch.get_rng_state()
    finetune(subj.model, _small(subj.data), epochs=2, on_progress=lambda f, m: seen.append((f, m)))
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left as it was
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in seen)


def test_distillation_without_labels(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    small = _small(subj.data)
    assert small.train is not None and small.val is not None
    unlabelled = Dataset(
        spec="unlabelled",
        test=small.test,
        train=Split(small.train.x, None),
        val=Split(small.val.x, None),
    )
    pruned = subj.prune(PruningPlan.uniform("l1-unstructured", subj.layer_names, 0.8))
    with pytest.raises(DataError, match="no labels"):
        finetune(pruned, unlabelled, epochs=1)
    result = finetune(pruned, unlabelled, epochs=2, distill_from=subj.model)
    assert result.distilled
    # without labels, validation accuracy is agreement with the teacher
    assert all(r.val_accuracy is not None for r in result.history)


def test_errors_name_the_culprit(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-mlp")
    no_train = Dataset(spec="only-test.npz", test=subj.data.test)
    with pytest.raises(DataError, match=r"only-test\.npz.*no training split"):
        finetune(subj.model, no_train, epochs=1)
    for kwargs, match in [
        ({"epochs": 0}, "epochs.*0"),
        ({"epochs": 1, "alpha": 1.5}, "alpha.*1.5"),
        ({"epochs": 1, "lr": -1.0}, "learning rate.*-1.0"),
        ({"epochs": 1, "temperature": 0.0}, "temperature"),
        ({"epochs": 1, "patience": 0}, "patience"),
    ]:
        with pytest.raises(RecoverError, match=match):
            finetune(subj.model, subj.data, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(RecoverError, match="batch_size"):
        recalibrate_bn(subj.model, subj.data.test, batch_size=0)


def test_cli_export_finetuned_and_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """metrics.json holds the numbers of the exported (fine-tuned) model.onnx, int8 ones under
    'int8'."""
    from explorer.cli import main

    plan = PruningPlan(
        method="l1-unstructured",
        scope="global",
        ratio=0.9,
        layers={n: LayerRule(0.9) for n in ("hidden.0", "hidden.2", "classifier")},
    )
    plan.save(tmp_path / "plan.json")
    out = tmp_path / "bundle"
    code = main(
        [
            "export",
            "--model",
            "zoo:digits-mlp",
            "--plan",
            str(tmp_path / "plan.json"),
            "--out",
            str(out),
            "--finetune-epochs",
            "2",
            "--distill",
            "--quantize",
            "int8",
            "--runs",
            "30",
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    data = load_data("zoo:digits-mlp")
    y = data.test.y.numpy()
    for name, entry in (("model.onnx", metrics), ("model.int8.onnx", metrics["int8"])):
        logits = OrtModel(out / name)(data.test.x.numpy())
        assert entry["accuracy"] == pytest.approx(float((logits.argmax(1) == y).mean())), name
    assert (
        metrics["int8"]["mode"] == "dynamic"
        and metrics["int8"]["fp32"]["accuracy"] == metrics["accuracy"]
    )
    rec = metrics["recovery"]
    assert rec["settings"]["epochs"] == 2 and rec["distilled"] and len(rec["history"]) == 3
    # the exported model is the fine-tuned one, and pruning's zeros are still there
    state = torch.load(out / "model_state.pt", weights_only=True)
    subj_pruned = apply_plan(load_model("zoo:digits-mlp"), plan, data.example_input())
    for name, module in subj_pruned.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            w = state[f"{name}.weight"]
            assert bool((w[module.weight == 0] == 0).all()), name
    assert metrics["params_nonzero"] <= sum(
        int(torch.count_nonzero(p)) for p in subj_pruned.parameters()
    )
    assert (
        "Fine-tuning" in (out / "report.html").read_text()
        and "int8" in (out / "report.html").read_text()
    )


def test_cli_distill_needs_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from explorer.cli import main

    PruningPlan.uniform("l1-unstructured", ["hidden.0"], 0.5).save(tmp_path / "plan.json")
    code = main(
        [
            "export",
            "--model",
            "zoo:digits-mlp",
            "--plan",
            str(tmp_path / "plan.json"),
            "--out",
            str(tmp_path / "o"),
            "--distill",
        ]
    )
    assert code == 2
    assert "--distill needs --finetune-epochs" in capsys.readouterr().err
