"""The fast sensitivity scan against its oracle (Distiller's loop), plus proxy, cache, ETA,
latency."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from explorer import Subject, latency
from explorer import sensitivity as sens
from explorer.errors import PlanError
from explorer.methods import available_methods, get_method
from explorer.plan import LayerRule, PruningPlan
from explorer.progress import Eta
from explorer.prune import apply_plan, kept_channels
from explorer.sensitivity import engines, scanning
from explorer.sensitivity.engines import ort_suffix

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
RATIOS = (0.2, 0.5, 0.9)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def mlp() -> Subject:
    return Subject("zoo:digits-mlp")


@pytest.fixture(scope="module")
def residual(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    """A model the zoo does not have (residual adds couple channels), on unlabelled data."""
    sys.path.insert(0, str(MODELS_DIR))
    try:
        import unseen
    finally:
        sys.path.remove(str(MODELS_DIR))
    data = unseen.write_npz("residual_1d", tmp_path_factory.mktemp("data"), labels=False, n=120)
    return Subject(f"{MODELS_DIR / 'unseen.py'}:residual_1d", str(data))


def _same_points(fast: pd.DataFrame, ref: pd.DataFrame, n_samples: int) -> None:
    assert list(fast.columns) == sens.COLUMNS
    assert list(fast.layer) == list(ref.layer)
    assert list(fast.ratio) == list(ref.ratio)
    assert list(fast.members) == list(ref.members)
    # ONNX Runtime and PyTorch round differently: a point may differ by one sample at most.
    assert np.abs(fast.accuracy.to_numpy() - ref.accuracy.to_numpy()).max() <= 1 / n_samples + 1e-12
    np.testing.assert_allclose(fast.loss.to_numpy(), ref.loss.to_numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("which", ["mlp", "residual"])
def test_scan_matches_distiller_loop(
    method: str, which: str, request: pytest.FixtureRequest
) -> None:
    subject: Subject = request.getfixturevalue(which)
    before = _state(subject.model)
    fast = sens.scan(subject, method, RATIOS, cache=False)
    ref = sens.reference_scan(subject, method, RATIOS)
    if ref.empty:  # the method applies to no unit of this model: every layer says why
        assert fast.empty and all(
            get_method(method).applies_to(n, subject.inventory) for n in subject.layer_names
        )
    else:
        _same_points(fast, ref, len(subject.data.test))
    after = subject.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the scan modified the base model"


def test_fast_engine_is_used_and_torch_fallback_agrees(mlp: Subject) -> None:
    method = get_method("l1-unstructured")
    assert engines.engine_for(mlp, method).name == "onnxruntime-suffix"
    torch_scan = sens.scan(mlp, "l1-unstructured", RATIOS, cache=False, engine="torch")
    ref = sens.reference_scan(mlp, "l1-unstructured", RATIOS)
    # Same arithmetic as the oracle: identical numbers.
    pd.testing.assert_frame_equal(torch_scan, ref)


def test_chunked_evaluation(residual: Subject, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data in several chunks (and a capture memory budget of a few samples) gives the same
    points."""
    monkeypatch.setattr(ort_suffix, "CHUNK", 50)
    monkeypatch.setattr(ort_suffix, "_CAPTURE_BYTES", 1)
    monkeypatch.setattr(engines, "_ENGINES", type(engines._ENGINES)())
    fast = sens.scan(residual, "l1-unstructured", RATIOS, cache=False)
    _same_points(
        fast, sens.reference_scan(residual, "l1-unstructured", RATIOS), len(residual.data.test)
    )


def test_chunks_are_sized_from_the_shapes_without_building_captures(residual: Subject) -> None:
    """A chunk's size comes from the inner tensors' shapes (what a capture run measures, byte for
    byte) and deciding it builds no capture session: each holds a copy of the weights, and one per
    group before the first point was most of a ResNet-50 scan's memory."""
    engine = ort_suffix.OrtSuffixEngine(residual)
    names = residual.layer_names
    job = engine.job(
        get_method("l1-unstructured"), {n: [n] for n in names}, {n: [0.5] for n in names}
    )
    graph = engine.graph
    inner = [needed for _, needed in engine.groups(job) if needed]
    assert inner
    built = set(graph.captures)
    sizes = [engine.chunk_size(needed) for needed in inner]
    assert set(graph.captures) == built
    x = residual.data.test.x.numpy()[:1]
    for needed, size in zip(inner, sizes, strict=True):
        outs = graph.capture(needed).run(list(needed), {ort_suffix.INPUT_NAME: x})
        assert sum(graph.sample_bytes[n] for n in needed) == sum(a.nbytes for a in outs)
        assert size >= 1


def test_release_drops_the_engines_and_the_cache_still_answers(
    mlp: Subject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))
    method = get_method("l1-unstructured")
    first = sens.scan(mlp, method.name, RATIOS)
    built = engines.engine_for(mlp, method)
    assert engines.engine_for(mlp, method) is built  # kept while the subject lives
    sens.release(mlp)
    assert engines.engine_for(mlp, method) is not built  # built again after a release
    sens.release(mlp)
    pd.testing.assert_frame_equal(sens.scan(mlp, method.name, RATIOS), first)


def test_structured_units_are_groups(residual: Subject) -> None:
    df = sens.scan(residual, "l1-structured", (0.5,), cache=False)
    groups = residual.inventory.groups
    assert set(df.layer) == set(groups)
    for gid, members in df.groupby("layer").members.first().items():
        assert members.split(",") == list(groups[gid])
    assert any(len(m) > 1 for m in groups.values()), "the residual model must have coupled layers"


def test_round_to_scan_matches_apply_plan(residual: Subject) -> None:
    fast = sens.scan(residual, "l2-structured", (0.3, 0.6), cache=False, round_to=8)
    ref = sens.reference_scan(residual, "l2-structured", (0.3, 0.6), round_to=8)
    _same_points(fast, ref, len(residual.data.test))


def test_round_to_keeps_multiples(residual: Subject) -> None:
    gid, members = next(
        (g, m)
        for g, m in residual.inventory.groups.items()
        if residual.inventory[g].out_channels >= 16
    )
    n = residual.inventory[gid].out_channels
    plan = PruningPlan(method="l1-structured", layers={m: LayerRule(0.3) for m in members})
    pruned = apply_plan(
        residual.model, plan, residual.example_input, residual.inventory, round_to=8
    )
    kept = dict(pruned.named_modules())[gid].weight.shape[0]
    assert kept == kept_channels(n, 0.3, 8)
    assert kept % 8 == 0 or kept == n
    assert kept_channels(32, 0.3) == 23 and kept_channels(32, 0.3, 8) == 24
    assert kept_channels(32, 0.99, 8) == 8 and kept_channels(5, 0.5, 8) == 5


def test_cache_is_reused_and_extended(
    mlp: Subject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))
    first = sens.scan(mlp, "l1-unstructured", RATIOS, layers=["hidden.0"])
    assert list((tmp_path / "sensitivity").glob("scan-*.csv"))
    est = sens.estimate(mlp, "l1-unstructured", RATIOS, layers=["hidden.0"])
    assert est.points == 0 and est.cached == len(RATIOS) and est.seconds == 0

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached scan must not evaluate anything")

    monkeypatch.setattr(scanning, "engine_for", refuse)
    again = sens.scan(mlp, "l1-unstructured", RATIOS, layers=["hidden.0"])
    pd.testing.assert_frame_equal(first, again)
    monkeypatch.undo()
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))
    est = sens.estimate(mlp, "l1-unstructured", RATIOS)
    assert est.cached == len(RATIOS) and est.points == len(RATIOS) * (len(mlp.layer_names) - 1)
    assert est.seconds > 0 and est.seconds_per_evaluation > 0
    full = sens.scan(mlp, "l1-unstructured", RATIOS)
    pd.testing.assert_frame_equal(full[full.layer == "hidden.0"].reset_index(drop=True), first)
    # A different method, or different weights, is a different cache entry.
    other = sens.scan_cache(mlp, "random-unstructured", None)
    assert other.path != sens.scan_cache(mlp, "l1-unstructured", None).path
    assert other.load() == {}


def test_model_hash_tracks_weights(mlp: Subject) -> None:
    copy_ = apply_plan(
        mlp.model, PruningPlan.uniform("l1-unstructured", ["hidden.0"], 0.5), mlp.example_input
    )
    assert sens.model_hash(mlp.model) == sens.model_hash(mlp.model)
    assert sens.model_hash(copy_) != sens.model_hash(mlp.model)


def test_proxy_is_the_magnitude_removed(mlp: Subject, residual: Subject) -> None:
    df = sens.proxy(mlp, "l1-unstructured", RATIOS)
    assert list(df.columns) == sens.PROXY_COLUMNS
    w = dict(mlp.model.named_modules())["hidden.2"].weight.detach().abs().flatten().double()
    k = round(0.5 * w.numel())
    expected = float(w.sort().values[:k].sum() / w.sum())
    got = df[(df.layer == "hidden.2") & (df.ratio == 0.5)].magnitude_removed.item()
    assert got == pytest.approx(expected, rel=1e-9)
    for _, curve in df.groupby("layer"):
        values = curve.sort_values("ratio").magnitude_removed.to_numpy()
        assert values[0] == 0 and np.all(np.diff(values) >= 0) and values[-1] <= 1
        # Magnitude pruning removes the small weights: less mass than the share of weights.
        assert np.all(values[1:] < np.array(RATIOS))
    structured = sens.proxy(residual, "l1-structured", RATIOS)
    assert set(structured.layer) == set(residual.inventory.groups)
    assert structured.magnitude_removed.between(0, 1).all()


def test_latency_curves(mlp: Subject) -> None:
    df = latency.latency_curves(mlp, "l1-structured", (0.3, 0.9), round_to=8, cache=False)
    assert list(df.columns) == latency.LATENCY_COLUMNS
    assert set(df.layer) == set(mlp.inventory.groups)
    for _, row in df.iterrows():
        n = mlp.inventory[row.layer].out_channels
        assert row.channels_kept == (n if row.ratio == 0 else kept_channels(n, row.ratio, 8))
        assert row.channels_kept % 8 == 0
        assert 0 < row.latency_ms_median <= row.latency_ms_p90
        assert row.latency_share_low <= row.latency_share <= row.latency_share_high
        if row.ratio == 0:
            assert row.latency_share == 1.0 and row.dense_ms_median == row.latency_ms_median


def test_user_errors(mlp: Subject) -> None:
    with pytest.raises(PlanError, match="nope"):
        sens.scan(mlp, "l1-unstructured", RATIOS, layers=["nope"])
    with pytest.raises(PlanError, match="ratio"):
        sens.scan(mlp, "l1-unstructured", (0.5, 1.5))
    with pytest.raises(PlanError, match="round_to"):
        sens.scan(mlp, "l1-unstructured", RATIOS, round_to=8)
    with pytest.raises(PlanError, match="structured"):
        latency.latency_curves(mlp, "l1-unstructured", RATIOS)


def test_eta_measures_its_rate_from_the_first_report() -> None:
    """The set-up before the first report (19 s at 0.02 % on a 224-px ResNet) is not extrapolated:
    the rate is measured between reports."""
    now = [100.0]
    eta = Eta(clock=lambda: now[0])
    assert eta(0.0002) is None  # one report: no rate yet
    now[0] = 102.0
    assert eta(0.1002) == pytest.approx(2.0 / 0.1 * 0.8998)
    now[0] = 103.0
    assert eta(0.2002) == pytest.approx(3.0 / 0.2 * 0.7998)  # rate from the first report on
    assert "measuring the time left" in Eta(clock=lambda: 0.0).note(0.5)


def test_scan_progress_says_the_time_left(mlp: Subject) -> None:
    messages: list[tuple[float, str]] = []
    engines.forget_engines(mlp)
    sens.scan(
        mlp,
        "l1-unstructured",
        RATIOS,
        mlp.layer_names[:2],
        cache=False,
        on_progress=lambda f, m: messages.append((f, m)),
    )
    points = [m for f, m in messages if "@" in m]
    assert len(points) == 2 * len(RATIOS)
    assert points[0].endswith("(measuring the time left)")
    assert all(re.search(r"\(~\d+ s left\)$", m) for m in points[1:]), points
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
