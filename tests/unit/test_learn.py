"""Learn helpers against simple oracles (the experiments themselves run in tests/app/test_learn.py)."""

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
