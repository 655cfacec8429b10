"""Structured plans that are never silently slower: why a plan measures slower than dense, and the
rounded plan that is not.

Removing channels can make a dense CPU slower: ONNX Runtime's blocked convolutions want channel
counts that are multiples of their block (``explorer.latency.fast_multiple``), and 30% of 144
channels leaves 101. :func:`explain_slowdown` times, for every group the plan prunes to a width
that is no such multiple, the model with that group alone at the plan's width and at that width
rounded up to multiples of 8 and 16, all of a group's widths and the dense model in one interleaved
window (``explorer.latency.time_with_dense``). It names the groups whose width costs the plan (with
only that group pruned, a median latency above dense, or above a wider width: a bad step of the
staircase; the rounds' range is printed next to it), and builds and measures the rounded plan:
every kept count rounded up to the CPU's fast multiple (the plan's top-level ``round_to``), or to
another measured width where that one was faster in every round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from explorer.evaluate import Evaluation
from explorer.inspect import out_channels
from explorer.latency import fast_multiple, time_with_dense
from explorer.methods import get_method
from explorer.plan import LayerRule, PruningPlan
from explorer.progress import Progress, no_progress
from explorer.prune import kept_channels, ratio_for_width
from explorer.runtime import RoundRatios, Speedup
from explorer.sensitivity.engines import engine_for
from explorer.subject import Subject

__all__ = [
    "MULTIPLES",
    "GroupWidth",
    "Slowdown",
    "explain_slowdown",
    "pruned_widths",
    "rounded_plan",
]

MULTIPLES = (8, 16)  # the widths rounded plans try besides the plan's own
SHOWN = 5  # costly groups named in the text (all of them are in to_dict)


@dataclass(frozen=True)
class GroupWidth:
    """One pruned group: its width in the plan, the widths measured alone, and the one chosen."""

    group: str
    members: tuple[str, ...]
    channels: int  # in the dense model
    kept: int  # what the plan keeps
    # Measured widths: the latency with only this group pruned to that width, as a share of the
    # dense latency per round of one window (every width of the group and the dense model in it).
    shares: dict[int, RoundRatios] = field(default_factory=dict)
    chosen: int = 0  # what the rounded plan keeps
    cost: str = ""  # why this group's width costs the plan ('' when it does not)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "members": list(self.members),
            "channels": self.channels,
            "kept": self.kept,
            "chosen": self.chosen,
            "cost": self.cost,
            "widths": {
                str(w): {"share": r.value, "low": r.low, "high": r.high}
                for w, r in self.shares.items()
            },
        }


@dataclass(frozen=True)
class Slowdown:
    """Why a structured plan measured slower than dense, and the rounded plan, measured."""

    speedup: Speedup  # the plan's
    mac_ratio: float
    groups: tuple[GroupWidth, ...]
    multiple: int  # the fast multiple of this CPU
    rounded: Evaluation | None  # the rounded plan, measured; None when rounding changes nothing

    @property
    def costly(self) -> list[GroupWidth]:
        """The groups whose width costs the plan, the costliest (slowest alone) first."""
        return sorted((g for g in self.groups if g.cost), key=lambda g: -g.shares[g.kept].value)

    @property
    def rounded_plan(self) -> PruningPlan | None:
        return self.rounded.plan if self.rounded is not None else None

    def headline(self) -> str:
        return (
            f"slower than dense: {self.speedup.describe()} measured, although it does "
            f"{self.mac_ratio:.2f}x "
            "fewer MACs"
        )

    def cause(self) -> str:
        costly = self.costly
        if not costly:
            return (
                "no pruned group measured slower alone (the groups interact); the rounded plan "
                "keeps widths "
                f"this CPU runs fast (multiples of {self.multiple})"
            )
        parts = [f"{', '.join(g.members)} ({g.cost})" for g in costly[:SHOWN]]
        more = f"; and {len(costly) - SHOWN} more group(s)" if len(costly) > SHOWN else ""
        return (
            f"the widths of {len(costly)} group(s) cost it, costliest first: "
            + "; ".join(parts)
            + more
        )

    def offer(self) -> str:
        if self.rounded is None or self.rounded.speedup is None:
            return "rounding the kept channels changes nothing here"
        plan = self.rounded.plan
        assert plan is not None
        how = (
            f"kept channels rounded up to multiples of {plan.round_to}"
            if plan.round_to
            else "measured widths"
        )
        moved = [g for g in self.groups if g.chosen != g.kept]
        sp = self.rounded.speedup
        verdict = "faster" if sp.faster else "slower" if sp.slower else "within noise"
        return (
            f"the rounded plan ({how}; {len(moved)} group(s) widened): {sp.describe()} against "
            "dense, "
            f"{verdict}, measured; accuracy {100 * self.rounded.pruned.accuracy:.2f}%, "
            f"{self.rounded.mac_ratio:.2f}x fewer MACs than dense"
        )

    def lines(self) -> list[str]:
        return [self.headline(), self.cause(), self.offer()]

    def to_dict(self) -> dict[str, Any]:
        rounded = None
        if self.rounded is not None:
            assert self.rounded.plan is not None
            rounded = {
                "plan": self.rounded.plan.to_dict(),
                "accuracy": self.rounded.pruned.accuracy,
                "macs": self.rounded.pruned.macs,
                "speedup": self.rounded.speedup.to_dict() if self.rounded.speedup else None,
            }
        return {
            "slower": True,
            "text": self.lines(),
            "fast_multiple": self.multiple,
            "groups": [g.to_dict() for g in self.groups],
            "costly": [g.group for g in self.costly],
            "rounded": rounded,
        }


def pruned_widths(
    subject: Subject, plan: PruningPlan
) -> list[tuple[str, tuple[str, ...], int, int, str]]:
    """(group, members, dense channels, kept channels, method) of every group ``plan`` really
    narrows, read off the pruned model (so global plans too)."""
    listed = [n for n in plan.layers if get_method(plan.method_of(n)).structured]
    if not listed:
        return []
    dense = dict(subject.model.named_modules())
    pruned = dict(subject.prune(plan).named_modules())
    out = []
    for gid, members in subject.inventory.groups.items():
        mine = [n for n in members if n in listed]
        if not mine:
            continue
        n, kept = out_channels(dense[gid]), out_channels(pruned[gid])
        if kept < n:
            out.append((gid, tuple(members), n, kept, plan.method_of(mine[0])))
    return out


def _ceil(width: int, multiple: int, channels: int) -> int:
    return min(channels, math.ceil(width / multiple) * multiple)


def _share(r: RoundRatios) -> str:
    return f"{r.value:.2f}x the dense latency (rounds {r.low:.2f}-{r.high:.2f}x)"


def _versus(a: RoundRatios, b: RoundRatios) -> RoundRatios:
    """Per round, the latency share ``a`` over ``b`` (two widths timed in the same rounds)."""
    return RoundRatios(tuple(x / y for x, y in zip(a.per_round, b.per_round, strict=True)))


def choose_width(
    kept: int, channels: int, shares: dict[int, RoundRatios], multiple: int
) -> tuple[int, str]:
    """The rounded width of one group, and why its own width costs the plan ('' if it does not).

    The rounded width is ``kept`` rounded up to the CPU's fast ``multiple``, unless another width
    measured (``shares``; ``channels`` itself is the dense group) was faster than that one in every
    round. The group's own width costs the plan when, with only this group pruned, its median
    latency is above the dense model's, or above that of a wider measured width (a bad step of the
    staircase).
    """
    default = _ceil(kept, multiple, channels)
    chosen = default
    if default in shares:
        faster = [
            w
            for w in shares
            if w >= kept and w != default and _versus(shares[default], shares[w]).low > 1.0
        ]
        if faster:
            chosen = min(faster, key=lambda w: shares[w].value)
    own = shares.get(kept)
    if own is None:
        return chosen, ""
    if own.value > 1.0:
        return chosen, f"{kept} of {channels} channels: {_share(own)} with only this group pruned"
    steps = [w for w in shares if kept < w < channels and shares[w].value < own.value]
    if steps:
        w = min(steps, key=lambda v: shares[v].value)
        return (
            chosen,
            (
                f"{kept} of {channels} channels: {_share(own)}, slower than {w} channels "
                f"({shares[w].value:.2f}x): a bad step"
            ),
        )
    return chosen, ""


def rounded_plan(
    plan: PruningPlan, groups: Sequence[GroupWidth], multiples: Sequence[int] = MULTIPLES
) -> PruningPlan:
    """``plan`` with each group keeping its ``chosen`` width: with a top-level ``round_to`` where
    one multiple gives every chosen width (original ratios kept where they already round to it),
    else with per-layer ratios that keep exactly those widths. Always a local plan."""
    round_to = next(
        (
            m
            for m in sorted(set(multiples), reverse=True)
            if all(g.chosen % m == 0 or g.chosen == g.channels for g in groups)
        ),
        None,
    )
    layers: dict[str, LayerRule] = dict(plan.layers) if plan.scope == "local" else {}
    for g in groups:
        listed = [n for n in g.members if n in plan.layers]
        ratio = (
            (plan.ratio or 0.0)
            if plan.scope == "global"
            else max(plan.layers[n].ratio for n in listed)
        )
        keep = plan.scope == "local" and kept_channels(g.channels, ratio, round_to) == g.chosen
        for name in listed:
            if keep:
                layers[name] = plan.layers[name]
            elif g.chosen >= g.channels:  # the group is fastest dense: not pruned
                layers.pop(name, None)
            else:
                layers[name] = LayerRule(
                    ratio_for_width(g.channels, g.chosen), plan.layers[name].method
                )
    if round_to is not None and not any(get_method(plan.method_of(n)).structured for n in layers):
        round_to = None
    return PruningPlan(
        method=plan.method, layers=layers, scope="local", model=plan.model, round_to=round_to
    )


def explain_slowdown(
    subject: Subject,
    evaluation: Evaluation,
    *,
    multiples: Sequence[int] = MULTIPLES,
    on_progress: Progress = no_progress,
) -> Slowdown | None:
    """Why ``evaluation``'s plan measured slower than dense, with the rounded plan measured; None
    when it did not measure slower (in every round) or prunes no channels."""
    plan, speedup = evaluation.plan, evaluation.speedup
    if plan is None or speedup is None or not speedup.slower:
        return None
    found = pruned_widths(subject, plan)
    if not found:
        return None
    multiple = fast_multiple()
    groups = []
    for i, (gid, members, n, kept, method_name) in enumerate(found):
        if kept % multiple == 0:  # already a width this CPU's blocks fit
            groups.append(GroupWidth(gid, members, n, kept, {}, kept, ""))
            continue
        widths = sorted({kept, *(_ceil(kept, m, n) for m in multiples)} - {n})
        on_progress(0.8 * i / len(found), f"{gid}: timing {len(widths)} width(s) against dense")
        method = get_method(method_name)
        eng = engine_for(subject, method)
        models = [eng.pruned(gid, ratio_for_width(n, w), None, method) for w in widths]  # type: ignore[attr-defined]
        timed = time_with_dense(subject, models)
        shares = {w: sp.latency_share for w, sp in zip(widths, timed, strict=True)}
        shares[n] = RoundRatios((1.0,) * len(shares[widths[0]].per_round))
        chosen, cost = choose_width(kept, n, shares, multiple)
        groups.append(GroupWidth(gid, members, n, kept, shares, chosen, cost))
    candidate = rounded_plan(plan, groups, multiples)
    rounded = None
    if candidate.to_dict() != plan.to_dict():
        on_progress(0.85, "measuring the rounded plan")
        rounded = subject.evaluate(candidate)
    on_progress(1.0, "done")
    return Slowdown(speedup, evaluation.mac_ratio, tuple(groups), multiple, rounded)
