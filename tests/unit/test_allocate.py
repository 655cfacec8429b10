"""Automatic allocation: the knapsack against brute force, every kind of target met (measured),
and on a model the zoo does not have, 80% sparsity that beats uniform and global magnitude."""

from __future__ import annotations

import copy
import itertools
import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn.utils import prune as torch_prune

from explorer import Subject
from explorer import allocate as alloc
from explorer import sensitivity as sens
from explorer.allocate import core as alloc_core
from explorer.allocate.knapsack import BUCKETS, solve
from explorer.allocate.meter import Meter
from explorer.allocate.targets import SavingsContext, masked_nonzeros, masked_weights
from explorer.allocate.targets import latency as latency_target
from explorer.cli import main
from explorer.errors import PlanError
from explorer.evaluate import evaluate_torch
from explorer.inspect import count_macs
from explorer.latency import LATENCY_COLUMNS, fast_multiple
from explorer.methods import get_method
from explorer.plan import LayerRule, PruningPlan
from explorer.prune import pruned_weight
from explorer.runtime import Speedup, speedup_of

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def unseen() -> Subject:
    return Subject(f"{MODELS_DIR / 'allocation_net.py'}:residual_mlp", "zoo:digits-flat")


@pytest.fixture(scope="module")
def mlp() -> Subject:
    return Subject("zoo:digits-mlp")


def _accuracy(subject: Subject, model: torch.nn.Module) -> float:
    return evaluate_torch(model, subject.data.test)[0]


def test_beats_uniform_and_global_magnitude_at_80_percent(unseen: Subject) -> None:
    result = alloc.allocate(unseen, ("sparsity", 0.8))
    assert result.met and result.achieved >= 0.8
    names = unseen.layer_names
    # The same ratio in every layer.
    uniform = _accuracy(unseen, unseen.prune(PruningPlan.uniform("l1-unstructured", names, 0.8)))
    # PyTorch's global_unstructured: one L1 threshold over every prunable weight.
    model = copy.deepcopy(unseen.model)
    modules = dict(model.named_modules())
    params = [(modules[n], "weight") for n in names]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.8)
    for module, name in params:
        torch_prune.remove(module, name)
    global_ = _accuracy(unseen, model)
    ours = _accuracy(unseen, unseen.prune(result.plan))
    assert result.chosen == "knapsack"  # the allocation itself, not a baseline it compared with
    assert result.verified_accuracy is not None
    assert abs(ours - result.verified_accuracy) <= 1 / len(unseen.data.test) + 1e-12  # torch vs ORT
    assert ours > global_ and ours > uniform, (
        f"allocation {ours:.4f}, global {global_:.4f}, uniform {uniform:.4f}"
    )


def test_keeps_a_baseline_when_the_curves_mislead(mlp: Subject) -> None:
    """Curves that say nothing hurts: the knapsack's plan is arbitrary; a better baseline is
    kept."""
    ratios = (0.5, 0.9, 0.98)
    curves = pd.DataFrame(
        [(n, r, 0.99, 0.05, n) for n in mlp.layer_names for r in (0.0, *ratios)],
        columns=["layer", "ratio", "accuracy", "loss", "members"],
    )
    result = alloc.allocate(mlp, ("sparsity", 0.8), curves=curves, ratios=ratios, verify=False)
    assert result.met
    assert set(result.candidates) >= {"knapsack", "uniform", "global magnitude"}
    best = max(result.candidates, key=result.candidates.get)
    assert result.candidates[result.chosen] == result.candidates[best]
    assert _accuracy(mlp, mlp.prune(result.plan)) == pytest.approx(result.candidates[result.chosen])


def _prunable_sparsity(subject: Subject, model: torch.nn.Module) -> float:
    modules = dict(model.named_modules())
    base = dict(subject.model.named_modules())
    total = sum(base[n].weight.numel() for n in subject.layer_names)
    return 1 - sum(int(torch.count_nonzero(modules[n].weight)) for n in subject.layer_names) / total


@pytest.mark.parametrize(
    ("kind", "value", "method"),
    [
        ("sparsity", 0.7, "l1-unstructured"),
        ("sparsity", 0.5, "l2-structured"),
        ("macs", 0.5, "l1-structured"),
        ("size", 0.6, "l1-structured"),
        ("size", 0.6, "l1-unstructured"),
    ],
)
def test_meets_counted_targets(mlp: Subject, kind: str, value: float, method: str) -> None:
    result = alloc.allocate(mlp, (kind, value), method)
    assert result.met, f"{kind} {value}: achieved {result.achieved}"
    model = mlp.prune(result.plan)
    # Re-measure independently of the allocator.
    if kind == "sparsity":
        achieved = _prunable_sparsity(mlp, model)
        assert achieved >= value and achieved == pytest.approx(result.achieved)
    elif kind == "macs":
        achieved = sum(count_macs(model, mlp.example_input).values()) / mlp.inventory.total_macs
        assert achieved <= value and achieved == pytest.approx(result.achieved)
    else:
        assert result.evaluation is not None
        metrics = result.evaluation.to_dict()
        dense = metrics["dense"]
        key = "onnx_bytes" if method.endswith("-structured") else "onnx_gzip_bytes"
        assert result.size_metric == key
        assert metrics[key] / dense[key] <= value
    assert result.verified_accuracy is not None and result.evaluation is not None
    assert result.verified_accuracy == result.evaluation.pruned.accuracy
    assert result.flagged == (
        abs(result.predicted_accuracy - result.verified_accuracy) > alloc.FLAG_POINTS
    )
    assert set(result.plan.layers) <= set(mlp.layer_names)


_CHOICES = np.round(np.concatenate([np.arange(0, 1, 0.01), [0.995, 1.0]]), 4)


@pytest.mark.parametrize(
    "method",
    [
        "l1-unstructured",
        "random-unstructured",
        "taylor-unstructured",
        "wanda-unstructured",
        "2:4",
        "sparsegpt-unstructured",
    ],
)
def test_the_savings_masks_are_pruned_weights_masks(mlp: Subject, method: str) -> None:
    """One sort of the scores per layer gives, at every fine choice, the very weight
    ``pruned_weight`` gives (methods with masks of their own go through it)."""
    ctx = SavingsContext(mlp, get_method(method), [], lambda f, m: None)
    for unit in mlp.layer_names:
        fast = list(masked_weights(ctx, unit, _CHOICES))
        assert len(fast) == len(_CHOICES)
        for x, got in zip(_CHOICES, fast, strict=True):
            want = pruned_weight(method, mlp.model, unit, float(x), calibration=mlp.calibration)
            assert torch.equal(got, want), (method, unit, x)


def test_the_savings_masks_follow_topk_through_ties() -> None:
    """Weights of five values (zeros among them): nearly every choice's boundary falls inside a
    group of equal magnitudes, where ``topk`` picks which of them go; the masks are its own."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Linear(30, 10))
    with torch.no_grad():
        for layer in model:
            layer.weight.copy_(torch.randint(-2, 3, layer.weight.shape) / 10)
    subject = types.SimpleNamespace(model=model, calibration=None)
    ctx = SavingsContext(subject, get_method("l1-unstructured"), [], lambda f, m: None)  # type: ignore[arg-type]
    for unit in ("0", "1"):
        for x, got in zip(_CHOICES, masked_weights(ctx, unit, _CHOICES), strict=True):
            want = pruned_weight("l1-unstructured", model, unit, float(x))
            assert torch.equal(got, want), (unit, x)


@pytest.mark.parametrize(
    "method",
    ["l1-unstructured", "random-unstructured", "taylor-unstructured", "wanda-unstructured", "2:4"],
)
def test_the_savings_counts_are_the_masks_counts(mlp: Subject, method: str) -> None:
    """The sparsity target's counts (one cumulative sum per layer) against ``count_nonzero`` of
    every masked weight, at every fine choice: on the trained layers, on layers of five values
    (ties at nearly every boundary), of many zeros, with NaN and infinite weights, and where tied
    scores mix zero and nonzero weights."""
    torch.manual_seed(0)
    tied = torch.nn.Sequential(*(torch.nn.Linear(40, 30) for _ in range(4)))
    with torch.no_grad():
        tied[0].weight.copy_(torch.randint(-2, 3, tied[0].weight.shape) / 10)
        tied[1].weight.mul_(torch.rand(tied[1].weight.shape) < 0.3)  # 70 % zeros already
        tied[2].weight[0, :5] = float("nan")
        tied[3].weight[1, :3] = float("inf")
    # Taylor's scores (and Wanda's) are zero for the weights of pixels that are always blank (the
    # digits' corners): with some weights zeroed too, ties at zero mix zero and nonzero weights.
    first = mlp.layer_names[0]
    zeroed = copy.deepcopy(mlp.model)
    with torch.no_grad():
        dict(zeroed.named_modules())[first].weight[::2, ::3] = 0.0
    subjects = [
        (mlp, mlp.layer_names),
        (types.SimpleNamespace(model=tied, calibration=None), ["0", "1", "2", "3"]),
        (types.SimpleNamespace(model=zeroed, calibration=mlp.calibration), [first]),
    ]
    for subject, units in subjects:
        if method.startswith(("wanda", "taylor")) and subject.calibration is None:
            continue  # needs calibration data
        ctx = SavingsContext(subject, get_method(method), [], lambda f, m: None)  # type: ignore[arg-type]
        for unit in units:
            want = [int(torch.count_nonzero(w)) for w in masked_weights(ctx, unit, _CHOICES)]
            got = masked_nonzeros(ctx, unit, _CHOICES)
            assert got.tolist() == want, (method, unit)


def _timed(shares: list[float]) -> Speedup:
    """An interleaved timing whose rounds saw the pruned model at these shares of the dense
    latency."""
    return speedup_of(
        [[[10.0] * 3 for _ in shares], [[10.0 * x] * 3 for x in shares]], 0, 1, threads=1
    )


def _fake_curves(
    subject: Subject,
    method: str,
    ratios: object,
    layers: object = None,
    on_progress: object = None,
    **kwargs: object,
) -> pd.DataFrame:
    """Optimistic latency curves: each group's share of the dense latency follows its MACs."""
    rows = []
    for gid, members in subject.inventory.groups.items():
        for r in [0.0, *(ratios or alloc.STRUCTURED_RATIOS)]:  # type: ignore[misc]
            plan = (
                PruningPlan(method=method, layers={m: LayerRule(r) for m in members}) if r else None
            )
            model = subject.prune(plan) if plan else subject.model
            macs = (
                sum(count_macs(model, subject.example_input).values())
                / subject.inventory.total_macs
            )
            rows.append(
                {
                    "layer": gid,
                    "ratio": r,
                    "channels_kept": 1,
                    "latency_ms_median": macs,
                    "latency_ms_p90": macs,
                    "latency_ms_spread": 0.0,
                    "members": ",".join(members),
                    "dense_ms_median": 1.0,
                    "latency_share": macs,
                    "latency_share_low": macs,
                    "latency_share_high": macs,
                }
            )
    return pd.DataFrame(rows, columns=LATENCY_COLUMNS)


def test_latency_target_iterates_until_the_measure_meets_it(
    mlp: Subject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first measurements miss (a pessimistic meter); the allocator asks for more until it
    meets."""
    calls: list[float] = []

    def fake_latency(self: Meter, model: torch.nn.Module) -> Speedup:
        macs = sum(count_macs(model, mlp.example_input).values()) / mlp.inventory.total_macs
        calls.append(macs)
        share = 0.2 + 0.8 * macs  # a fixed overhead that MACs do not remove
        self.last = _timed([share * f for f in (0.98, 1.0, 1.01, 0.99, 1.02)])
        return self.last

    monkeypatch.setattr(Meter, "latency", fake_latency)
    monkeypatch.setattr(latency_target, "latency_curves", _fake_curves)
    result = alloc.allocate(mlp, ("latency", 0.7), "l1-structured", round_to=1)
    assert result.met and result.achieved <= 0.7
    assert result.rounds > 1 and len(calls) == result.rounds
    assert calls[0] > calls[-1]  # asked for more after the first miss
    assert result.speedup is not None and result.achieved == result.speedup.latency_share.high


def test_latency_target_is_met_only_when_every_interleaved_round_is_within_it(
    mlp: Subject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cards' rule: a median within the target is not enough when a round is not (that plan's
    card would not show a speedup in every round); met needs the slowest round within it."""
    rounds = [0.5, 0.6, 0.65, 0.66, 0.9]  # median 0.65 <= 0.7, slowest 0.9 > 0.7

    def timed(self: Meter, model: torch.nn.Module) -> Speedup:
        self.last = _timed(rounds)
        return self.last

    monkeypatch.setattr(Meter, "latency", timed)
    monkeypatch.setattr(latency_target, "latency_curves", _fake_curves)
    result = alloc.allocate(mlp, ("latency", 0.7), "l1-structured", round_to=1, verify=False)
    assert result.speedup is not None and result.speedup.latency_share.value == pytest.approx(0.65)
    assert result.achieved == pytest.approx(0.9) and not result.met
    rounds[-1] = 0.69  # now every round is within the target: met, and the card shows a speedup
    result = alloc.allocate(mlp, ("latency", 0.7), "l1-structured", round_to=1, verify=False)
    assert result.met and result.achieved == pytest.approx(0.69)
    assert result.speedup is not None and result.speedup.faster and not result.speedup.within_noise


def test_latency_target_rounds_kept_channels_by_default(
    mlp: Subject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Meter, "latency", lambda self, model: _timed([0.5] * 5))
    monkeypatch.setattr(latency_target, "latency_curves", _fake_curves)
    monkeypatch.setattr(alloc_core, "fast_multiple", lambda: 16)
    quick = {"verify": False, "ratios": (0.3, 0.6)}
    result = alloc.allocate(mlp, ("latency", 0.7), "l1-structured", **quick)
    assert result.plan.round_to == 16
    assert (
        alloc.allocate(mlp, ("latency", 0.7), "l1-structured", round_to=8, **quick).plan.round_to
        == 8
    )
    assert (
        alloc.allocate(mlp, ("latency", 0.7), "l1-structured", round_to=1, **quick).plan.round_to
        is None
    )
    assert alloc.allocate(mlp, ("macs", 0.7), "l1-structured", **quick).plan.round_to is None
    with pytest.raises(PlanError, match="round_to"):
        alloc.allocate(mlp, ("sparsity", 0.5), "l1-unstructured", verify=False, round_to=8)


def test_latency_target_measured() -> None:
    """Real timing: only the bookkeeping is asserted (latency depends on the machine's load)."""
    cnn = Subject("zoo:digits-cnn", runs=30)
    result = alloc.allocate(cnn, ("latency", 0.8), "l1-structured", ratios=(0.3, 0.6, 0.9))
    assert result.met == (result.achieved <= 0.8)
    assert result.speedup is not None and result.achieved == result.speedup.latency_share.high
    assert result.evaluation is not None and result.evaluation.speedup is not None
    assert result.evaluation.pruned.macs < result.evaluation.dense.macs


def _brute_force(damage: list[np.ndarray], saving: list[np.ndarray], need: float) -> float:
    best = np.inf
    for picks in itertools.product(*[range(len(d)) for d in damage]):
        if sum(s[c] for s, c in zip(saving, picks, strict=False)) >= need - 1e-12:
            best = min(best, sum(d[c] for d, c in zip(damage, picks, strict=False)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_matches_brute_force(mlp: Subject, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_units, n_choices = 4, 5
    need = 0.5
    # Savings on the knapsack's grid (multiples of need / buckets) so rounding loses nothing.
    saving = [
        np.concatenate([[0.0], np.sort(rng.integers(1, BUCKETS // 2, n_choices - 1))])
        * need
        / BUCKETS
        for _ in range(n_units)
    ]
    damage = [
        np.concatenate([[0.0], np.sort(rng.uniform(0, 1, n_choices - 1))]) for _ in range(n_units)
    ]
    units = {f"u{i}": [f"u{i}"] for i in range(n_units)}
    picks = solve(
        dict(zip(units, damage, strict=False)), dict(zip(units, saving, strict=False)), need
    )
    expected = _brute_force(damage, saving, need)
    if not np.isfinite(expected):
        assert picks is None
        return
    assert picks is not None
    assert sum(saving[i][picks[u]] for i, u in enumerate(units)) >= need - 1e-12
    assert sum(damage[i][picks[u]] for i, u in enumerate(units)) == pytest.approx(expected)


def test_pareto_front(mlp: Subject) -> None:
    front = alloc.pareto_front(mlp, "sparsity", [0.9, 0.5, 0.7], verify=False)
    assert [a.target.value for a in front] == [0.5, 0.7, 0.9]
    assert all(a.met for a in front)
    achieved = [a.achieved for a in front]
    assert achieved == sorted(achieved)
    predicted = [a.predicted_accuracy for a in front]
    assert predicted == sorted(predicted, reverse=True)
    frame = alloc.pareto_frame(front)
    assert list(frame.value) == [0.5, 0.7, 0.9] and frame.on_front.any()
    best = frame.predicted_accuracy.idxmax()
    assert frame.on_front[best]  # nothing beats the most accurate allocation on accuracy


@pytest.mark.parametrize(
    ("kind", "method"), [("sparsity", "l1-unstructured"), ("macs", "l1-structured")]
)
def test_curve_needs_counts_the_points_the_allocation_scans(
    mlp: Subject, kind: str, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))  # an empty cache
    units = len(sens.units(mlp, method))
    grid = alloc.curve_ratios(get_method(method))
    assert alloc.curve_needs(mlp, kind, method) == alloc.CurveNeeds(
        method, tuple(grid), None, units * len(grid), 0, len(mlp.data.test)
    )
    sens.scan(mlp, method)  # the Sensitivity page's default ratios
    shared = len({round(r, 6) for r in grid} & {round(r, 6) for r in sens.DEFAULT_RATIOS})
    before = alloc.curve_needs(mlp, kind, method)
    assert (before.left, before.cached) == (units * (len(grid) - shared), units * shared)
    alloc.allocate(mlp, (kind, 0.5), method, verify=False)
    # The allocation scanned exactly the points it said it lacked, and they are what the next one
    # starts from.
    after = alloc.curve_needs(mlp, kind, method)
    assert (after.left, after.cached) == (0, units * len(grid))
    assert sens.pending(mlp, method, grid) == (0, units * len(grid))


def test_curve_needs_follow_the_allocations_grid_and_rounding(mlp: Subject) -> None:
    assert alloc.curve_ratios(get_method("2:4")) == [0.5]  # N:M: a layer has the pattern or not
    assert alloc.curve_ratios(get_method("l1-unstructured"), (0.9, 0.0, 0.5)) == [0.5, 0.9]
    assert alloc.curve_needs(mlp, "latency", "l1-structured").round_to == fast_multiple()
    assert alloc.curve_needs(mlp, "macs", "l1-structured").round_to is None
    with pytest.raises(PlanError, match="structured"):
        alloc.curve_needs(mlp, "macs", "l1-unstructured")
    with pytest.raises(PlanError, match="allocation ratio"):
        alloc.curve_ratios(get_method("2:4"), (1.5,))


def test_user_errors(mlp: Subject) -> None:
    with pytest.raises(PlanError, match="structured"):
        alloc.allocate(mlp, ("macs", 0.5), "l1-unstructured")
    with pytest.raises(PlanError, match="structured"):
        alloc.allocate(mlp, ("latency", 0.5), "2:4")
    with pytest.raises(PlanError, match="1.5"):
        alloc.Target("size", 1.5)
    with pytest.raises(PlanError, match="speed"):
        alloc.Target("speed", 0.5)  # type: ignore[arg-type]
    with pytest.raises(PlanError, match="out of reach"):
        alloc.allocate(mlp, ("sparsity", 0.995), ratios=(0.5, 0.9))


def test_cli_allocate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    assert (
        main(
            ["allocate", "--model", "zoo:digits-mlp", "--target-sparsity", "0.6", "--out", str(out)]
        )
        == 0
    )
    plan = PruningPlan.load(out)
    assert plan.method == "l1-unstructured" and plan.layers
    captured = capsys.readouterr()
    printed = captured.out
    assert "predicted" in printed and "verified" in printed
    units = len(sens.units(Subject("zoo:digits-mlp"), "l1-unstructured"))
    total = units * len(alloc.UNSTRUCTURED_RATIOS)
    assert f" of {total} sensitivity points to scan (l1-unstructured at 0.1, 0.2," in captured.err
    assert json.loads(out.read_text())["format"] == "pruning-explorer/plan"
    # User errors: one line on stderr, exit code 2.
    assert (
        main(
            [
                "allocate",
                "--model",
                "zoo:digits-mlp",
                "--target-macs",
                "0.5",
                "--method",
                "l1-unstructured",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error:") and "structured" in err[-1]
    assert (
        main(["allocate", "--model", "zoo:digits-mlp", "--target-size", "2", "--out", str(out)])
        == 2
    )
    assert (
        main(
            [
                "allocate",
                "--model",
                "zoo:digits-mlp",
                "--target-size",
                "0.5",
                "--target-macs",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 2
    )
