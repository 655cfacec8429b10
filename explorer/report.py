"""The export bundle: plan.json, model.onnx, the PyTorch artifacts, metrics.json and report.html.

Every number in metrics.json and report.html is measured on the exported model.onnx. A plan with a
``"schedule"`` is replayed (``explorer.schedules.run_schedule``) before the export, and every step
of it is kept under ``"schedule"`` in metrics.json.
"""

from __future__ import annotations

import html
import importlib.metadata
import json
import math
import platform
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explorer.capabilities import ort_ops
from explorer.errors import ExportError
from explorer.evaluate import Evaluation
from explorer.inputs import Inputs, export_args
from explorer.inspect import PRUNABLE_TYPES, count_macs
from explorer.methods import get_method
from explorer.metricspec import SPECS, spec
from explorer.plan import PruningPlan
from explorer.progress import Progress, no_progress
from explorer.rounding import Slowdown, explain_slowdown
from explorer.subject import Subject

__all__ = ["export_bundle", "layer_rows", "render_html", "versions"]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("pruning-explorer", "torch", "torch-pruning", "onnx", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def layer_rows(subject: Subject, pruned: nn.Module, plan: PruningPlan) -> list[dict[str, Any]]:
    """One row per prunable layer: dense vs pruned shape, nonzeros, sparsity and MACs."""
    modules = dict(pruned.named_modules())
    macs = count_macs(pruned, subject.example_input)
    rows = []
    for info in subject.inventory.layers:
        module = modules[info.name]
        assert isinstance(module, PRUNABLE_TYPES)
        w = module.weight
        nonzero = int(torch.count_nonzero(w))
        rule = plan.layers.get(info.name)
        rows.append(
            {
                "layer": info.name,
                "type": info.type,
                "group": info.group or "",
                "method": plan.method_of(info.name) if rule is not None else "",
                "ratio": (
                    (plan.ratio if plan.scope == "global" else rule.ratio)
                    if rule is not None
                    else 0.0
                ),
                "dense_shape": list(info.shape),
                "shape": list(w.shape),
                "weights": w.numel(),
                "nonzero": nonzero,
                "sparsity": (
                    1 - nonzero / math.prod(info.shape)
                ),  # against the dense layer's weights
                "dense_macs": info.macs,
                "macs": macs.get(info.name, 0),
            }
        )
    return rows


def _metric_rows(evaluation: Evaluation) -> str:
    """The metrics table: every metric of ``explorer.metricspec``, latencies with the interleaved
    ratio."""
    e = html.escape
    sp = evaluation.speedup
    trs = []
    for s in SPECS:
        d, p = getattr(evaluation.dense, s.key), getattr(evaluation.pruned, s.key)
        change = s.delta(p, d)
        if s.unit == "ms":
            r = None if sp is None else sp.p90 if s.key == "latency_ms_p90" else sp.median
            change = (
                ""
                if r is None
                else (
                    f"{r.value:.2f}x speedup (rounds {r.low:.2f}-{r.high:.2f}x"
                    + (", within noise)" if r.within_noise else ")")
                )
            )
        trs.append(
            f"<tr><td>{e(s.name(evaluation.labels))}</td><td>{e(s.format(d))}</td><td>{e(s.format(p))}</td>"
            f"<td>{e(str(change))}</td></tr>"
        )
    return "".join(trs)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _speedup_html(evaluation: Evaluation, slowdown: Slowdown | None) -> str:
    e = html.escape
    sp = evaluation.speedup
    mac = f"a <b>MAC ratio of {evaluation.mac_ratio:.2f}x</b>"
    if sp is None:
        return f"<p>The dense model alone; {mac}.</p>"
    verdict = (
        "within noise: the rounds' range covers 1.0x"
        if sp.within_noise
        else "<b>slower than dense</b>"
        if sp.slower
        else "faster in every round"
    )
    out = (
        f"<p><b>Measured ORT speedup {sp.ratio:.2f}x</b> (rounds"
        f" {sp.median.low:.2f}-{sp.median.high:.2f}x; {verdict}) next to {mac}."
        f" {e(_capital(sp.method_text()))}.</p>"
    )
    if slowdown is not None:
        head, cause, offer = slowdown.lines()
        out += (
            f'<p class="warn"><b>{e(_capital(head))}.</b> {e(_capital(cause))}.'
            f" {e(_capital(offer))}.</p>"
        )
        if slowdown.rounded_plan is not None:
            out += f"<p>The rounded plan:</p><pre>{e(slowdown.rounded_plan.to_json())}</pre>"
    return out


def render_html(
    evaluation: Evaluation,
    rows: list[dict[str, Any]],
    plan: PruningPlan,
    extra: dict[str, Any] | None = None,
    slowdown: Slowdown | None = None,
) -> str:
    """A self-contained HTML report (no scripts, no external files).

    ``extra``: what else metrics.json holds (``schedule``, ``recovery``, ``int8``, ``versions``);
    ``slowdown``:
    why the plan measured slower than dense, with the rounded plan (``explorer.rounding``).
    """
    extra = extra or {}
    e = html.escape
    methods = sorted({plan.method_of(n) for n in plan.layers} or {plan.method})
    notes = "".join(f"<li><b>{e(m)}</b>: {e(get_method(m).runtime_note)}</li>" for m in methods)
    layer_trs = "".join(
        "<tr>"
        + "".join(
            f"<td>{e(str(v))}</td>"
            for v in (
                r["layer"],
                r["type"],
                r["group"],
                r["method"],
                f"{r['ratio']:.2f}",
                "x".join(map(str, r["dense_shape"])),
                "x".join(map(str, r["shape"])),
                f"{r['nonzero']:,}",
                f"{100 * r['sparsity']:.1f}%",
                f"{r['dense_macs']:,}",
                f"{r['macs']:,}",
            )
        )
        + "</tr>"
        for r in rows
    )
    rounding = (
        f", kept channels rounded up to multiples of {plan.round_to}" if plan.round_to else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Pruning report: {e(evaluation.model)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
.small {{ color: #666; font-size: .9rem; }}
.warn {{ background: #fff4e5; border-left: 4px solid #f0a020; padding: .5rem .8rem; }}
</style></head><body>
<h1>Pruning report</h1>
<p>Model <code>{e(str(evaluation.model))}</code>, data <code>{e(str(evaluation.data))}</code>,
method <code>{e(plan.method)}</code>, scope <code>{e(plan.scope)}</code>{e(rounding)}.</p>
{_speedup_html(evaluation, slowdown)}
<ul>{notes}</ul>
<h2>Metrics (measured on model.onnx in ONNX Runtime)</h2>
<table><tr><th>Metric</th><th>Dense</th><th>Pruned</th><th>Change</th></tr>
{_metric_rows(evaluation)}</table>
{_schedule_html(extra)}
{_recovery_html(extra, evaluation.labels)}
<h2>Layers</h2>
<table><tr><th>Layer</th><th>Type</th><th>Group</th><th>Method</th><th>Ratio</th>
<th>Dense shape</th><th>Shape</th><th>Nonzero</th><th>Sparsity</th><th>Dense MACs</th>
<th>MACs</th></tr>{layer_trs}</table>
<h2>Plan</h2><pre>{e(plan.to_json())}</pre>
<p class="small">{e(json.dumps(extra.get("versions", {})))}</p>
</body></html>
"""


def _schedule_html(metrics: dict[str, Any]) -> str:
    """The schedule's steps, when the bundle replayed one ('' otherwise)."""
    sched = metrics.get("schedule")
    if not sched:
        return ""
    e = html.escape

    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.2f}%"

    cells = "".join(
        "<tr>"
        + "".join(
            f"<td>{e(str(v))}</td>"
            for v in (
                s["phase"],
                s["round"],
                "" if s["epoch"] is None else s["epoch"],
                "" if s["step"] is None else s["step"],
                pct(s["target"]),
                pct(s["sparsity"]),
                f"{s['nonzero']:,}",
                pct(s["accuracy"]),
                pct(s["val_accuracy"]),
            )
        )
        + "</tr>"
        for s in sched["steps"]
    )
    settings = ", ".join(f"{k}={v}" for k, v in sched["settings"].items())
    notes = "".join(f'<p class="small">{e(n)}.</p>' for n in sched.get("notes", []))
    stopped = f" <b>{e(sched['stop_reason'])}</b>." if sched.get("stop_reason") else ""
    return (
        f"<h2>Schedule: {e(sched['name'])}</h2><p>{e(settings)}; {sched['seconds']:.1f} s; final"
        f" sparsity of the plan's layers {pct(sched['sparsity'])} (target"
        f" {pct(sched['target_sparsity'])}).{stopped} Accuracy per step in PyTorch on the test"
        " split; the metrics above are the exported"
        f" model's.</p>{notes}<table><tr><th>Phase</th><th>Round</th><th>Epoch</th><th>Step</th>"
        "<th>Target</th><th>Sparsity</th><th>Nonzero</th><th>Test accuracy</th>"
        f"<th>Val accuracy</th></tr>{cells}</table>"
    )


def _recovery_html(metrics: dict[str, Any], labels: bool = True) -> str:
    """Fine-tuning and int8 sections, when the bundle has them ('' otherwise)."""
    e = html.escape
    parts = []
    rec = metrics.get("recovery")
    if rec and "history" not in rec:  # batch-norm recalibration only
        parts.append(
            "<h2>Recovery</h2><p>Batch-norm statistics re-estimated on the"
            f" {e(rec.get('calibration_split', 'training'))} split; weights unchanged. The metrics"
            " above are the recalibrated model's.</p>"
        )
    elif rec:
        cfg = rec.get("settings", {})
        first, best = rec["history"][0], rec["history"][rec["best_epoch"]]
        val = (
            ""
            if best.get("val_accuracy") is None or first.get("val_accuracy") is None
            else (
                f" Validation accuracy {100 * first['val_accuracy']:.2f}% before,"
                f" {100 * best['val_accuracy']:.2f}% after."
            )
        )
        parts.append(
            "<h2>Fine-tuning</h2><p>"
            + ("Batch-norm statistics re-estimated first; " if rec.get("recalibrated") else "")
            + f"{cfg.get('epochs')} epoch(s) asked, epoch {rec['best_epoch']} kept "
            f"({e(rec['stopped'])}, {rec['seconds']:.1f} s), lr {cfg.get('lr')}"
            + (
                f", distilled from the dense model (T={cfg.get('temperature')},"
                f" alpha={cfg.get('alpha')})"
                if rec.get("distilled")
                else ""
            )
            + f"; pruned weights stay zero.{val} The metrics above are the fine-tuned model's.</p>"
        )
    q = metrics.get("int8")
    if q:
        fp = q["fp32"]
        cells = "".join(
            f"<tr><td>{e(label)}</td><td>{e(fmt(fp[k]))}</td><td>{e(fmt(q[k]))}</td></tr>"
            for k, label, fmt in (
                (k, spec(k).name(labels), spec(k).format)
                for k in ("accuracy", "onnx_bytes", "onnx_gzip_bytes", "latency_ms_median")
            )
        )
        parts.append(
            f"<h2>int8 (model.int8.onnx, {e(q['mode'])})</h2>"
            f"<table><tr><th>Metric</th><th>fp32</th><th>int8</th></tr>{cells}</table>"
            f'<p class="small">{e(q["cpu"]["note"])}. Recipe {e(q["recipe"]["name"])}: '
            f"{e(q['recipe']['summary'])}.</p>"
            + "".join(f'<p class="small">Note: {e(n)}.</p>' for n in q.get("notes", []))
        )
    return "\n".join(parts)


def _save_pt2(model: nn.Module, example: torch.Tensor | Inputs, path: Path) -> str:
    """Save a torch.export program; returns '' or the reason it could not be exported."""
    ops = ort_ops(model)
    if ops:
        return (
            f"the graph runs {list(ops)} in ONNX Runtime, which torch.export cannot capture;"
            " model.onnx is your own graph with the pruned weights, model_state.pt the pruned"
            " weights by layer"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args, kwargs, _ = export_args(model, example)
            program = torch.export.export(model, args, kwargs=kwargs or None)
            torch.export.save(program, str(path))
        return ""
    except Exception as e:
        path.unlink(missing_ok=True)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def export_bundle(
    subject: Subject,
    plan: PruningPlan,
    out_dir: str | Path,
    on_progress: Progress = no_progress,
    model: nn.Module | None = None,
    quantize: str | None = None,
    recovery: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
    int8_mode: str = "auto",
    model_name: str | None = None,
    data_name: str | None = None,
) -> dict[str, Path]:
    """Prune, measure and write the export bundle into ``out_dir`` (created if missing).

    Args:
        model: an already pruned (e.g. fine-tuned) model of this plan; pruned afresh when None,
            through the plan's schedule when it has one (``run_schedule``: its steps go to
            metrics.json under ``"schedule"``, its last training phase under ``"recovery"``).
        quantize: ``"int8"`` also writes ``model.int8.onnx`` (``explorer.quantize``) and its
            numbers, measured next to model.onnx, under ``"int8"`` in metrics.json.
        int8_mode: ``auto`` (dynamic for models without convolutions, static QDQ calibrated on
            the data otherwise), ``dynamic`` or ``static``.
        recovery: how ``model`` was recovered (``explorer.loop.recovery_record``), kept under
            ``"recovery"`` in metrics.json.
        schedule: with ``model``: the ``ScheduleResult.to_dict()`` that produced it.
        model_name, data_name: how plan.json, metrics.json and report.html name the model and the
            data (an uploaded file by its own name rather than its path on this server); the
            specs by default.

    Returns:
        The written files by role: plan, onnx, int8 (if asked), pt2 (if torch.export could
        export the model), state_dict, metrics, report.

    Raises:
        ExportError: ``out_dir`` is a file, or cannot be written; an unknown ``quantize``;
            quantization failed.
    """
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantization {quantize!r}; choose from ['int8']")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    model_label, data_label = model_name or subject.model_spec, data_name or subject.data_spec
    plan = replace(plan, model=model_name or plan.model or subject.model_spec)
    if model is None and plan.schedule is not None:
        from explorer.schedules import run_schedule

        def scheduled(fraction: float, message: str) -> None:
            on_progress(0.6 * fraction, f"{plan.schedule.name}: {message}")  # type: ignore[union-attr]

        result = run_schedule(subject, plan, on_progress=scheduled)
        model, schedule = result.model, result.to_dict()
        recovery = recovery if recovery is not None else result.recovery
        on_progress(0.6, "exporting")
        base = 0.6
    else:
        on_progress(0.05, "pruning")
        base = 0.0

    def stage(fraction: float, message: str) -> None:
        on_progress(base + (1 - base) * fraction, message)

    pruned = model if model is not None else subject.prune(plan)
    files = {
        "plan": out / "plan.json",
        "onnx": out / "model.onnx",
        "pt2": out / "model.pt2",
        "state_dict": out / "model_state.pt",
        "metrics": out / "metrics.json",
        "report": out / "report.html",
    }
    try:
        plan.save(files["plan"])
        stage(0.2, "exporting to ONNX and measuring in ONNX Runtime")
        evaluation = replace(
            subject.evaluate(plan, onnx_path=files["onnx"], model=pruned),
            model=model_label,
            data=data_label,
        )  # named as the user knows them
        slowdown = None
        if evaluation.speedup is not None and evaluation.speedup.slower:
            stage(0.45, "slower than dense: timing the widths of each group")
            slowdown = explain_slowdown(subject, evaluation)
        int8 = None
        if quantize == "int8":
            from explorer.quantize import compare_int8

            stage(0.5, "int8: quantizing model.onnx and measuring it")
            files["int8"] = out / "model.int8.onnx"
            int8 = compare_int8(
                files["onnx"],
                subject.data,
                files["int8"],
                mode=int8_mode,
                reference=subject.dense()[1],
                threads=subject.threads,
                runs=subject.runs,
            ).to_dict()
        stage(0.6, "saving the PyTorch artifacts")
        pt2_error = _save_pt2(pruned, subject.example_input, files["pt2"])
        torch.save(pruned.state_dict(), files["state_dict"])
        metrics: dict[str, Any] = evaluation.to_dict()  # with the inputs the model was fed
        metrics.update(plan=plan.to_dict(), versions=versions())
        if slowdown is not None:
            metrics["slowdown"] = slowdown.to_dict()
        if pt2_error:
            metrics["pt2_error"] = pt2_error
        if schedule is not None:
            metrics["schedule"] = schedule
        if recovery is not None:
            metrics["recovery"] = recovery
        if int8 is not None:
            metrics["int8"] = int8
        stage(0.8, "writing the report")
        rows = layer_rows(subject, pruned, plan)
        metrics["layers"] = rows
        files["metrics"].write_text(json.dumps(metrics, indent=2) + "\n")
        extra = {
            k: metrics[k] for k in ("schedule", "recovery", "int8", "versions") if k in metrics
        }
        files["report"].write_text(render_html(evaluation, rows, plan, extra, slowdown))
    except OSError as e:
        raise ExportError(f"--out {out}: cannot write ({e.strerror})") from None
    on_progress(1.0, "done")
    if pt2_error:
        del files["pt2"]
    return files
