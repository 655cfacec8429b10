"""The Sensitivity page's whole-block view: accuracy with each residual block removed alone.

Each point is the model with one block replaced by the identity, exported to ONNX and scored in
ONNX Runtime (``explorer.sensitivity.block_scan``); the Prune page's *Remove whole blocks* control
removes the ones chosen.
"""

from __future__ import annotations

import streamlit as st

from explorer import figures
from explorer.blocks import why_no_blocks
from explorer.errors import ExplorerError
from explorer.subject import Subject
from ui import cache
from ui.state import Keys

__all__ = ["section"]


def section(subject: Subject) -> None:
    """Draw the block scan of ``subject`` (measured on demand, then kept for every user)."""
    blocks = subject.blocks
    if not blocks:
        st.info(f"No block of this model can be removed whole: {why_no_blocks(subject.model)}.")
        return
    model, data = subject.model_spec, st.session_state[Keys.DATA]
    st.caption(
        f"{len(blocks)} residual blocks have the identity as shortcut: each can go whole (it"
        " becomes y = x, with every layer inside it). Each bar is the model with that block"
        " removed alone, exported to ONNX and measured on the test set; remove blocks on the"
        " Prune page."
    )
    frame = cache.cached_block_scan(model, data)
    if frame is None and st.button(
        f"Measure {len(blocks)} blocks removed", icon=":material/play_arrow:", key="blocks.run"
    ):
        update, done = cache.progress_bar("Removing blocks:")
        try:
            frame = cache.block_scan(model, data, update)
        except ExplorerError as e:
            st.error(str(e))
        done()
    if frame is None:
        return
    st.plotly_chart(figures.block_sensitivity(frame, subject.data.has_labels), key="blocks.chart")
    removed = frame[frame["ratio"] > 0]
    dense = float(frame[frame["ratio"] == 0]["accuracy"].iloc[0])
    total = subject.inventory.total_macs or 1
    types = {b.name: b.type for b in blocks}
    table = removed.assign(
        type=removed["layer"].map(types),
        drop=(dense - removed["accuracy"]) * 100,
        macs_share=100 * removed["macs"] / total,
        accuracy=100 * removed["accuracy"],
    )[["layer", "type", "accuracy", "drop", "loss", "params", "macs_share"]]
    metric = "accuracy" if subject.data.has_labels else "agreement"
    st.dataframe(
        table.rename(
            columns={
                "layer": "block",
                "accuracy": f"{metric} removed (%)",
                "drop": "drop (points)",
                "params": "parameters saved",
                "macs_share": "MACs saved (%)",
            }
        ),
        hide_index=True,
        column_config={
            f"{metric} removed (%)": st.column_config.NumberColumn(format="%.2f"),
            "drop (points)": st.column_config.NumberColumn(format="%.2f"),
            "loss": st.column_config.NumberColumn(format="%.4f"),
            "parameters saved": st.column_config.NumberColumn(format="localized"),
            "MACs saved (%)": st.column_config.NumberColumn(format="%.1f"),
        },
    )
    st.download_button(
        "Download CSV",
        frame.to_csv(index=False).encode(),
        file_name="block-sensitivity.csv",
        mime="text/csv",
        icon=":material/download:",
        key="blocks.download",
    )
