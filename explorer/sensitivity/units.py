"""What a scan prunes at a time (its units), and the checks of its arguments.

A unit is one layer for unstructured and N:M methods, and one dependency group for structured
methods (named by its first member): pruning one member alone would also remove the coupled
channels of the others, and a layer whose pruning alone changes nothing must not look robust.
"""

from __future__ import annotations

from collections.abc import Sequence

from explorer.errors import PlanError
from explorer.methods import Method, get_method
from explorer.plan import check_ratio
from explorer.subject import Subject

__all__ = ["DEFAULT_RATIOS", "check_ratios", "check_round_to", "select", "units"]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def units(subject: Subject, method: str) -> dict[str, list[str]]:
    """What a scan prunes at a time: every layer, or every dependency group for structured methods,
    that the method applies to (a group by its first member)."""
    m = get_method(method)
    inventory = subject.inventory
    if m.structured:
        if inventory.structured_error:
            raise PlanError(f"{method}: {inventory.structured_error}")
        return {
            gid: list(members)
            for gid, members in inventory.groups.items()
            if m.applies_to(members[0], inventory) is None
        }
    return {name: [name] for name in subject.layer_names if m.applies_to(name, inventory) is None}


def select(subject: Subject, method: str, layers: Sequence[str] | None) -> dict[str, list[str]]:
    todo = units(subject, method)
    if layers is None:
        return todo
    m = get_method(method)
    for name in layers:  # a unit the model has but the method cannot prune: say why
        if (
            name not in todo
            and name in subject.layer_names
            and (why := m.applies_to(name, subject.inventory))
        ):
            raise PlanError(f"{method} cannot prune {name!r}: {why}")
    missing = [n for n in layers if n not in todo]
    if missing:
        kind = "group" if m.structured else "layer"
        raise PlanError(f"unknown {kind}(s) {missing} for {method}; choose from {list(todo)}")
    return {n: todo[n] for n in layers}


def check_ratios(ratios: Sequence[float]) -> list[float]:
    return sorted({check_ratio(r, "sensitivity ratio") for r in ratios} - {0.0})


def check_round_to(method: Method, round_to: int | None) -> int | None:
    if round_to is None or round_to == 1:
        return None
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise PlanError(f"round_to must be a positive integer, got {round_to!r}")
    if not method.structured:
        raise PlanError(f"round_to rounds kept channel counts; {method.name} removes no channels")
    return round_to
