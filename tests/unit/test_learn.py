"""Learn helpers against simple oracles (the experiments themselves run in
tests/app/test_learn.py)."""

from __future__ import annotations

import pytest
import torch

from explorer import Subject
from explorer.learn import EXPERIMENTS, scope_sparsity


@pytest.fixture(scope="module")
def mlp() -> Subject:
    return Subject("zoo:digits-mlp")


def test_scope_sparsity_local_is_uniform_and_global_hits_the_overall_ratio(mlp: Subject) -> None:
    df = scope_sparsity(mlp, 0.7)
    local = df[df.scope == "same ratio in every layer"]
    assert local.sparsity.round(3).eq(0.7).all()
    glob = df[df.scope == "global ranking"].set_index("layer").sparsity
    sizes = {n: mlp.inventory[n].shape for n in glob.index}
    numels = {n: torch.Size(s).numel() for n, s in sizes.items()}
    overall = sum(glob[n] * numels[n] for n in glob.index) / sum(numels.values())
    assert overall == pytest.approx(0.7, abs=1e-3)
    assert glob.max() - glob.min() > 0.05  # global ranking does not prune every layer alike


def test_every_experiment_names_an_existing_zoo_model() -> None:
    from explorer.models import ZOO

    assert len(EXPERIMENTS) >= 9
    for e in EXPERIMENTS.values():
        assert e.model.removeprefix("zoo:") in ZOO


@pytest.fixture(scope="module")
def cnn() -> Subject:
    return Subject("zoo:digits-cnn")


def test_global_beats_uniform_is_judged_where_the_two_differ(cnn: Subject) -> None:
    from explorer.learn import CHANCE_BAND, run_experiment

    result = run_experiment("global", cnn)
    piv = result.table.pivot(index="sparsity", columns="scope", values="accuracy")
    g, u = piv["global ranking"], piv["same ratio in every layer"]
    compared, at_chance = result.extra["compared"], result.extra["at_chance"]
    for s in at_chance:  # both at chance: no winner there
        assert g[s] - 0.1 < CHANCE_BAND and u[s] - 0.1 < CHANCE_BAND
    assert result.holds == (bool(compared) and all(g[s] > u[s] for s in compared))
    assert f"at {sum(g[s] > u[s] for s in compared)} of {len(compared)} sparsities" in result.text


def test_pruning_plus_int8_holds_only_if_it_keeps_the_accuracy(cnn: Subject) -> None:
    from explorer.learn import KEEP_POINTS, run_experiment

    result = run_experiment("int8", cnn)
    dense, int8 = result.table.accuracy.iloc[0], result.table.accuracy.iloc[2]
    cut = 1 - result.table.onnx_gzip_bytes.iloc[2] / result.table.onnx_gzip_bytes.iloc[0]
    assert result.holds == (cut >= 0.8 and int8 >= dense - KEEP_POINTS)
    if cut >= 0.8 and not result.holds:
        assert "costs" in result.text and "does not hold" in result.text
