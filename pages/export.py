"""Export page: download the plan and the pruned model, reproduce it headless, or import a plan."""

import json

import streamlit as st

from explorer.bundle import export_command
from explorer.errors import ExplorerError
from ui import cache, state, widgets
from ui.state import Keys

state.ensure_router()
st.title("Export", anchor=False)
state.show_flash()
subject = widgets.require_subject()
model, data = subject.model_spec, st.session_state[Keys.DATA]
draft = state.draft()
try:
    plan = draft.to_plan(subject.inventory, model)
except ExplorerError as e:
    st.error(str(e))
    st.stop()

st.subheader("The current plan", anchor=False)
st.caption(f"{draft.summary(subject.inventory)}. Plain JSON: it replays on a fresh copy of the model.")
st.code(plan.to_json(), language="json")
st.download_button("plan.json", plan.to_json() + "\n", file_name="plan.json", mime="application/json",
                   icon=":material/download:")

st.subheader("The pruned model", anchor=False)
files = cache.cached_bundle(model, data, plan.key())
slot = st.empty()
if files is None and slot.button("Build the export", type="primary", icon=":material/build:",
                                 help="Prunes, exports to ONNX, measures, and writes the PyTorch artifacts and the report."):
    slot.empty()
    update, done = cache.progress_bar("Exporting:")
    try:
        files = cache.bundle(model, data, plan, update)
    except ExplorerError as e:
        st.error(str(e))
    done()
if files is not None:
    files = {name: payload for name, payload in files.items() if name != "plan.json"}  # offered above
    cols = st.columns(len(files))
    for col, (name, payload) in zip(cols, sorted(files.items(), key=lambda kv: kv[0] != "bundle.zip")):
        col.download_button(name, payload, file_name=name, icon=":material/download:", width="stretch",
                            type="primary" if name == "bundle.zip" else "secondary")
    if "model.pt2" in files:
        st.caption("model.onnx runs in ONNX Runtime; model.pt2 is a torch.export program (torch.export.load); "
                   "model_state.pt is the pruned state dict; report.html and metrics.json hold the measured numbers.")
    else:
        why = json.loads(files["metrics.json"]).get("pt2_error", "torch.export could not export it")
        st.caption(f"model.onnx runs in ONNX Runtime; model_state.pt is the pruned state dict (torch.load with "
                   f"weights_only=True); report.html and metrics.json hold the measured numbers. No model.pt2: {why}.")

st.subheader("Reproduce it from the command line", anchor=False)
st.code(export_command(model, data, "plan.json", "export"), language="bash")
st.caption("Run it where you saved plan.json: it writes the same files into ./export, with the numbers "
           "measured again on that machine.")

st.subheader("Import a plan", anchor=False)
st.caption("Restores a saved plan as the current configuration (the Prune page picks it up); "
           "it is checked against this model's layers first.")
upload = st.file_uploader("A plan JSON file", type=["json"], key=Keys.EXPORT_UPLOAD)
pasted = st.text_area("...or paste the JSON", key=Keys.EXPORT_PASTE, height=120)
if st.button("Restore this plan", icon=":material/upload:", disabled=upload is None and not pasted.strip()):
    name, raw = (upload.name, upload.getvalue()) if upload is not None else ("the pasted plan", pasted)
    try:
        summary = widgets.import_plan(raw, subject, data)
        state.flash("success", f"Restored {name}: {summary}")
        st.rerun()
    except ExplorerError as e:
        st.error(f"{name}: {e}")
