"""The Prune page's controls: method, scope, global slider, and one slider per layer by group.

Every widget writes into the session's Draft through a callback (so a structured group or the
global slider can move other sliders before they are drawn), and is seeded from the Draft when
the page is opened again.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from explorer.inspect import Inventory
from explorer.latency import fast_multiple
from explorer.methods import available_methods, get_method
from explorer.subject import Subject
from ui import cache, state, widgets
from ui.draft import Draft, blocks
from ui.state import Keys

__all__ = ["prune_controls"]


def _on_method(inventory: Inventory) -> None:
    state.restore(
        state.draft().with_method(st.session_state[Keys.PRUNE_METHOD], inventory), inventory
    )


def _on_scope(inventory: Inventory) -> None:
    # restore, not set: the sliders leave the global plan's per-layer shares for the draft's ratios
    state.restore(replace(state.draft(), scope=st.session_state[Keys.PRUNE_SCOPE]), inventory)


def _on_round() -> None:
    choice = st.session_state[Keys.PRUNE_ROUND]
    state.set_draft(replace(state.draft(), round_to=None if choice == "off" else int(choice)))


def _on_blocks(subject: Subject) -> None:
    chosen = set(st.session_state[Keys.PRUNE_BLOCKS])
    blocks = [b for b in subject.blocks if b.name in chosen]  # in model order
    state.set_draft(state.draft().with_blocks(blocks))


def _blocks_control(subject: Subject) -> None:
    """Whole residual blocks to remove (each becomes the identity), where the model has any."""
    blocks = {b.name: b for b in subject.blocks}
    if not blocks:
        return
    st.multiselect(
        "Remove whole blocks",
        list(blocks),
        key=Keys.PRUNE_BLOCKS,
        on_change=_on_blocks,
        args=(subject,),
        format_func=lambda n: f"{n} · {blocks[n].type} · {blocks[n].params:,} params",
        placeholder="none: every block stays",
        help=(
            "A residual block whose shortcut is the identity can go whole: it becomes the"
            " identity (y = x), with every layer inside it, and the network is that much"
            " shallower. The Sensitivity page measures each block removed alone."
        ),
    )


def _on_global(inventory: Inventory) -> None:
    ratio = st.session_state[Keys.PRUNE_GLOBAL] / 100
    state.restore(state.draft().with_global(ratio, inventory), inventory)


def _on_ratio(layer: str, inventory: Inventory) -> None:
    ratio = st.session_state[Keys.ratio(layer)] / 100
    state.restore(state.draft().with_ratio(layer, ratio, inventory), inventory)


def _on_flag(layer: str, flag: str, key: str) -> None:
    state.set_draft(state.draft().with_flag(layer, flag, bool(st.session_state[key])))


def _ratio_help(draft: Draft, layer: str) -> str:
    kind = get_method(draft.method_of(layer)).kind
    if kind == "structured":
        return (
            "Share of this layer's output channels removed; every layer of its group loses the same"
            " channels."
        )
    if kind == "semi-structured":
        return "Any ratio above 0 applies the 2-of-4 pattern (50 % of the weights)."
    return "Share of this layer's weights set to zero."


def _global_shares(subject: Subject, draft: Draft) -> dict[str, float]:
    """In global scope, what the ranking really takes from each layer; the greyed sliders show
    it."""
    if draft.scope != "global":
        return {}
    plan = draft.to_plan(subject.inventory, subject.model_spec)
    if plan.is_empty:
        return {}
    shares = cache.layer_shares(subject.model_spec, st.session_state[Keys.DATA], plan.key(), plan)
    for name, share in shares.items():
        if name in plan.layers:
            st.session_state[Keys.ratio(name)] = min(95, round(100 * share))
    return {n: v for n, v in shares.items() if n in plan.layers}


def _layer_row(draft: Draft, inventory: Inventory, name: str, shares: dict[str, float]) -> None:
    info = inventory[name]
    gone = draft.removed_with(name)
    why = f"removed with the block {gone}" if gone else draft.why_not(name, inventory)
    is_global = draft.scope == "global"
    # A horizontal row: the slider takes what the labels leave, lock and skip keep their full labels
    # (and wrap below the slider where the column is too narrow for the three).
    row = st.container(horizontal=True, vertical_alignment="center", gap="small")
    shape = "×".join(map(str, info.shape))
    own = draft.overrides.get(name)
    label = f"{name} · {info.type} {shape}" + (f" · {own}" if own and not is_global else "")
    if name in shares:
        label += f" · {100 * shares[name]:.1f} % in the global ranking"
    row.slider(
        label,
        0,
        95,
        step=1,
        key=Keys.ratio(name),
        format="%d %%",
        on_change=_on_ratio,
        args=(name, inventory),
        help=why
        or (
            "What the global ranking takes from this layer (set by All layers)."
            if name in shares
            else _ratio_help(draft, name)
        ),
        disabled=bool(why) or is_global or name in draft.locked or name in draft.skipped,
        width="stretch",
    )
    lock = skip = row.container(
        horizontal=True, width="content", gap="small"
    )  # after the slider; wrap together
    lock.checkbox(
        "lock",
        key=Keys.lock(name),
        on_change=_on_flag,
        args=(name, "locked", Keys.lock(name)),
        disabled=bool(why) or is_global,
        width="content",
    )
    skip.checkbox(
        "skip",
        key=Keys.skip(name),
        on_change=_on_flag,
        args=(name, "skipped", Keys.skip(name)),
        disabled=bool(why),
        width="content",
    )


def prune_controls(subject: Subject) -> Draft:
    """Draw the controls and return the (possibly just changed) Draft."""
    inventory = subject.inventory
    state.seed_prune_widgets(state.draft(), inventory)
    methods = available_methods()
    off = inventory.structured_error
    top = st.columns([3, 2])
    method = top[0].selectbox(
        "Method",
        methods,
        key=Keys.PRUNE_METHOD,
        on_change=_on_method,
        args=(inventory,),
        format_func=widgets.method_label(inventory),
        help="\n".join(
            f"- **{m}** ({get_method(m).kind}): {get_method(m).summary}" for m in methods
        ),
    )
    top[1].radio(
        "Scope",
        ["local", "global"],
        key=Keys.PRUNE_SCOPE,
        on_change=_on_scope,
        args=(inventory,),
        horizontal=True,
        help=(
            "local: each layer at its own ratio. global: one ratio, weights (or channels) "
            "ranked across all layers that are not skipped."
        ),
    )
    st.caption(f"**{method}**: {get_method(method).summary}.")
    widgets.data_note(method, subject)
    if off and get_method(method).structured:
        st.warning(f"**{method}** is off for this model: {off}.", icon=":material/block:")
    elif get_method(method).structured:
        fast, own = fast_multiple(), state.draft().round_to
        choices: list[str | int] = ["off", 8, 16] + ([own] if own and own not in (8, 16) else [])
        st.radio(
            "Round kept channels up to multiples of",
            choices,
            key=Keys.PRUNE_ROUND,
            on_change=_on_round,
            horizontal=True,
            disabled=state.draft().scope == "global",
            format_func=lambda v: f"{v} (fast on this CPU)" if v == fast else str(v),
            help=(
                "Dense CPU kernels run fastest at some widths: ONNX Runtime's blocked convolutions"
                f" use blocks of {fast} channels on this CPU, so 101 channels can be slower than"
                " 112. Rounding keeps a few more channels (never more than the layer has) so the"
                " pruned model gets faster. Local scope only."
            ),
        )
    _blocks_control(subject)
    st.slider(
        "All layers",
        0,
        95,
        step=1,
        key=Keys.PRUNE_GLOBAL,
        on_change=_on_global,
        args=(inventory,),
        format="%d %%",
        help=(
            "Moves every layer that is neither locked nor skipped; in global scope, "
            "the share pruned across all of them, ranked together."
        ),
    )
    st.caption(
        "Per layer: the share pruned. **lock** keeps a layer where it is when *All layers* moves; "
        "**skip** leaves it out of the plan."
    )
    draft = state.draft()
    shares = _global_shares(subject, draft)
    for members in blocks(inventory):
        grouped = len(members) > 1
        box = st.container(border=True) if grouped else st.container()
        with box:
            if grouped:
                st.caption(
                    f"Dependency group of {len(members)} layers: their output channels are coupled "
                    "(structured methods prune them together)."
                )
            for name in members:
                _layer_row(draft, inventory, name, shares)
    return draft
