"""The Export page's choices: the plan alone or the plan after the Recover page's run (each labelled
with its measured numbers), the converted plans for NNI and Torch-Pruning, and what the command
needs."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import streamlit as st

from explorer import convert
from explorer.errors import ExplorerError
from explorer.plan import PruningPlan
from explorer.schedule_spec import ScheduleSpec
from explorer.subject import Subject
from ui import cache, recover, uploads
from ui.metrics import fmt_bytes
from ui.state import Keys

__all__ = ["Choice", "choices", "command_caption", "converters", "measured"]


@dataclass(frozen=True)
class Choice:
    label: str
    recovered: dict[str, Any] | None  # a ui.recover run, or None: the plan alone
    settings: dict[str, Any] | None  # the recovery stages for the command line


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _stages(run: dict[str, Any]) -> str:
    s, rec = run["settings"], run.get("recovery") or {}
    parts = []
    if s.get("schedule"):
        parts.append(f"schedule {ScheduleSpec.from_dict(s['schedule']).describe()}")
    elif rec.get("recalibrated"):
        parts.append("BN recalibrated")
    if rec.get("history"):
        parts.append(
            f"fine-tuned {len(rec['history']) - 1} epoch(s)"
            + (", distilled" if s.get("distill") else "")
        )
    if s.get("int8"):
        parts.append(f"int8 {run['int8']['mode'] if run.get('int8') else s['int8']}")
    return ", ".join(parts) or "no stage"


def choices(subject: Subject, plan: PruningPlan) -> dict[str, Choice]:
    """ "plan" (always) and "recovered" (after a Recover page run of this plan), labelled with the
    numbers measured for them."""
    what = "accuracy" if subject.data.has_labels else "agreement"
    prune_plan = replace(plan, model=subject.model_spec)  # the Prune page's evaluation of this plan
    try:
        alone = cache.evaluation(
            subject.model_spec, st.session_state[Keys.DATA], prune_plan.key(), prune_plan
        )
        numbers = f"{what} {_pct(alone.pruned.accuracy)}, ONNX {fmt_bytes(alone.pruned.onnx_bytes)}"
    except ExplorerError as e:
        numbers = str(e)
    out = {"plan": Choice(f"The plan alone (pruned, not recovered): {numbers}", None, None)}
    run = recover.latest(plan)
    if run is not None and (run.get("weights") or run["settings"].get("int8")):
        rows = run["rows"]
        fp32 = next(r for r in reversed(rows) if not r["stage"].startswith("int8"))
        text = f"{what} {_pct(fp32['accuracy'])}"
        q = next((r for r in rows if r["stage"].startswith("int8")), None)
        if q is not None:
            text += f", int8 {_pct(q['accuracy'])} ({fmt_bytes(q['onnx_bytes'])})"
        settings = {
            **run["settings"],
            "recalibrate": bool((run.get("recovery") or {}).get("recalibrated")),
        }
        out["recovered"] = Choice(
            f"The plan after the Recover page's run ({_stages(run)}): {text}", run, settings
        )
    if st.session_state.get(Keys.EXPORT_WHAT) not in out:  # a run finished since: offer it first
        st.session_state[Keys.EXPORT_WHAT] = "recovered" if "recovered" in out else "plan"
    return out


def measured(files: dict[str, bytes]) -> str:
    """One line of what the bundle's metrics.json says (so the page shows what is in the files)."""
    m = json.loads(files["metrics.json"])
    what = "accuracy" if m.get("labels", True) else "agreement"
    text = (
        f"Measured on the exported model.onnx: {what} {_pct(m['accuracy'])} "
        f"(dense {_pct(m['dense']['accuracy'])}),"
        f" {fmt_bytes(m['onnx_bytes'])}, median latency {m['latency_ms_median']:.3f} ms"
    )
    rec = m.get("recovery")
    if rec:
        text += (
            "; recovered: "
            + ("BN recalibrated" if rec.get("recalibrated") else "")
            + (
                f"{', ' if rec.get('recalibrated') else ''}fine-tuned, "
                f"epoch {rec['best_epoch']} kept"
                if rec.get("history")
                else ""
            )
        )
    if m.get("int8"):
        q = m["int8"]
        text += (
            f"; model.int8.onnx ({q['mode']}): {what} {_pct(q['accuracy'])}, "
            f"{fmt_bytes(q['onnx_bytes'])}"
        )
    return text + "."


def converters(plan: PruningPlan, subject: Subject) -> None:
    """Download buttons for NNI's config_list and Torch-Pruning's pruning_ratio_dict, or why not."""
    cols = st.columns(2)
    try:
        config = convert.to_nni(plan)
        cols[0].download_button(
            "config_list.json (NNI)",
            json.dumps(config, indent=2) + "\n",
            file_name="config_list.json",
            mime="application/json",
            icon=":material/download:",
            key="export.nni",
        )
        cols[0].caption(
            f"NNI v3's config_list: {len(config)} entr{'y' if len(config) == 1 else 'ies'} of "
            "op_names "
            f"and sparse_ratio. Pruner: {convert.nni_pruner(plan.method)}. Read one back with "
            "`pruning-explorer convert --from nni`."
        )
    except ExplorerError as e:
        cols[0].info(f"No NNI config_list: {e}.")
    try:
        tp_cfg = convert.to_torch_pruning(plan, subject.inventory)
        cols[1].download_button(
            "torch_pruning.json",
            json.dumps(tp_cfg, indent=2) + "\n",
            file_name="torch_pruning.json",
            mime="application/json",
            icon=":material/download:",
            key="export.torch_pruning",
        )
        cols[1].caption(tp_cfg["note"])
    except ExplorerError as e:
        cols[1].info(f"No Torch-Pruning file: {e}.")


def command_caption(
    model: str,
    data: str | None,
    names: tuple[str | None, str | None],
    settings: dict[str, Any] | None,
) -> str:
    """What to run the command with: the uploaded files by their names, next to plan.json."""
    files = []
    for spec, name in zip((model, data), names, strict=False):
        if spec and uploads.uploaded_name(spec):
            files.append(
                f"`{name}/` (the folder of class subfolders you zipped)"
                if not name.lower().endswith((".onnx", ".pt2", ".npz", ".csv"))
                else f"`{name}`"
            )
    where = "where you saved plan.json" + (
        f", with {' and '.join(files)} (the file{'s' if len(files) > 1 else ''} "
        "you uploaded) next to it"
        if files
        else ""
    )
    stages = " It runs the same recovery stages before the export." if settings else ""
    return (
        f"Run it {where}: it writes the same files into ./export, with the numbers measured again "
        "on that "
        f"machine.{stages}"
    )
