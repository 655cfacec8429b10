"""Draft: what the Prune page's controls hold (ratios, locks, skips), and the plan it stands for.

Pure Python (no streamlit): the page keeps a Draft in session state, turns it into a
``PruningPlan`` with :meth:`Draft.to_plan`, and restores a Draft from any plan with
:meth:`Draft.from_plan`. Drafts are immutable; every change returns a new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from explorer.blocks import Block
from explorer.errors import PlanError
from explorer.inspect import Inventory
from explorer.methods import get_method
from explorer.plan import LayerRule, PruningPlan

__all__ = ["DEFAULT_METHOD", "Draft", "blocks"]

DEFAULT_METHOD = "l1-unstructured"


@dataclass(frozen=True)
class Draft:
    """Per-layer ratios plus the UI-only state around them.

    ``locked`` layers keep their ratio when the global slider moves; ``skipped`` layers are left
    out of the plan (never pruned). ``overrides`` are per-layer methods that came with an imported
    plan; they are kept so that restoring the plan loses nothing. ``round_to`` rounds the channels
    structured groups keep up to a multiple of it (the plan's ``round_to``; local scope only).
    ``removed`` maps the whole blocks the plan removes to their layers (which then take no ratio).
    """

    method: str = DEFAULT_METHOD
    scope: str = "local"
    global_ratio: float = 0.0
    ratios: Mapping[str, float] = field(default_factory=dict)
    locked: frozenset[str] = frozenset()
    skipped: frozenset[str] = frozenset()
    overrides: Mapping[str, str] = field(default_factory=dict)
    round_to: int | None = None
    removed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    # --- queries ---------------------------------------------------------------------------------

    def method_of(self, layer: str) -> str:
        return self.overrides.get(layer, self.method)

    def ratio(self, layer: str) -> float:
        return float(self.ratios.get(layer, 0.0))

    def eligible(self, inventory: Inventory) -> list[str]:
        """Layers the draft's methods can prune (each method says which it applies to)."""
        return [info.name for info in inventory.layers if not self.why_not(info.name, inventory)]

    def why_not(self, layer: str, inventory: Inventory) -> str:
        """Why ``layer`` cannot be pruned with its method ('' when it can)."""
        return get_method(self.method_of(layer)).applies_to(layer, inventory) or ""

    def removed_with(self, layer: str) -> str:
        """The removed block ``layer`` goes with ('' when it stays)."""
        return next((b for b, layers in self.removed.items() if layer in layers), "")

    # --- changes ---------------------------------------------------------------------------------

    def with_ratio(self, layer: str, ratio: float, inventory: Inventory) -> Draft:
        """Set ``layer``'s ratio; under a structured method its whole dependency group moves."""
        ratios = dict(self.ratios)
        members = [layer]
        group = inventory[layer].group
        if get_method(self.method_of(layer)).structured and group is not None:
            members = list(inventory.groups[group])
        for name in members:
            ratios[name] = ratio
        return replace(self, ratios=ratios)

    def with_global(self, ratio: float, inventory: Inventory) -> Draft:
        """Set the global ratio, and move every layer that is neither locked nor skipped to it."""
        ratios = dict(self.ratios)
        for name in self.eligible(inventory):
            if name not in self.locked and name not in self.skipped:
                ratios[name] = ratio
        return replace(self, global_ratio=ratio, ratios=ratios)

    def with_method(self, method: str, inventory: Inventory) -> Draft:
        """Switch method; under a structured one each group takes its largest ratio (as the pruner
        does)."""
        get_method(method)
        draft = replace(self, method=method)
        if not get_method(method).structured:
            return draft
        ratios = dict(draft.ratios)
        for members in inventory.groups.values():
            top = max(draft.ratio(m) for m in members)
            for m in members:
                ratios[m] = top
        return replace(draft, ratios=ratios)

    def with_blocks(self, blocks: Sequence[Block]) -> Draft:
        """Remove exactly ``blocks`` whole (their layers keep their ratios for when they return)."""
        return replace(self, removed={b.name: tuple(b.layers) for b in blocks})

    def with_flag(self, layer: str, flag: str, on: bool) -> Draft:
        """Lock or skip (``flag`` is 'locked' or 'skipped') a layer, or undo it."""
        current: frozenset[str] = getattr(self, flag)
        return replace(self, **{flag: current | {layer} if on else current - {layer}})

    # --- plans -----------------------------------------------------------------------------------

    def to_plan(self, inventory: Inventory, model: str | None = None) -> PruningPlan:
        """The plan this draft stands for. Layers at ratio 0, skipped or ineligible are not listed.

        A global plan ranks every listed layer with the draft's method (overrides are set aside).
        """
        names = [
            n
            for n in self.eligible(inventory)
            if n not in self.skipped and not self.removed_with(n)
        ]
        blocks = tuple(self.removed) or None
        if self.scope == "global":  # one ranking, one method: per-layer overrides do not apply
            names = [
                n
                for n in replace(self, overrides={}).eligible(inventory)
                if n not in self.skipped and not self.removed_with(n)
            ]
            return PruningPlan(
                method=self.method,
                layers={n: LayerRule(self.global_ratio) for n in names},
                scope="global",
                ratio=self.global_ratio,
                model=model,
                blocks=blocks,
            )
        layers = {
            n: LayerRule(self.ratio(n), self.overrides.get(n)) for n in names if self.ratio(n) > 0
        }
        rounds = self.round_to if self.rounds_channels else None
        return PruningPlan(
            method=self.method, layers=layers, model=model, round_to=rounds, blocks=blocks
        )

    @property
    def rounds_channels(self) -> bool:
        """Whether ``round_to`` applies: set, local scope, and a method that removes channels."""
        methods = {self.method, *self.overrides.values()}
        return (
            bool(self.round_to)
            and self.scope == "local"
            and any(get_method(m).structured for m in methods)
        )

    @classmethod
    def from_plan(
        cls, plan: PruningPlan, inventory: Inventory, blocks: Sequence[Block] = ()
    ) -> Draft:
        """The draft that reproduces ``plan``; ``blocks``: the model's removable blocks.

        Raises:
            PlanError: the plan names a layer or block the model does not have, or asks a
                structured method of a layer whose output channels cannot be removed.
        """
        plan.check_layers(inventory.names)
        known = {b.name: b for b in blocks}
        unknown = [b for b in plan.blocks or () if b not in known]
        if unknown:
            raise PlanError(
                f"unknown block(s) {unknown} for this model; its removable blocks are"
                f" {list(known) or 'none'}"
            )
        removed = {b: known[b].layers for b in plan.blocks or ()}
        overrides = {
            n: r.method for n, r in plan.layers.items() if r.method and r.method != plan.method
        }
        probe = cls(method=plan.method, overrides=overrides)
        for name in plan.layers:
            why = probe.why_not(name, inventory)
            if why:
                raise PlanError(
                    f"layer {name!r} cannot be pruned with {probe.method_of(name)} ({why})"
                )
        if plan.scope == "global":
            ratio = float(plan.ratio or 0.0)
            return cls(
                method=plan.method,
                scope="global",
                global_ratio=ratio,
                ratios={n: ratio for n in plan.layers},
                skipped=frozenset(
                    n
                    for n in inventory.names
                    if n not in plan.layers and not any(n in ls for ls in removed.values())
                ),
                removed=removed,
            )
        return cls(
            method=plan.method,
            ratios={n: r.ratio for n, r in plan.layers.items()},
            overrides=overrides,
            round_to=plan.round_to,
            removed=removed,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (the session store keeps drafts this way)."""
        out: dict[str, Any] = {
            "method": self.method,
            "scope": self.scope,
            "global_ratio": self.global_ratio,
            "ratios": dict(self.ratios),
            "locked": sorted(self.locked),
            "skipped": sorted(self.skipped),
            "overrides": dict(self.overrides),
        }
        if self.removed:
            out["removed"] = {b: list(layers) for b, layers in self.removed.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Draft:
        """The draft ``to_dict`` wrote. Raises PlanError on an unknown method."""
        draft = cls(
            method=str(data.get("method", DEFAULT_METHOD)),
            scope=str(data.get("scope", "local")),
            global_ratio=float(data.get("global_ratio", 0.0)),
            ratios={str(k): float(v) for k, v in dict(data.get("ratios", {})).items()},
            locked=frozenset(map(str, data.get("locked", ()))),
            skipped=frozenset(map(str, data.get("skipped", ()))),
            overrides={str(k): str(v) for k, v in dict(data.get("overrides", {})).items()},
            removed={
                str(b): tuple(map(str, layers))
                for b, layers in dict(data.get("removed", {})).items()
            },
        )
        for method in {draft.method, *draft.overrides.values()}:
            get_method(method)
        return draft

    def summary(self, inventory: Inventory) -> str:
        """One line for tables: method, scope and the non-zero ratios (and blocks removed)."""
        gone = f"; blocks removed: {', '.join(self.removed)}" if self.removed else ""
        if self.scope == "global":
            n = len(
                [
                    x
                    for x in self.eligible(inventory)
                    if x not in self.skipped and not self.removed_with(x)
                ]
            )
            return f"{self.method}, global {self.global_ratio:.0%} over {n} layers" + gone
        parts = [
            f"{n} {self.ratio(n):.0%}"
            for n in self.eligible(inventory)
            if n not in self.skipped and self.ratio(n) > 0 and not self.removed_with(n)
        ]
        rounding = (
            f", channels rounded to multiples of {self.round_to}"
            if parts and self.rounds_channels
            else ""
        )
        if not parts and gone:
            return f"{self.method}: no layer pruned" + gone
        return f"{self.method}: " + (", ".join(parts) if parts else "dense") + rounding + gone


def blocks(inventory: Inventory) -> list[list[str]]:
    """Layers in model order, members of one dependency group together (at the first one's
    place)."""
    out: list[list[str]] = []
    placed: set[str] = set()
    for info in inventory.layers:
        if info.name in placed:
            continue
        members = list(inventory.groups[info.group]) if info.group is not None else [info.name]
        out.append(members)
        placed.update(members)
    return out
