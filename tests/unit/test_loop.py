"""The prune -> recalibrate -> fine-tune -> int8 loop: every stage measured, zeros kept, bad
settings named."""

from __future__ import annotations

import numpy as np
import pytest

from explorer import PruningPlan, Subject
from explorer.errors import DataError
from explorer.loop import run_loop
from explorer.plan import LayerRule


@pytest.fixture(scope="module")
def mlp() -> Subject:
    return Subject("zoo:digits-mlp", runs=30)


def _global(subject: Subject, ratio: float) -> PruningPlan:
    return PruningPlan(
        method="l1-unstructured",
        layers={n: LayerRule(ratio) for n in subject.layer_names},
        scope="global",
        ratio=ratio,
    )


def test_every_stage_is_measured_and_fine_tuning_keeps_zeros(mlp: Subject) -> None:
    result = run_loop(mlp, _global(mlp, 0.9), epochs=2, int8="dynamic")
    names = [s.name for s in result.stages]
    assert names == ["dense", "pruned", "fine-tuned", "int8 (dynamic)"]  # no batch norm in the MLP
    rows = {r["stage"]: r for r in result.table()}
    assert (
        rows["pruned"]["params_nonzero"]
        == rows["fine-tuned"]["params_nonzero"]
        < rows["dense"]["params_nonzero"]
    )
    assert rows["int8 (dynamic)"]["onnx_bytes"] < rows["fine-tuned"]["onnx_bytes"]
    assert len(result.epochs) == 3  # epoch 0 (before) and two epochs
    assert result.int8 is not None and "note" in result.int8["cpu"]


def test_without_a_training_split_fine_tuning_is_refused(tmp_path, mlp: Subject) -> None:
    path = tmp_path / "test-only.npz"
    np.savez(path, x=mlp.data.test.x.numpy(), y=mlp.data.test.y.numpy())
    subject = Subject("zoo:digits-mlp", str(path), runs=30)
    with pytest.raises(DataError, match="training split"):
        run_loop(subject, _global(subject, 0.5), epochs=1)


def test_unknown_int8_mode_is_named(mlp: Subject) -> None:
    with pytest.raises(DataError, match="'int4'"):
        run_loop(mlp, _global(mlp, 0.5), int8="int4")


def test_early_stop_ends_fine_tuning_without_improvement(mlp: Subject) -> None:
    # Fine-tuning a barely pruned model cannot beat its starting validation score for long.
    result = run_loop(mlp, _global(mlp, 0.1), epochs=30, patience=1)
    assert result.stopped == "early-stop"
    assert len(result.epochs) < 31
