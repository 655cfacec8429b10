"""Structured plans that are never silently slower: the rounding rule, the rounded plan, and the
explanation of a slower-than-dense plan, on monkeypatched timings (never real wall-clock values)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from explorer import rounding
from explorer.cli import main
from explorer.evaluate import Evaluation
from explorer.inspect import out_channels
from explorer.plan import LayerRule, PruningPlan
from explorer.prune import apply_plan, kept_channels, ratio_for_width
from explorer.runtime import Speedup, speedup_of
from explorer.subject import Subject


@pytest.mark.parametrize("round_to", [None, 1, 2, 3, 8, 16, 64])
def test_kept_counts_are_multiples_never_more_than_the_layer_never_zero(
    round_to: int | None,
) -> None:
    for n in [1, 2, 5, 7, 8, 15, 16, 17, 23, 32, 96, 101, 144, 1000]:
        for ratio in [0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999999]:
            kept = kept_channels(n, ratio, round_to)
            assert 1 <= kept <= n
            assert kept >= kept_channels(n, ratio)  # rounding only ever keeps more
            if round_to and round_to > 1:
                assert kept % round_to == 0 or kept == n
                assert (
                    kept - kept_channels(n, ratio) < round_to
                )  # up to the next multiple, no further


def test_ratio_for_width_keeps_exactly_that_width() -> None:
    for n in range(1, 400):
        for w in range(1, n + 1):
            r = ratio_for_width(n, w)
            assert 0 <= r < 1 and kept_channels(n, r) == w
    assert (
        ratio_for_width(144, 112) == pytest.approx(0.22, abs=0.01)
        and len(str(ratio_for_width(10, 7))) <= 4
    )
    with pytest.raises(ValueError):
        ratio_for_width(8, 9)


def test_apply_plan_rounds_as_the_plan_says(subject) -> None:
    cnn = subject("zoo:digits-cnn")
    plan = PruningPlan(
        "l1-structured", {n: LayerRule(0.3) for n in ("features.0", "features.3", "features.7")}
    )
    for round_to, expected in ((None, [23, 45, 90]), (8, [24, 48, 96]), (16, [32, 48, 96])):
        pruned = dict(cnn.prune(plan.with_round_to(round_to)).named_modules())
        assert [
            out_channels(pruned[n]) for n in ("features.0", "features.3", "features.7")
        ] == expected
    # An explicit round_to overrides the plan's.
    again = apply_plan(
        cnn.model, plan.with_round_to(16), cnn.example_input, cnn.inventory, round_to=8
    )
    assert out_channels(dict(again.named_modules())["features.0"]) == 24


# --- a slower-than-dense plan, on fake timings --------------------------------------------------


def _fake_share(model: nn.Module, fast: int = 16) -> float:
    """A made-up CPU: latency follows the MACs, but every conv whose output channels are no
    multiple of ``fast`` costs 40% more than dense."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    slow = sum(1 for m in convs if m.out_channels % fast)
    width = sum(m.out_channels for m in convs) / 480  # digits-cnn: 32 + 64 + 128 + 256 channels
    return width * (1 + 0.4 * slow)


def _speedup_of_share(share: float, rounds: int = 5, sign: int = 1) -> Speedup:
    """A Speedup whose rounds time the model at ``share`` of the dense latency, -4% to +4% from the
    first round to the last (``sign`` -1: the other way round)."""
    dense = [[10.0] * 3 for _ in range(rounds)]
    pruned = [[10.0 * share * (1 + sign * 0.02 * (r - rounds // 2))] * 3 for r in range(rounds)]
    return speedup_of([dense, pruned], 0, 1, threads=1)


@pytest.fixture()
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Timings of the made-up CPU for Subject.evaluate and the width windows; returns a log."""
    log: list[str] = []

    def evaluate(
        self: Subject,
        plan: PruningPlan | None = None,
        onnx_path: object = None,
        *,
        model: nn.Module | None = None,
    ) -> Evaluation:
        dense, _ = self.dense()
        if plan is None and model is None:
            return Evaluation(dense, dense, self.model_spec, self.data_spec)
        pruned = model if model is not None else self.prune(plan)  # type: ignore[arg-type]
        log.append("evaluate")
        return Evaluation(
            self.measure(pruned),
            dense,
            self.model_spec,
            self.data_spec,
            plan,
            _speedup_of_share(_fake_share(pruned)),
        )

    def time_with_dense(
        subject: Subject, models: list[nn.Module], rounds: int = 5
    ) -> list[Speedup]:
        log.append(f"window of {len(models)}")
        return [_speedup_of_share(_fake_share(m)) for m in models]

    monkeypatch.setattr(Subject, "evaluate", evaluate)
    monkeypatch.setattr(rounding, "time_with_dense", time_with_dense)
    monkeypatch.setattr(rounding, "fast_multiple", lambda: 16)
    return log


def _thirty_percent() -> PruningPlan:
    return PruningPlan(
        "l1-structured",
        {n: LayerRule(0.3) for n in ("features.0", "features.3", "features.7", "features.11")},
        model="zoo:digits-cnn",
    )


def test_a_slower_plan_names_the_widths_that_cost_it_and_offers_the_rounded_plan(
    subject, fake_cpu
) -> None:
    cnn = subject("zoo:digits-cnn")
    result = cnn.evaluate(_thirty_percent())  # kept 23, 45, 90, 180: none a multiple of 16
    assert result.speedup is not None and result.speedup.slower
    found = rounding.explain_slowdown(cnn, result)
    assert found is not None
    by_group = {g.group: g for g in found.groups}
    assert {g: (w.kept, w.chosen) for g, w in by_group.items()} == {
        "features.0": (23, 32),
        "features.3": (45, 48),
        "features.7": (90, 96),
        "features.11": (180, 192),
    }
    # Alone, each odd width costs 40% on the made-up CPU: above dense, named with its numbers.
    assert {g.group for g in found.costly} == set(by_group)
    assert (
        "23 of 32 channels" in by_group["features.0"].cost
        and "the dense latency" in by_group["features.0"].cost
    )
    rounded = found.rounded_plan
    assert rounded is not None and rounded.round_to == 16
    assert rounded.layers == _thirty_percent().layers  # the ratios stay; the rounding is the plan's
    assert (
        found.rounded is not None
        and found.rounded.speedup is not None
        and found.rounded.speedup.faster
    )
    head, cause, offer = found.lines()
    assert (
        head.startswith("slower than dense")
        and "features.3" in cause
        and "multiples of 16" in offer
    )
    assert json.loads(json.dumps(found.to_dict()))["rounded"]["plan"]["round_to"] == 16


def test_a_faster_plan_needs_no_explanation(subject, fake_cpu) -> None:
    cnn = subject("zoo:digits-cnn")
    result = cnn.evaluate(_thirty_percent().with_round_to(16))
    assert result.speedup is not None and result.speedup.faster
    assert rounding.explain_slowdown(cnn, result) is None
    assert "window of" not in " ".join(fake_cpu)  # nothing timed


def test_measured_best_width_where_it_differs_from_the_multiple() -> None:
    # 101 of 144 channels: rounded to 16 is 112; 104 (a multiple of 8) was faster in every round.
    shares = {
        101: _speedup_of_share(1.1).latency_share,
        104: _speedup_of_share(0.6).latency_share,
        112: _speedup_of_share(0.8).latency_share,
    }
    shares[144] = _speedup_of_share(1.0).latency_share
    chosen, cost = rounding.choose_width(101, 144, shares, 16)
    assert chosen == 104 and "101 of 144" in cost
    group = rounding.GroupWidth("g", ("g", "h"), 144, 101, shares, chosen, cost)
    plan = PruningPlan(
        "l1-structured", {"g": LayerRule(0.3), "h": LayerRule(0.3), "x": LayerRule(0.5, "2:4")}
    )
    rounded = rounding.rounded_plan(plan, [group])
    assert rounded.round_to == 8 and kept_channels(144, rounded.layers["g"].ratio, 8) == 104
    assert rounded.layers["x"] == LayerRule(0.5, "2:4")  # other layers untouched
    # Within noise of the multiple: the multiple stays.
    shares[104] = _speedup_of_share(0.79, sign=-1).latency_share
    assert rounding.choose_width(101, 144, shares, 16)[0] == 112


def test_cli_evaluate_says_slower_names_layers_and_writes_the_rounded_plan(
    fake_cpu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    _thirty_percent().save(plan)
    out = tmp_path / "rounded.json"
    args = ["evaluate", "--model", "zoo:digits-cnn", "--plan", str(plan), "--runs", "30"]
    assert main([*args, "--rounded-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "SLOWER than dense" in text
    assert (
        "slower: the widths of 4 group(s) cost it, costliest first: " in text
        and "features.0 (23 of 32 channels" in text
    )
    assert "slower: the rounded plan (kept channels rounded up to multiples of 16" in text
    assert PruningPlan.load(out).round_to == 16
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["speedup"]["high"] < 1
    assert sorted(result["slowdown"]["costly"]) == [
        "features.0",
        "features.11",
        "features.3",
        "features.7",
    ]
    assert result["slowdown"]["rounded"]["speedup"]["low"] > 1


def test_report_says_slower_and_shows_the_rounded_plan(subject, fake_cpu, tmp_path: Path) -> None:
    from explorer.report import export_bundle

    cnn = subject("zoo:digits-cnn")
    files = export_bundle(cnn, _thirty_percent(), tmp_path / "out")
    html = files["report"].read_text()
    assert (
        "Slower than dense" in html
        and "The rounded plan" in html
        and "&quot;round_to&quot;: 16" in html
    )
    metrics = json.loads(files["metrics"].read_text())
    assert (
        metrics["slowdown"]["rounded"]["plan"]["round_to"] == 16 and metrics["speedup"]["high"] < 1
    )
    assert torch.is_tensor(torch.load(files["state_dict"], weights_only=True)["features.0.weight"])
