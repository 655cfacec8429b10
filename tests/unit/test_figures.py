"""Figure builders, layer views (masks against the real pruning code), the bundle zip, and the
app's pure helpers (Draft, metric cards)."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from explorer import figures
from explorer.bundle import export_command, zip_bundle
from explorer.errors import PlanError
from explorer.evaluate import Evaluation, Metrics
from explorer.methods import available_methods, get_method
from explorer.plan import LayerRule, PruningPlan
from explorer.runtime import speedup_of
from explorer.weights import channel_importance, layer_view, removed_channels, weight_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # ui/ sits next to app.py
from ui.draft import Draft, blocks  # noqa: E402
from ui.metrics import accuracy_warning, cards  # noqa: E402


@pytest.fixture(scope="module")
def cnn(subject):
    return subject("zoo:digits-cnn")


@pytest.fixture(scope="module")
def resnet(subject):
    return subject("zoo:digits-resnet")


# --- layer views
# -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", available_methods())
def test_layer_view_mask_matches_the_pruned_model(cnn, method: str) -> None:
    view = layer_view(cnn, "features.7", method, 0.4)
    pruned = cnn.prune(PruningPlan(method, {"features.7": LayerRule(0.4)}))
    weight = dict(pruned.named_modules())["features.7"].weight.detach().numpy()
    if get_method(method).structured:
        # The kept output channels are exactly the rows the real pruner kept (in order).
        kept = np.flatnonzero(view.keep.reshape(view.keep.shape[0], -1).all(axis=1))
        np.testing.assert_array_equal(view.weights[kept], weight)
        assert len(view.removed) == int(0.4 * 128)
    else:
        np.testing.assert_array_equal(view.after, weight)
        if not get_method(method).updates_weights:
            np.testing.assert_array_equal(view.weights * view.keep, weight)
    assert 0 < view.pruned_share < 1


def test_l1_threshold_is_the_magnitude_cut(cnn) -> None:
    view = layer_view(cnn, "features.3", "l1-unstructured", 0.3)
    assert view.threshold is not None
    mags = np.abs(view.weights)
    assert (mags[~view.keep] <= view.threshold).all() and (mags[view.keep] > view.threshold).all()
    assert view.pruned_share == pytest.approx(0.3, abs=1e-4)
    assert layer_view(cnn, "features.3", "random-unstructured", 0.3).threshold is None


def test_structured_view_follows_group_importance(resnet) -> None:
    scores = channel_importance(resnet, "layer1.0.conv2", "l2-structured")
    assert scores.shape == (32,)
    # Members of one group share their channel scores.
    np.testing.assert_array_equal(scores, channel_importance(resnet, "stem.0", "l2-structured"))
    gone = removed_channels(scores, 0.25)
    assert len(gone) == 8 and scores[gone].max() <= np.delete(scores, gone).min()
    assert len(removed_channels(scores, 0.0)) == 0
    assert len(removed_channels(np.ones(4), 0.9)) == 3  # one channel always stays


def test_views_reject_what_cannot_be_done(cnn) -> None:
    with pytest.raises(PlanError, match="classifier"):
        layer_view(cnn, "classifier", "l2-structured", 0.5)
    with pytest.raises(PlanError, match="conv9"):
        layer_view(cnn, "conv9", "l1-unstructured", 0.5)
    with pytest.raises(PlanError, match="1.5"):
        layer_view(cnn, "features.3", "l1-unstructured", 1.5)


def test_weight_stats_against_numpy(cnn) -> None:
    stats = weight_stats(cnn.model).set_index("layer")
    w = dict(cnn.model.named_modules())["features.3"].weight.detach().double().numpy()
    row = stats.loc["features.3"]
    assert row["weights"] == w.size
    assert row["mean"] == pytest.approx(w.mean()) and row["std"] == pytest.approx(w.std(ddof=1))
    assert row["min"] == pytest.approx(w.min()) and row["max"] == pytest.approx(w.max())
    assert row["near_zero"] == pytest.approx((np.abs(w) < 0.01 * np.abs(w).max()).mean())


# --- figures
# ---------------------------------------------------------------------------------------


def test_weight_histogram_splits_kept_and_removed(cnn) -> None:
    view = layer_view(cnn, "features.3", "l1-unstructured", 0.5)
    fig = figures.weight_histogram(view, log_y=True)
    kept, gone = fig.data
    assert len(kept.x) == int(view.keep.sum()) and len(gone.x) == int((~view.keep).sum())
    assert fig.layout.yaxis.type == "log"
    assert [s.x0 for s in fig.layout.shapes if s.type == "rect"] == [-view.threshold]


def test_channel_bars_and_mask(cnn) -> None:
    view = layer_view(cnn, "features.7", "l1-structured", 0.25)
    bars = figures.channel_bars(view)
    assert len(bars.data[1].x) == 32 and set(bars.data[1].x) == set(view.removed)
    mask = figures.mask_heatmap(view, max_cols=100)
    z = np.asarray(mask.data[0].z)
    assert z.shape == (128, 100)
    assert (z[view.removed] == 0).all() and z.sum() == (128 - 32) * 100
    assert "first 100 of 576" in mask.layout.title.text
    with pytest.raises(ValueError, match="not structured"):
        figures.channel_bars(layer_view(cnn, "features.7", "2:4", 0.5))


def test_sensitivity_curves_one_line_per_layer_and_highlight() -> None:
    df = pd.DataFrame(
        {
            "layer": ["a", "a", "b", "b"],
            "ratio": [0.0, 0.5, 0.0, 0.5],
            "accuracy": [0.9, 0.8, 0.9, 0.5],
            "loss": [0.1, 0.2, 0.1, 0.9],
        }
    )
    fig = figures.sensitivity_curves(df, highlight="b")
    assert len(fig.data) == 4  # two layers x (accuracy, loss)
    acc_b = next(t for t in fig.data if t.name == "b" and t.xaxis == "x")
    np.testing.assert_allclose(acc_b.y, [90, 50])
    assert acc_b.line.width == 3
    assert next(t for t in fig.data if t.name == "a").line.color == figures.FADED


def test_pareto_front() -> None:
    cost = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    gain = np.array([0.5, 0.9, 0.95, 0.8, 0.4])
    np.testing.assert_array_equal(
        figures.pareto_front(cost, gain), [True, True, True, False, False]
    )
    history = pd.DataFrame(
        {
            "n": [0, 1, 2],
            "summary": ["dense", "x", "y"],
            "accuracy": [0.99, 0.9, 0.95],
            "latency_ms_median": [0.5, 0.3, 0.4],
            "onnx_gzip_bytes": [1000, 600, 900],
        }
    )
    fig = figures.pareto(history, current=2)
    assert len(fig.data) == 4  # per panel: the front line and the points
    assert fig.data[1].marker.color[2] == figures.GONE


# --- bundle
# ------------------------------------------------------------------------------------------


def test_zip_bundle_and_command(tmp_path: Path) -> None:
    files = {"plan": tmp_path / "plan.json", "report": tmp_path / "report.html"}
    files["plan"].write_text("{}")
    files["report"].write_text("<html></html>")
    with zipfile.ZipFile(io.BytesIO(zip_bundle(files))) as zf:
        assert sorted(zf.namelist()) == ["plan.json", "report.html"]
        assert zf.read("report.html") == b"<html></html>"
    assert (
        export_command("zoo:digits-cnn")
        == "pruning-explorer export --model zoo:digits-cnn --plan plan.json --out export"
    )
    assert (
        export_command("my model.py:build", "d.npz", "p.json", "out")
        == "pruning-explorer export --model 'my model.py:build' --data d.npz --plan p.json"
        " --out out"
    )


# --- the app's pure helpers
# ---------------------------------------------------------------------------


def test_draft_round_trips_plans(resnet) -> None:
    inv = resnet.inventory
    draft = Draft(method="l1-structured").with_ratio("layer2.1.conv2", 0.3, inv)
    assert {n for n, r in draft.ratios.items() if r == 0.3} == set(inv.groups["layer2.0.conv2"])
    plan = draft.to_plan(inv, resnet.model_spec)
    assert Draft.from_plan(plan, inv).to_plan(inv, resnet.model_spec).key() == plan.key()
    glob = Draft(scope="global").with_flag("fc", "skipped", True).with_global(0.4, inv)
    plan = glob.to_plan(inv)
    assert plan.scope == "global" and plan.ratio == 0.4 and "fc" not in plan.layers
    locked = (
        Draft().with_ratio("fc", 0.1, inv).with_flag("fc", "locked", True).with_global(0.7, inv)
    )
    assert locked.ratio("fc") == 0.1 and locked.ratio("stem.0") == 0.7
    # Structured methods cannot take the output layer; switching methods keeps groups together.
    assert "fc" not in Draft(method="l2-structured").eligible(inv)
    mixed = Draft().with_ratio("stem.0", 0.2, inv).with_method("l2-structured", inv)
    assert mixed.ratio("layer1.1.conv2") == 0.2
    with pytest.raises(PlanError, match="fc"):
        Draft.from_plan(PruningPlan("l2-structured", {"fc": LayerRule(0.5)}), inv)
    assert [len(b) for b in blocks(inv)][:3] == [3, 1, 1]  # stem's residual group comes first


def _result(
    speedups: tuple[float, ...] = (1.0, 0.98, 1.03, 1.01, 0.99),
    p90: tuple[float, ...] | None = None,
    **changes: float,
) -> Evaluation:
    """An Evaluation with made-up numbers: the pruned model's ``changes``, and per-round
    speedups."""
    base = {
        "accuracy": 0.99,
        "loss": 0.03,
        "params_total": 1000,
        "params_nonzero": 1000,
        "macs": 5000,
        "onnx_bytes": 4000,
        "onnx_gzip_bytes": 3000,
        "latency_ms_median": 1.0,
        "latency_ms_p90": 1.2,
        "latency_ms_spread": 0.01,
        "latency_threads": 1,
        "latency_runs": 50,
        "labels": True,
    }
    dense = Metrics(**base)
    pruned = Metrics(**{**base, **changes})
    rounds = [[[1.0] * 10 for _ in speedups], [[1.0 / s] * 10 for s in speedups]]
    if p90 is not None:  # the last run of each round is the slow tail
        rounds[0] = [r[:-1] + [3.0] for r in rounds[0]]
        rounds[1] = [r[:-1] + [3.0 / q] for r, q in zip(rounds[1], p90, strict=False)]
    return Evaluation(
        pruned,
        dense,
        "zoo:digits-cnn",
        None,
        PruningPlan("l1-unstructured", {}),
        speedup_of(rounds, 0, 1, threads=1),
    )


def test_metric_cards_deltas_and_noise() -> None:
    by_label = {c.label: c for c in cards(_result(accuracy=0.95, macs=2500))}
    assert by_label["Accuracy"].delta == "-4.00 pp"
    assert by_label["MACs"].delta == "-50.0 %" and by_label["MACs"].delta_color == "inverse"
    assert by_label["Parameters"].delta == 0
    quiet = by_label["Latency, median"]
    assert (
        quiet.description == "within noise" and quiet.delta_color == "off" and quiet.arrow == "off"
    )
    assert quiet.delta == "+0.0 % · 1.00x" and "rounds 0.98x to 1.03x" in quiet.help
    fast = {c.label: c for c in cards(_result((1.3, 1.25, 1.35, 1.3, 1.4), latency_ms_median=0.77))}
    assert (
        fast["Latency, median"].description == "vs dense"
        and fast["Latency, median"].delta == "-23.1 % · 1.30x"
    )
    assert fast["Latency, median"].delta_color == "inverse"  # down is good
    slow = {c.label: c for c in cards(_result((0.8, 0.78, 0.82, 0.79, 0.81)))}["Latency, median"]
    assert slow.delta.startswith("+25.0 %") and slow.description == "vs dense"
    unlabelled = {c.label for c in cards(_result(labels=False))}
    assert {"Agreement", "KL from dense"} <= unlabelled


def test_p90_card_uses_the_same_window_and_rule() -> None:
    # Medians clearly faster, p90s all over the place: the p90 card says within noise on its own.
    r = _result((1.3, 1.25, 1.35, 1.3, 1.4), p90=(0.5, 2.0, 1.1, 0.9, 1.6))
    by_label = {c.label: c for c in cards(r)}
    assert by_label["Latency, median"].description == "vs dense"
    p90 = by_label["Latency, p90"]
    assert r.speedup is not None and r.speedup.p90.within_noise and not r.speedup.within_noise
    assert (
        p90.description == "within noise"
        and "p90s" in p90.help
        and f"{r.speedup.p90.value:.2f}x" in p90.delta
    )
    assert f"Dense in this window: {r.dense.latency_ms_p90:.3f} ms" in p90.help


def test_accuracy_warning_near_chance_and_far_below_dense() -> None:
    assert "near chance (10.0 % for 10 classes)" in accuracy_warning(0.0956, 0.99, 10)
    assert "Recover page" in accuracy_warning(0.0956, 0.99, 10)
    far = accuracy_warning(0.236, 0.99, 10)
    assert "75.4 points below dense" in far and "looser target" in far
    assert accuracy_warning(0.95, 0.99, 10) == ""
