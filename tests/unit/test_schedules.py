"""Schedules: each reaches the plan's exact sparsity, keeps zeros zero while it trains, measures
every
step, cancels with a reason, and replays from the plan JSON. Oracles: one-shot ``apply_plan``
counts,
Zhu & Gupta's cubic formula, |grad * w| computed directly, the initial weights rebuilt from the
seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from explorer import schedules
from explorer.errors import PlanError, ScheduleError
from explorer.models.reinit import fresh_model
from explorer.models.zoo import build
from explorer.plan import LayerRule, PruningPlan
from explorer.prune import apply_plan
from explorer.schedules import (
    SCHEDULES,
    ScheduleSpec,
    cubic_sparsity,
    ramp,
    run_schedule,
    snip_saliency,
)
from explorer.subject import Subject

MLP = "zoo:digits-mlp"
LAYERS = ["hidden.0", "hidden.2", "classifier"]
# Short runs: every schedule trains 1-2 epochs of the 1,078 training digits.
SHORT = {
    "one-shot": {"epochs": 1},
    "iterative": {"rounds": 2, "epochs": 1},
    "gradual": {"epochs": 2, "frequency": 5},
    "snip": {"epochs": 1},
    "lottery": {"rounds": 2, "epochs": 1},
    "regularized": {"epochs": 1, "finetune_epochs": 1},
}


@pytest.fixture(scope="module")
def mlp(subject: Callable[..., Subject]) -> Subject:
    return subject(MLP)


def _nonzero(model: nn.Module, names: list[str]) -> dict[str, int]:
    modules = dict(model.named_modules())
    return {n: int(torch.count_nonzero(modules[n].weight)) for n in names}


def _plan(method: str = "l1-unstructured", ratio: float = 0.7, **kw: Any) -> PruningPlan:
    return PruningPlan(method=method, layers={n: LayerRule(ratio) for n in LAYERS}, model=MLP, **kw)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("method", ["l1-unstructured", "random-unstructured"])
def test_every_schedule_reaches_the_exact_sparsity_and_keeps_zeros(
    name: str, method: str, mlp: Subject
) -> None:
    plan = _plan(method)
    one_shot = _nonzero(apply_plan(mlp.model, plan, mlp.example_input), LAYERS)
    before = {k: v.clone() for k, v in mlp.model.state_dict().items()}
    result = run_schedule(mlp, plan, ScheduleSpec.make(name, **SHORT[name]))
    got = _nonzero(result.model, LAYERS)
    if name == "snip":  # one global ranking: the plan's total, spread by saliency
        assert sum(got.values()) == sum(one_shot.values())
    else:
        assert got == one_shot
    assert result.stopped == "completed" and result.stop_reason == ""
    assert result.final.phase == "final" and result.final.nonzero == sum(one_shot.values())
    assert result.final.sparsity == pytest.approx(
        result.target, abs=1e-4
    )  # whole weights per layer
    # Zeros stay zero while training: every epoch of a training phase has the count its last pruning
    # step left (gradual: the last mask update before it).
    count = None
    for step in result.steps:
        if step.phase in ("prune", "rewind", "mask update", "start"):
            count = step.nonzero
        elif step.phase == "train":
            assert step.nonzero == count, (step, count)
            assert step.val_accuracy is not None and step.train_loss is not None
        assert step.accuracy is not None and 0 <= step.accuracy <= 1
    assert all(
        torch.equal(v, mlp.model.state_dict()[k]) for k, v in before.items()
    )  # base model untouched
    d = result.to_dict()
    assert json.loads(json.dumps(d)) == d and d["steps"][-1]["nonzero"] == result.final.nonzero


@pytest.mark.parametrize("name", ["one-shot", "iterative", "regularized"])
def test_structured_plans_remove_the_same_channels_count(name: str, mlp: Subject) -> None:
    plan = PruningPlan(
        method="l1-structured",
        layers={"hidden.0": LayerRule(0.5), "hidden.2": LayerRule(0.3)},
        model=MLP,
    )
    one_shot = apply_plan(mlp.model, plan, mlp.example_input)
    result = run_schedule(mlp, plan, ScheduleSpec.make(name, **SHORT[name]))
    for n in ("hidden.0", "hidden.2", "classifier"):
        assert (
            dict(result.model.named_modules())[n].weight.shape
            == dict(one_shot.named_modules())[n].weight.shape
        )
    assert result.final.nonzero == sum(_nonzero(one_shot, ["hidden.0", "hidden.2"]).values())


def test_iterative_rounds_follow_the_ramp(mlp: Subject) -> None:
    result = run_schedule(
        mlp, _plan(ratio=0.8), ScheduleSpec.make("iterative", rounds=3, epochs=1, ramp="linear")
    )
    prunes = [s for s in result.steps if s.phase == "prune"]
    assert [s.round for s in prunes] == [1, 2, 3]
    for s in prunes:
        expected = sum(
            round(ramp(0.8, s.round, 3, "linear") * w.numel())
            for w in (dict(mlp.model.named_modules())[n].weight for n in LAYERS)
        )
        total = sum(dict(mlp.model.named_modules())[n].weight.numel() for n in LAYERS)
        assert total - s.nonzero == expected
    assert ramp(0.8, 1, 2) == pytest.approx(1 - 0.2**0.5) and ramp(0.8, 2, 2) == 0.8


def test_gradual_sparsity_follows_the_cubic_formula(mlp: Subject) -> None:
    ratios = {"hidden.0": 0.9, "hidden.2": 0.6, "classifier": 0.3}
    plan = PruningPlan(
        method="l1-unstructured", layers={n: LayerRule(r) for n, r in ratios.items()}, model=MLP
    )
    spec = ScheduleSpec.make(
        "gradual", epochs=2, frequency=4, start=0.1, end=0.8, initial_sparsity=0.05
    )
    result = run_schedule(mlp, plan, spec)
    per_epoch = schedules._steps_per_epoch(len(mlp.data.train))
    total = 2 * per_epoch
    t0, t_end = round(0.1 * total), round(0.8 * total)
    n = (t_end - t0) // 4
    updates = [s for s in result.steps if s.phase == "mask update"]
    assert [s.step for s in updates] == [t0 + 4 * j for j in range(n + 1)]
    sizes = {k: dict(mlp.model.named_modules())[k].weight.numel() for k in ratios}
    for j, s in enumerate(updates):
        # oracle: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3, per layer, rounded to whole
        # weights
        zeros = sum(
            round((r + (min(0.05, r) - r) * (1 - j / n) ** 3) * sizes[k]) for k, r in ratios.items()
        )
        assert sum(sizes.values()) - s.nonzero == zeros, j
    assert cubic_sparsity(0.9, 0.0, 0, 10) == 0.0 and cubic_sparsity(0.9, 0.0, 10, 10) == 0.9
    assert _nonzero(result.model, list(ratios)) == _nonzero(
        apply_plan(mlp.model, plan, mlp.example_input), list(ratios)
    )


def test_snip_saliency_is_grad_times_weight() -> None:
    model = build("digits-mlp", pretrained=False, seed=1)
    from explorer.data import load_data

    data = load_data(MLP)
    x, y = data.train.x[:50], data.train.y[:50]
    got = snip_saliency(model, x, y, LAYERS)
    oracle = build("digits-mlp", pretrained=False, seed=1).train()
    nn.functional.cross_entropy(oracle(x), y).backward()
    for name in LAYERS:
        w = dict(oracle.named_modules())[name].weight
        assert torch.allclose(got[name], (w.grad * w).abs(), rtol=1e-6, atol=1e-10)
    assert all(p.grad is None for p in model.parameters())  # computed on a copy


def test_snip_prunes_the_lowest_saliency_globally(mlp: Subject) -> None:
    plan = _plan(ratio=0.8)
    cancel_at_training = iter([False] + [True] * 1000)
    result = run_schedule(
        mlp,
        plan,
        ScheduleSpec.make("snip", epochs=1, batch=64),
        should_stop=lambda: next(cancel_at_training),
    )
    assert result.stopped == "cancelled"
    init = fresh_model(mlp.model, MLP, seed=0)
    idx = torch.randperm(len(mlp.data.train), generator=torch.Generator().manual_seed(0))[:64]
    sal = snip_saliency(init, mlp.data.train.x[idx], mlp.data.train.y[idx], LAYERS)
    flat = torch.cat([sal[n].reshape(-1) for n in LAYERS])
    k = sum(round(0.8 * sal[n].numel()) for n in LAYERS)
    threshold = flat.sort().values[k]
    pruned = result.steps[1]
    assert pruned.phase == "prune" and pruned.nonzero == flat.numel() - k
    modules = dict(result.model.named_modules())
    for n in LAYERS:  # survivors: saliency at least the threshold, and their initial values
        w = modules[n].weight
        init_w = dict(init.named_modules())[n].weight
        assert bool((sal[n][w != 0] >= threshold).all())
        assert torch.equal(w[w != 0], init_w[w != 0])


def test_lottery_rewinds_the_survivors_to_their_initial_values(
    mlp: Subject, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[nn.Module] = []
    real = schedules.finetune

    def spy(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        starts.append(__import__("copy").deepcopy(model))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(schedules, "finetune", spy)
    result = run_schedule(mlp, _plan(ratio=0.75), ScheduleSpec.make("lottery", rounds=2, epochs=1))
    assert len(starts) == 3  # the dense training, then one retraining per round
    init = build("digits-mlp", pretrained=False, seed=0)  # the oracle: the seed's initial weights
    for ticket in starts[1:]:
        for n in LAYERS:
            w, w0 = dict(ticket.named_modules())[n].weight, dict(init.named_modules())[n].weight
            keep = w != 0
            assert torch.equal(w[keep], w0[keep]), n
        for name, b in ticket.named_parameters():
            if name.endswith("bias"):
                assert torch.equal(b, dict(init.named_parameters())[name])
    # rounds are nested: a weight pruned in round 1 stays pruned in round 2
    first, second = (dict(t.named_modules()) for t in starts[1:])
    for n in LAYERS:
        assert not bool(((first[n].weight == 0) & (second[n].weight != 0)).any())
    assert [s.phase for s in result.steps if s.phase in ("rewind", "prune")] == ["rewind", "rewind"]


def test_lottery_control_reinitialises_the_survivors(
    mlp: Subject, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[nn.Module] = []
    real = schedules.finetune
    monkeypatch.setattr(
        schedules, "finetune", lambda m, *a, **k: (starts.append(m), real(m, *a, **k))[1]
    )
    run_schedule(
        mlp, _plan(ratio=0.75), ScheduleSpec.make("lottery", rounds=1, epochs=1, reinit=True)
    )
    init = build("digits-mlp", pretrained=False, seed=0)
    w, w0 = starts[1].hidden[0].weight, init.hidden[0].weight
    assert int(torch.count_nonzero(w)) == round(0.25 * w.numel())
    assert not torch.equal(w[w != 0], w0[w != 0])


def test_cancel_stops_early_with_the_reason(mlp: Subject) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 20  # some batches into the first round's fine-tuning

    result = run_schedule(
        mlp, _plan(ratio=0.8), ScheduleSpec.make("iterative", rounds=3, epochs=2), should_stop=stop
    )
    assert result.stopped == "cancelled"
    assert "round 1/3" in result.stop_reason or "round 2" in result.stop_reason
    assert not any(s.phase == "prune" and s.round == 3 for s in result.steps)
    assert result.final.sparsity < result.target  # the model handed over says where it stopped
    assert result.to_dict()["stop_reason"] == result.stop_reason


def test_progress_is_monotonic_and_ends_at_one(mlp: Subject) -> None:
    seen: list[float] = []
    run_schedule(
        mlp,
        _plan(),
        ScheduleSpec.make("iterative", rounds=2, epochs=1),
        on_progress=lambda f, m: seen.append(f),
    )
    assert seen == sorted(seen) and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)


def test_same_seed_same_steps(mlp: Subject) -> None:
    spec = ScheduleSpec.make("gradual", epochs=1, frequency=3, seed=2)
    a, b = (run_schedule(mlp, _plan(), spec) for _ in range(2))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.rows()]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.rows()]


# --- the plan's "schedule" -----------------------------------------------------------------------


def test_plan_round_trips_with_its_schedule() -> None:
    raw = {
        "format": "pruning-explorer/plan",
        "version": 1,
        "model": MLP,
        "method": "l1-unstructured",
        "scope": "local",
        "layers": {"hidden.0": 0.5},
        "schedule": {"name": "iterative", "rounds": 3, "epochs": 4},
    }
    plan = PruningPlan.from_dict(raw)
    assert plan.schedule == ScheduleSpec("iterative", (("rounds", 3), ("epochs", 4)))
    assert plan.to_dict() == raw
    assert (
        PruningPlan.from_json(plan.to_json()) == plan
        and PruningPlan.from_json(plan.to_json()).to_json() == plan.to_json()
    )
    assert plan.schedule.resolved()["ramp"] == "geometric"  # defaults are resolved, not written
    for name, options in SHORT.items():
        p = _plan(schedule=ScheduleSpec.make(name, **options))
        assert PruningPlan.from_json(p.to_json()) == p


def test_plan_without_schedule_is_unchanged_byte_for_byte() -> None:
    text = (
        '{\n  "format": "pruning-explorer/plan",\n  "version": 1,\n  "model": "zoo:digits-mlp",\n '
        ' "method": "l1-unstructured",\n  "scope": "local",\n  "layers": {\n    "hidden.0": 0.5\n '
        " }\n}"
    )
    plan = PruningPlan.from_json(text)
    assert plan.schedule is None and plan.to_json() == text
    assert plan.key() == PruningPlan.from_json(text).key()


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        ({"name": "weekly"}, r"unknown schedule 'weekly'"),
        ({"rounds": 3}, r"needs a 'name'"),
        ("iterative", r"must be an object"),
        ({"name": "iterative", "round": 3}, r"unknown option 'round'.*'rounds'"),
        ({"name": "iterative", "rounds": 0}, r"'rounds' must be >= 1, got 0"),
        ({"name": "iterative", "rounds": 2.5}, r"'rounds' must be an integer, got 2.5"),
        (
            {"name": "iterative", "ramp": "cubic"},
            r"'ramp' must be one of \['geometric', 'linear'\], got 'cubic'",
        ),
        ({"name": "gradual", "end": 1.5}, r"'end' must be in \[0, 1\], got 1.5"),
        (
            {"name": "gradual", "start": 0.6, "end": 0.5},
            r"'end' \(0.5\) must not come before 'start'",
        ),
        ({"name": "lottery", "reinit": "yes"}, r"'reinit' must be true or false, got 'yes'"),
        ({"name": "one-shot", "rounds": 2}, r"unknown option 'rounds'"),
    ],
)
def test_bad_schedules_are_errors_naming_the_value(schedule: Any, match: str) -> None:
    raw = {
        "format": "pruning-explorer/plan",
        "version": 1,
        "method": "l1-unstructured",
        "layers": {},
        "schedule": schedule,
    }
    with pytest.raises(PlanError, match=match):
        PruningPlan.from_dict(raw)


def test_schedules_refuse_what_they_cannot_do(mlp: Subject, tmp_path: Path) -> None:
    structured = PruningPlan(method="l1-structured", layers={"hidden.0": LayerRule(0.5)}, model=MLP)
    for name in ("gradual", "snip", "lottery"):
        with pytest.raises(ScheduleError, match=r"'hidden.0' uses 'l1-structured'"):
            run_schedule(mlp, structured, ScheduleSpec(name))
    with pytest.raises(ScheduleError, match=r"'snip'.*'2:4'"):
        run_schedule(mlp, _plan("2:4"), ScheduleSpec("snip"))
    with pytest.raises(ScheduleError, match="no batch-norm layer"):
        run_schedule(mlp, _plan(), ScheduleSpec.make("regularized", penalty="bn-l1"))
    with pytest.raises(ScheduleError, match="rewind to step 100000"):
        run_schedule(mlp, _plan(), ScheduleSpec.make("lottery", rewind=100000))


# --- fresh initialisation ------------------------------------------------------------------------


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * self.scale)


def test_fresh_model_reinitialises_user_models_or_says_why_not() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    trained = Plain()
    with torch.no_grad():
        for p in trained.parameters():
            p.fill_(0.5)
    a, b = (
        fresh_model(trained, "user.py:build", seed=1),
        fresh_model(trained, "user.py:build", seed=1),
    )
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=False)
    )
    assert not torch.equal(a.body[0].weight, trained.body[0].weight)
    assert (
        float(trained.body[0].weight.detach().sum()) == 0.5 * trained.body[0].weight.numel()
    )  # input untouched
    with pytest.raises(ScheduleError, match=r"<model> \(_Scaled: scale\)"):
        fresh_model(_Scaled(), "user.py:scaled")


# --- export and CLI ------------------------------------------------------------------------------


def _without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_export_replays_the_plans_schedule(mlp: Subject, tmp_path: Path) -> None:
    from explorer.report import export_bundle
    from explorer.runtime import OrtModel

    plan = _plan(ratio=0.8, schedule=ScheduleSpec.make("iterative", rounds=2, epochs=1))
    direct = run_schedule(mlp, plan)
    files = export_bundle(mlp, plan, tmp_path / "bundle")
    metrics = json.loads(files["metrics"].read_text())
    assert _without_seconds(metrics["schedule"]["steps"]) == _without_seconds(direct.rows())
    assert (
        metrics["schedule"]["settings"] == direct.settings
        and metrics["schedule"]["stopped"] == "completed"
    )
    assert metrics["recovery"]["settings"]["epochs"] == 1  # the last round's fine-tuning
    assert PruningPlan.load(files["plan"]).schedule == plan.schedule
    logits = OrtModel(files["onnx"])(mlp.data.test.x.numpy())
    assert metrics["accuracy"] == pytest.approx(
        float((logits.argmax(1) == mlp.data.test.y.numpy()).mean())
    )
    assert metrics["accuracy"] == pytest.approx(direct.final.accuracy, abs=2 / len(mlp.data.test))
    assert "Schedule: iterative" in files["report"].read_text()


def test_cli_schedule_flags_are_recorded_and_replayed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from explorer.cli import main

    _plan(ratio=0.75).save(tmp_path / "plan.json")
    common = ["--model", MLP, "--runs", "30"]
    code = main(
        [
            "export",
            *common,
            "--plan",
            str(tmp_path / "plan.json"),
            "--out",
            str(tmp_path / "a"),
            "--schedule",
            "lottery",
            "--rounds",
            "2",
            "--finetune-epochs",
            "1",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "schedule: lottery" in capsys.readouterr().err
    written = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert written["schedule"] == {"name": "lottery", "rounds": 2, "epochs": 1}
    code = main(
        [
            "export",
            *common,
            "--plan",
            str(tmp_path / "a" / "plan.json"),
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text())["schedule"] for d in "ab")
    assert _without_seconds(a["steps"]) == _without_seconds(b["steps"])
    # no flag and no schedule in the plan: the bundle's plan has none either (as before schedules)
    code = main(
        ["export", *common, "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "c")]
    )
    assert code == 0 and "schedule" not in json.loads((tmp_path / "c" / "plan.json").read_text())
    assert "schedule" not in json.loads((tmp_path / "c" / "metrics.json").read_text())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--schedule", "gradual", "--rounds", "2"],
            "--rounds is for the iterative and lottery schedules, not 'gradual'",
        ),
        (
            ["--schedule", "snip", "--finetune-epochs", "1", "--distill"],
            "--distill is for the one-shot schedule",
        ),
        (["--schedule", "weekly"], "invalid choice: 'weekly'"),
    ],
)
def test_cli_schedule_mistakes_exit_2(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from explorer.cli import main

    _plan().save(tmp_path / "plan.json")
    code = main(
        [
            "export",
            "--model",
            MLP,
            "--plan",
            str(tmp_path / "plan.json"),
            "--out",
            str(tmp_path / "o"),
            *flags,
        ]
    )
    assert code == 2 and message in capsys.readouterr().err


def test_cli_plan_with_a_bad_schedule_names_file_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from explorer.cli import main

    raw = _plan().to_dict() | {"schedule": {"name": "iterative", "rounds": -1}}
    (tmp_path / "plan.json").write_text(json.dumps(raw))
    code = main(
        [
            "export",
            "--model",
            MLP,
            "--plan",
            str(tmp_path / "plan.json"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "plan.json" in err and "'rounds' must be >= 1, got -1" in err


def test_loop_runs_a_schedule_as_one_measured_stage(mlp: Subject) -> None:
    from explorer import figures
    from explorer.loop import run_loop

    plan = _plan(ratio=0.6)
    result = run_loop(
        mlp, plan, epochs=0, schedule=ScheduleSpec.make("gradual", epochs=1, frequency=4)
    )
    assert [s.name for s in result.stages] == ["dense", "pruned", "gradual"]
    assert result.stages[2].metrics["params_nonzero"] == result.stages[1].metrics["params_nonzero"]
    steps = result.schedule["steps"]
    fig = figures.schedule_steps(steps)
    accuracy, sparsity = fig.data
    assert list(accuracy.y) == [100 * s["accuracy"] for s in steps]
    assert list(sparsity.y) == [100 * s["sparsity"] for s in steps]
    assert sparsity.yaxis == "y2" and fig.layout.yaxis2.range == (0, 100)
