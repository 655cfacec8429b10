"""Export page: the plan, the pruned model or the recovered one, the plan for NNI and Torch-Pruning,
the command that reproduces it headless, and importing a plan."""

import json

import streamlit as st

from explorer.bundle import export_command
from explorer.errors import ExplorerError
from ui import cache, exporting, state, uploads, widgets
from ui.state import Keys

state.ensure_router()
st.title("Export", anchor=False)
state.show_flash()
subject = widgets.require_subject()
model, data = subject.model_spec, st.session_state[Keys.DATA]
names = (uploads.portable(model), uploads.portable(data))
draft = state.draft()
try:
    plan = draft.to_plan(subject.inventory, names[0])
except ExplorerError as e:
    st.error(str(e))
    st.stop()

st.subheader("The current plan", anchor=False)
st.caption(
    f"{draft.summary(subject.inventory)}. Plain JSON: it replays on a fresh copy of the model."
)
st.code(plan.to_json(), language="json")
st.download_button(
    "plan.json",
    plan.to_json() + "\n",
    file_name="plan.json",
    mime="application/json",
    icon=":material/download:",
)

st.subheader("The model", anchor=False)
choices = exporting.choices(subject, plan)
choice = st.radio(
    "What to export",
    list(choices),
    format_func=lambda k: choices[k].label,
    key=Keys.EXPORT_WHAT,
    help="The Recover page's last run of this plan, if there is one, with its measured numbers.",
)
chosen = choices[choice]
files = cache.cached_bundle(model, data, plan, chosen.recovered, names)
slot = st.empty()
if files is None and slot.button(
    "Build the export",
    type="primary",
    icon=":material/build:",
    key="export.build",
    help=(
        "Prunes (or loads the recovered weights), exports to ONNX, measures, and "
        "writes the PyTorch artifacts and the report."
    ),
):
    slot.empty()
    update, done = cache.progress_bar("Exporting:")
    try:
        files = cache.bundle(model, data, plan, update, chosen.recovered, names)
    except ExplorerError as e:
        st.error(str(e))
    done()
if files is not None:
    st.caption(exporting.measured(files))
    files = {
        name: payload for name, payload in files.items() if name != "plan.json"
    }  # offered above
    with st.container(horizontal=True, gap="small"):  # full file names; a narrow page wraps them
        for name, payload in sorted(files.items(), key=lambda kv: kv[0] != "bundle.zip"):
            st.download_button(
                name,
                payload,
                file_name=name,
                icon=":material/download:",
                width="content",
                type="primary" if name == "bundle.zip" else "secondary",
                key=f"export.file.{name}",
            )
    pt2 = (
        "model.pt2 is a torch.export program (torch.export.load); "
        if "model.pt2" in files
        else (
            "no model.pt2: "
            + json.loads(files["metrics.json"]).get("pt2_error", "torch.export could not export it")
            + "; "
        )
    )
    int8 = "model.int8.onnx is the int8 model; " if "model.int8.onnx" in files else ""
    st.caption(
        f"model.onnx runs in ONNX Runtime; {int8}{pt2}model_state.pt is the state dict (torch.load"
        " with weights_only=True); report.html and metrics.json hold the measured numbers."
    )

st.subheader("For other tools", anchor=False)
exporting.converters(plan, subject)

st.subheader("Reproduce it from the command line", anchor=False)
command = export_command(names[0], names[1], "plan.json", "export", chosen.settings)
st.code(command, language="bash", wrap_lines=True)
st.caption(exporting.command_caption(model, data, names, chosen.settings))

st.subheader("Import a plan", anchor=False)
st.caption(
    "Restores a saved plan as the current configuration (the Prune page picks it up); "
    "it is checked against this model's layers first."
)
upload = st.file_uploader("A plan JSON file", type=["json"], key=Keys.EXPORT_UPLOAD)
pasted = st.text_area("...or paste the JSON", key=Keys.EXPORT_PASTE, height=120)
if st.button(
    "Restore this plan", icon=":material/upload:", disabled=upload is None and not pasted.strip()
):
    name, raw = (
        (upload.name, upload.getvalue()) if upload is not None else ("the pasted plan", pasted)
    )
    try:
        summary = widgets.import_plan(raw, subject, data)
        state.flash("success", f"Restored {name}: {summary}")
        st.rerun()
    except ExplorerError as e:
        st.error(f"{name}: {e}")
