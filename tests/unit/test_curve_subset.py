"""Sensitivity curves on a subset of the evaluation data, the allocation verified on all of it.

Oracles: the seeded subset against torch.randperm (the calibration sample's formula), the subset
view's scan against a scan of a subject whose data *is* that subset, its calibration against the
parent's (a data-aware method prunes identically), the verification against ``Subject.evaluate``
on all samples, and the interval against ``wilson`` with the finite-population factor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer import Subject
from explorer import allocate as alloc
from explorer import sensitivity as sens
from explorer.cli import main
from explorer.data import Split
from explorer.errors import DataError, PlanError
from explorer.evaluate import evaluate_torch
from explorer.live import wilson
from explorer.methods import calibration, get_method
from explorer.plan import LayerRule, PruningPlan

N = 90  # of the 360 test samples of the digits


@pytest.fixture(scope="module")
def mlp() -> Subject:
    return Subject("zoo:digits-mlp")


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path


def test_the_subset_is_seeded_sorted_and_the_calibration_sample_is_unchanged() -> None:
    x = torch.arange(50, dtype=torch.float32).reshape(50, 1)
    split = Split(x, torch.arange(50) % 7)
    part = split.subset(12)
    want = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:12].sort().values
    assert torch.equal(part.x[:, 0].long(), want) and torch.equal(part.y, want % 7)
    assert torch.equal(split.subset(12).x, part.x)  # the same samples every time
    assert not torch.equal(split.subset(12, seed=1).x, part.x)
    assert split.subset(50) is split and split.subset(80) is split
    sx, sy = calibration.sample(split, 12)  # the calibration sample is this subset
    assert torch.equal(sx, part.x) and torch.equal(sy, part.y)
    assert calibration.sample(split, 50)[0] is x


def test_a_view_shares_the_model_and_calibration_and_keeps_its_own_data(mlp: Subject) -> None:
    view = mlp.on_images(N)
    assert view is mlp.on_images(N)  # made once per size
    assert mlp.on_images(len(mlp.data.test)) is mlp and mlp.on_images(10_000) is mlp
    assert view.model is mlp.model and view.inventory is mlp.inventory
    assert torch.equal(view.example_input, mlp.example_input)  # exports and timing unchanged
    assert len(view.data.test) == N and len(mlp.data.test) == 360
    assert torch.equal(view.data.test.x, mlp.data.test.subset(N).x)
    assert view.data.fingerprint() != mlp.data.fingerprint()  # its scans are cached apart
    assert view.calibration is mlp.calibration
    with pytest.raises(DataError, match="at least 1 sample"):
        mlp.on_images(0)


def test_a_view_of_test_only_data_calibrates_on_all_of_it(tmp_path: Path) -> None:
    """Without a train split, data-aware methods calibrate on the test split: a view must keep the
    whole split as calibration, or it would prune differently from the plan it stands for."""
    full = Subject("zoo:digits-mlp")
    path = tmp_path / "test-only.npz"
    np.savez(path, x=full.data.test.x.numpy())  # no labels, no train split
    subject = Subject("zoo:digits-mlp", str(path))
    view = subject.on_images(N)
    assert len(subject.calibration) == 360 and view.calibration is subject.calibration
    rules = {n: LayerRule(0.6) for n in subject.layer_names}
    plan = PruningPlan(method="wanda-unstructured", layers=rules)
    ours, theirs = view.prune(plan).state_dict(), subject.prune(plan).state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_the_views_scan_is_a_scan_of_that_subset(mlp: Subject, empty_cache: Path) -> None:
    path = empty_cache / "subset.npz"
    part = mlp.data.test.subset(N)
    np.savez(path, x=part.x.numpy(), y=part.y.numpy())
    alone = Subject("zoo:digits-mlp", str(path))
    got = sens.scan(mlp.on_images(N), "l1-unstructured", (0.5, 0.9), cache=False)
    want = sens.scan(alone, "l1-unstructured", (0.5, 0.9), cache=False)
    assert got.equals(want)


@pytest.mark.parametrize(
    ("kind", "value", "method"),
    [("sparsity", 0.7, "l1-unstructured"), ("macs", 0.5, "l1-structured")],
)
def test_an_allocation_on_subset_curves_is_verified_on_all_samples(
    mlp: Subject, empty_cache: Path, kind: str, value: float, method: str
) -> None:
    grid = alloc.curve_ratios(get_method(method))
    units = len(sens.units(mlp, method))
    needs = alloc.curve_needs(mlp, kind, method, curve_images=N)
    assert (needs.left, needs.cached, needs.images) == (units * len(grid), 0, N)
    a = alloc.allocate(mlp, (kind, value), method, curve_images=N)
    view = mlp.on_images(N)
    # The curves were scanned on the subset only: the view's cache holds them, the full one none.
    assert sens.pending(view, method, grid) == (0, units * len(grid))
    assert sens.pending(mlp, method, grid) == (units * len(grid), 0)
    assert alloc.curve_needs(mlp, kind, method, curve_images=N).left == 0
    # Measured and verified on all 360 samples.
    assert a.dense_accuracy == pytest.approx(mlp.dense()[0].accuracy)
    assert a.evaluation is not None and a.verified_accuracy == a.evaluation.pruned.accuracy
    assert a.verified_accuracy == pytest.approx(mlp.evaluate(a.plan).pruned.accuracy)
    # The subset's check, recomputed here.
    assert a.curves_on is not None and (a.curves_on.images, a.curves_on.total) == (N, 360)
    on_subset = evaluate_torch(mlp.prune(a.plan), view.data.test)[0]
    assert a.curves_on.accuracy == pytest.approx(on_subset)
    assert a.curves_on.interval == pytest.approx(wilson(round(on_subset * N), N, population=360))
    lo, hi = a.curves_on.interval
    wide = wilson(round(on_subset * N), N)  # for an infinite population: wider
    assert lo < on_subset <= hi and 0 < hi - lo < wide[1] - wide[0]
    assert a.representative == (lo <= a.verified_accuracy <= hi)
    text = a.curves_on.describe(a.verified_accuracy)
    assert text.startswith(f"curves measured on {N} of the 360 evaluation samples")
    assert text.endswith(": inside" if a.representative else "allocate on more samples")
    assert json.loads(json.dumps(a.to_dict()))["curves_on"]["images"] == N
    if kind == "sparsity":  # the baselines were scored where the curves were: on the subset
        assert a.compared_on == f"the curves' {N} samples"
        assert a.candidates[a.chosen] == pytest.approx(on_subset)
    assert a.predicted_accuracy <= a.dense_accuracy  # the subset's drops, from all samples' dense


def test_every_sample_means_no_subset(mlp: Subject, empty_cache: Path) -> None:
    whole = alloc.allocate(mlp, ("sparsity", 0.5), ratios=(0.5, 0.9), curve_images=360)
    assert whole.curves_on is None and whole.representative is None
    assert whole.to_dict()["curves_on"] is None and whole.compared_on == "the evaluation data"
    again = alloc.allocate(mlp, ("sparsity", 0.5), ratios=(0.5, 0.9))
    assert whole.plan == again.plan and whole.verified_accuracy == again.verified_accuracy
    for bad in (0, -3, 2.5, True):
        with pytest.raises(PlanError, match="curve_images"):
            alloc.allocate(mlp, ("sparsity", 0.5), ratios=(0.5,), curve_images=bad)  # type: ignore[arg-type]


def test_cli_allocate_on_a_subset(empty_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = empty_cache / "plan.json"
    args = ["allocate", "--model", "zoo:digits-mlp", "--target-sparsity", "0.6", "--out", str(out)]
    assert main([*args, "--curve-images", str(N)]) == 0
    captured = capsys.readouterr()
    assert f"each on {N} of the 360 evaluation samples" in captured.err
    line = next(x for x in captured.out.splitlines() if x.startswith("curves "))
    assert f"curves measured on {N} of the 360 evaluation samples (a seeded subset)" in line
    assert "on all it is" in line
    assert PruningPlan.load(out).layers
    for bad in ("0", "-1", "many"):
        assert main([*args, "--curve-images", bad]) == 2
        assert "--curve-images" in capsys.readouterr().err
