"""Live evaluation: the template writes the exporter's own file, byte for byte; the staged
evaluation
ends with ``Subject.evaluate``'s numbers; refinements grow, their interval closes; runs cancel."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from explorer.evaluate import Evaluation
from explorer.live import LiveEvaluator, gzip_length, predicted_accuracy, wilson
from explorer.onnx_template import OnnxTemplate, TemplateMiss, write_onnx
from explorer.plan import LayerRule, PruningPlan
from explorer.runtime import export_onnx
from explorer.subject import Subject

MODELS = Path(__file__).resolve().parents[1] / "models"
TIMED = ("latency_ms_median", "latency_ms_p90", "latency_ms_spread")


def _realsize():
    if "_realsize_models" not in sys.modules:
        spec = importlib.util.spec_from_file_location("_realsize_models", MODELS / "realsize.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["_realsize_models"] = module
    return sys.modules["_realsize_models"]


@pytest.fixture(scope="module")
def narrow(subject: Callable[..., Subject], tmp_path_factory: pytest.TempPathFactory) -> Subject:
    """The narrow ResNet-18 at 224 px on 24 unlabelled images (agreement with the dense model)."""
    data = _realsize().write_data(tmp_path_factory.mktemp("live") / "images.npz", 24)
    return subject(f"{MODELS / 'realsize.py'}:narrow_resnet", data)


def _exported(model, subj: Subject, tmp_path: Path) -> bytes:
    return export_onnx(model, subj.example_input, tmp_path / "m.onnx").read_bytes()


def _without_timing(result: Evaluation | dict) -> dict:
    """An evaluation's JSON object without what is timed (latencies, the interleaved speedup) and
    without the dense side (whose latency is that of the plan's own timing window)."""
    d = result.to_dict() if isinstance(result, Evaluation) else result
    return {k: v for k, v in d.items() if k not in TIMED and k not in ("dense", "speedup")}


def test_template_writes_the_exporters_file(
    zoo_name: str,
    method: str,
    subject: Callable[..., Subject],
    full_plan: Callable[..., PruningPlan],
    tmp_path: Path,
) -> None:
    subj = subject(f"zoo:{zoo_name}")
    template = OnnxTemplate.of(subj.model, subj.example_input)
    pruned = subj.prune(full_plan(subj, method, 0.4))
    if set(pruned.state_dict()) != set(
        subj.model.state_dict()
    ):  # FLAP gives bias-free readers a bias
        with pytest.raises(TemplateMiss, match="other tensors"):
            template.render(pruned)
        assert write_onnx(subj, pruned, tmp_path / "w.onnx") != "template"  # exported for real
        assert (tmp_path / "w.onnx").read_bytes() == _exported(pruned, subj, tmp_path)
    else:
        assert template.render(pruned) == _exported(pruned, subj, tmp_path)
    assert template.render(subj.model) == _exported(subj.model, subj, tmp_path)  # nothing changed


@pytest.mark.parametrize("method", ["l1-unstructured", "l2-structured", "mixed"])
def test_template_on_unseen_models(
    unseen_name: str,
    method: str,
    unseen_subject: Callable[..., Subject],
    full_plan: Callable[..., PruningPlan],
    mixed_plan: Callable[..., PruningPlan],
    tmp_path: Path,
) -> None:
    """Where the template vouches for a pruned model, its file is the exporter's; where it cannot,
    it says so (and the evaluator exports for real)."""
    subj = unseen_subject(unseen_name)
    if method != "l1-unstructured" and subj.inventory.structured_error:
        pytest.skip("structured methods are off for this model")
    try:
        template = OnnxTemplate.of(subj.model, subj.example_input)
        plan = mixed_plan(subj) if method == "mixed" else full_plan(subj, method, 0.4)
        pruned = subj.prune(plan)
        rendered = template.render(pruned)
    except TemplateMiss:
        return
    assert rendered == _exported(pruned, subj, tmp_path)


def test_template_refuses_a_tensor_no_recipe_reads(subject: Callable[..., Subject]) -> None:
    subj = subject("zoo:digits-cnn")
    template = OnnxTemplate.of(subj.model, subj.example_input)
    pruned = subj.prune(PruningPlan("l1-unstructured", {"features.0": LayerRule(0.5)}))
    template.covered.discard(
        "features.0.weight"
    )  # as if the exporter had transformed it unrecognisably
    with pytest.raises(TemplateMiss, match="features.0.weight"):
        template.render(pruned)


def _plans(subj: Subject) -> list[PruningPlan]:
    grouped = [layer.name for layer in subj.inventory.layers if layer.group is not None]
    names = subj.layer_names
    return [
        PruningPlan("l1-unstructured", {n: LayerRule(0.6) for n in names}),
        PruningPlan("l2-structured", {n: LayerRule(0.5) for n in grouped[:3]}),
        PruningPlan("2:4", {n: LayerRule(0.5) for n in names[1:3]}),
        PruningPlan(
            "l1-unstructured", {n: LayerRule(0.0) for n in names}, scope="global", ratio=0.7
        ),
        PruningPlan(
            "l2-structured",
            {g: LayerRule(0.4) for g in grouped[:2]}
            | {n: LayerRule(0.3, "l1-unstructured") for n in names if n not in grouped},
        ),
    ]


@pytest.mark.parametrize("where", ["zoo:digits-resnet", "narrow", "unlabelled tabular"])
def test_final_numbers_are_subject_evaluates(
    where: str,
    subject: Callable[..., Subject],
    narrow: Subject,
    unseen_subject: Callable[..., Subject],
) -> None:
    subj = {
        "narrow": narrow,
        "unlabelled tabular": unseen_subject("tabular_mlp", labels=False),
    }.get(where) or subject(where)
    evaluator = LiveEvaluator(subj)
    plans = (
        _plans(subj)
        if subj.inventory.groups
        else [_plans(subj)[0], _plans(subj)[2], _plans(subj)[3]]
    )
    for plan in plans:
        live = evaluator.evaluate(plan)
        assert _without_timing(live) == _without_timing(subj.evaluate(plan)), plan.to_json()
        window = (
            "latency_runs",
        )  # the dense side is timed in the plan's own window, with its runs
        assert {
            k: v for k, v in _without_timing(live.dense.to_dict()).items() if k not in window
        } == {
            k: v
            for k, v in _without_timing(subj.evaluate(None).dense.to_dict()).items()
            if k not in window
        }
        assert live.speedup is not None and live.speedup.ratio > 0
        for key in TIMED:
            assert live.to_dict()[key] >= 0


def test_refinements_grow_and_their_interval_closes(narrow: Subject) -> None:
    evaluator = LiveEvaluator(narrow)
    plan = PruningPlan("l1-unstructured", {n: LayerRule(0.5) for n in narrow.layer_names[:4]})
    evaluator.evaluate(plan)  # learn the time per image, so that the chunks are sized as in the app
    refs = list(evaluator.refinements(plan))
    scoring = [r for r in refs if r.stage == "scoring"]
    assert refs[-1].final and all(not r.final for r in refs[:-1])
    assert scoring and scoring[0].scored >= 4 and scoring[-1].scored == narrow.data.test.x.shape[0]
    assert [r.scored for r in scoring] == sorted({r.scored for r in scoring})
    assert all(r.static == scoring[0].static for r in scoring)
    assert scoring[0].static["params_nonzero"] == refs[-1].result.pruned.params_nonzero
    widths = [r.interval[1] - r.interval[0] for r in scoring]
    assert widths[-1] == 0 and all(a >= 0 for a in widths)
    assert refs[-1].accuracy == scoring[-1].accuracy == refs[-1].result.pruned.accuracy
    assert refs[-1].written_by == "template"


def test_a_run_is_cancelled_between_chunks(narrow: Subject) -> None:
    evaluator = LiveEvaluator(narrow)
    run = evaluator.start(PruningPlan("l1-unstructured", {narrow.layer_names[0]: LayerRule(0.3)}))
    run.cancel()
    run.join(timeout=120)
    assert run.done and run.cancelled and run.error is None
    assert run.latest() is None or not run.latest().final


def test_a_run_reports_a_users_mistake(narrow: Subject) -> None:
    from explorer.errors import PlanError

    run = LiveEvaluator(narrow).start(PruningPlan("l1-structured", {"fc": LayerRule(0.5)}))
    run.join(timeout=120)
    assert isinstance(run.error, PlanError) and "fc" in str(run.error)


def test_final_is_reported_to_whoever_asked(narrow: Subject) -> None:
    seen = []
    run = LiveEvaluator(narrow).start(
        PruningPlan("2:4", {"layer1.0.conv1": LayerRule(0.5)}), on_final=seen.append
    )
    assert run.wait(120) is not None
    run.join(timeout=10)
    assert (
        len(seen) == 1
        and seen[0].final
        and seen[0].result.pruned.params_nonzero < seen[0].result.pruned.params_total
    )


def test_a_graph_run_in_onnx_runtime_is_exported_as_the_users_own(
    subject: Callable[..., Subject], tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location("_ort_graph_models", MODELS / "ort_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_path, data_path = module.write(tmp_path)
    subj = subject(str(model_path), data_path)
    evaluator = LiveEvaluator(subj)
    assert evaluator.template is None and "own ONNX graph" in evaluator.template_miss
    plan = PruningPlan("l1-unstructured", {n: LayerRule(0.5) for n in subj.layer_names})
    assert _without_timing(evaluator.evaluate(plan)) == _without_timing(subj.evaluate(plan))


def test_prediction_from_cached_curves(
    subject: Callable[..., Subject], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from explorer import sensitivity as sens

    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))
    subj = subject("zoo:digits-cnn")
    plan = PruningPlan(
        "l1-unstructured", {"features.7": LayerRule(0.35), "classifier": LayerRule(0.5)}
    )
    assert predicted_accuracy(subj, plan) is None  # nothing scanned yet
    curves = sens.scan(
        subj, "l1-unstructured", [0.3, 0.4, 0.5], layers=["features.7", "classifier"]
    )
    drops = []
    for layer, ratio in (("features.7", 0.35), ("classifier", 0.5)):
        c = curves[curves.layer == layer]
        drops.append(c.accuracy.iloc[0] - np.interp(ratio, c.ratio, c.accuracy))
    assert predicted_accuracy(subj, plan) == pytest.approx(
        curves.accuracy.iloc[0] - sum(max(d, 0) for d in drops)
    )
    assert (
        predicted_accuracy(subj, PruningPlan("l1-unstructured", {"features.0": LayerRule(0.3)}))
        is None
    )
    assert (
        predicted_accuracy(subj, PruningPlan("l1-unstructured", {"classifier": LayerRule(0.8)}))
        is None
    )


def test_wilson_interval() -> None:
    lo, hi = wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)  # the textbook 95 % Wilson interval
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == pytest.approx(1)
    assert wilson(30, 100, population=100) == (0.3, 0.3)  # everything scored: no uncertainty left
    assert (
        wilson(30, 100, population=200)[1] - wilson(30, 100, population=200)[0]
        < wilson(30, 100)[1] - wilson(30, 100)[0]
    )


@pytest.mark.parametrize("size", [0, 1, 3_000_001])
def test_streamed_gzip_size_is_gzips(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 4, size, dtype=np.uint8).tobytes()
    assert gzip_length(data, block=1 << 20) == len(gzip.compress(data, compresslevel=6))
    assert gzip_length(data, lambda: True) == (
        -1 if size else len(gzip.compress(b"", compresslevel=6))
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice is Linux's")
def test_the_compression_runs_in_a_thread_of_its_own_at_the_lowest_priority(
    narrow: Subject, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading

    import explorer.live as live

    seen: list[tuple[int, int]] = []
    lower = live._idle_priority

    def recorded() -> None:
        lower()
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))

    monkeypatch.setattr(live, "_idle_priority", recorded)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    plan = PruningPlan("l1-unstructured", {narrow.layer_names[0]: LayerRule(0.5)})
    result = LiveEvaluator(narrow).evaluate(plan)
    assert [nice for _, nice in seen] == [19]
    assert seen[0][0] != threading.get_native_id()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    assert _without_timing(result) == _without_timing(narrow.evaluate(plan))  # gzip size included
