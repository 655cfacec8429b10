"""The paper reproductions' pieces against oracles: Han's threshold rule, the target count, the
verdicts computed from numbers (not fixed), and a tiny lottery run's exact sparsities."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from explorer.papers import (
    LotteryResult,
    _solve_scale,
    han_iterative,
    han_ratios,
    lottery_mnist1d,
    order_agreement,
)
from explorer.subject import Subject


def test_order_agreement_checks_only_clearly_separated_pairs() -> None:
    paper = {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}
    ok, lines = order_agreement({"fc1": 0.10, "fc2": 0.05, "fc3": 0.40}, paper)
    assert ok and len(lines) == 2  # fc1 vs fc2 (8% vs 9%) is not a clear pair
    ok, lines = order_agreement({"fc1": 0.30, "fc2": 0.05, "fc3": 0.20}, paper)
    assert not ok and any("fc3 > fc1" in line and "<=" in line for line in lines)


def test_han_ratios_are_the_share_below_each_threshold(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:mnist-lenet300")
    w = subj.model.fc2.weight
    t = float(w.std())
    assert han_ratios(subj.model, {"fc2": t}) == {
        "fc2": pytest.approx(float((w.abs() < t).float().mean()))
    }
    model = __import__("copy").deepcopy(subj.model)
    with torch.no_grad():
        model.fc2.weight[:10] = 0  # zeros are below any threshold
    assert han_ratios(model, {"fc2": 0.0})["fc2"] == 0.0
    below = han_ratios(model, {"fc2": 1e-12})["fc2"]
    assert below >= 10 * 300 / w.numel()
    assert below == pytest.approx(float((model.fc2.weight.abs() < 1e-12).float().mean()))


def test_solve_scale_leaves_the_target_count(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:mnist-lenet300")
    base = {n: float(dict(subj.model.named_modules())[n].weight.std()) for n in subj.layer_names}
    total = sum(p.numel() for p in subj.model.parameters())
    biases = sum(dict(subj.model.named_modules())[n].bias.numel() for n in subj.layer_names)
    lam = _solve_scale(subj.model, base, biases, total, 12.0)
    kept = sum(
        int((dict(subj.model.named_modules())[n].weight.abs() >= lam * t).sum())
        for n, t in base.items()
    )
    assert abs(kept + biases - total / 12) <= 3  # ties aside, exactly 1/12 of the parameters


def test_han_iterative_reaches_the_compression_by_the_rule(subject: Callable[..., Subject]) -> None:
    result = han_iterative(subject("zoo:mnist-lenet300"), rounds=1, epochs=1, lr=1e-3)
    final = result.final
    assert final["compression"] == pytest.approx(12.0, rel=0.005)
    assert set(result.quality) == {"fc1", "fc2", "fc3"} and all(
        q > 0 for q in result.quality.values()
    )
    # per-layer shares come from the thresholds, not one ratio for all
    assert len({round(k, 3) for k in final["kept"].values()}) == 3
    claims = result.verdicts()
    assert [ok for _, ok, _ in claims][0] == (
        final["compression"] >= 11 and final["error"] <= result.dense_error
    )


def test_lottery_verdicts_follow_the_numbers() -> None:
    def rows(dense: float, imp90: float, mag95: float, rnd95: float) -> LotteryResult:
        return LotteryResult(
            rows=[
                {"criterion": "dense", "trial": 0, "sparsity": 0.0, "best": dense, "last": dense},
                {
                    "criterion": "magnitude",
                    "trial": 0,
                    "sparsity": 0.9,
                    "best": imp90,
                    "last": imp90,
                },
                {
                    "criterion": "magnitude",
                    "trial": 0,
                    "sparsity": 0.95,
                    "best": mag95,
                    "last": mag95,
                },
                {"criterion": "random", "trial": 0, "sparsity": 0.95, "best": rnd95, "last": rnd95},
            ]
        )

    assert [ok for _, ok, _ in rows(0.664, 0.743, 0.718, 0.580).verdicts()] == [True, True]
    assert [ok for _, ok, _ in rows(0.70, 0.69, 0.70, 0.67).verdicts()] == [False, False]


def test_tiny_lottery_run_prunes_every_layer_exactly() -> None:
    result = lottery_mnist1d(
        trials=1, sparsities=(0.0, 0.5, 0.8), random_at=(0.8,), steps=12, eval_every=5, hidden=32
    )
    assert [(r["criterion"], r["sparsity"]) for r in result.rows] == [
        ("dense", 0.0),
        ("magnitude", 0.5),
        ("magnitude", 0.8),
        ("random", 0.8),
    ]
    assert all(0.0 <= r["best"] <= 1.0 and r["best"] >= r["last"] for r in result.rows)
    sizes = [
        40 * 32,
        32 * 32,
        32 * 10,
    ]  # weights of linear1..3; every layer pruned alike, zeros kept in training
    for r in result.rows:
        assert r["nonzero"] == sum(n - round(r["sparsity"] * n) for n in sizes), r
    assert result.settings["train"] == 4000 and result.settings["test"] == 1000
