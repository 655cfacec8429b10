"""The schedules a plan can name and their options: what the plan's ``"schedule"`` object holds.

Plain data, validated on construction (``ScheduleError`` names the option and the value); running
a schedule is :mod:`explorer.schedules`' concern. Kept apart so that the plan can read and write
its schedule without importing training code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from explorer.errors import ScheduleError

__all__ = ["SCHEDULES", "Option", "ScheduleInfo", "ScheduleSpec", "schedule_names"]


# --- the schedules and their options --------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One option of a schedule, as it appears in the plan's ``"schedule"`` object."""

    name: str
    kind: type  # int, float, str or bool
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None  # inclusive
    choices: tuple[str, ...] = ()

    def check(self, value: Any, where: str) -> Any:
        """``value`` if valid for this option, else ScheduleError naming ``where`` and the value."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ScheduleError(f"{where}: {self.name!r} must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if value not in self.choices:
                raise ScheduleError(
                    f"{where}: {self.name!r} must be one of {list(self.choices)}, got {value!r}"
                )
            return value
        ok_type = isinstance(value, int) if self.kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            kind = "an integer" if self.kind is int else "a number"
            raise ScheduleError(f"{where}: {self.name!r} must be {kind}, got {value!r}")
        if (
            not math.isfinite(value)
            or (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
        ):
            bounds = (
                f">= {self.minimum:g}"
                if self.maximum is None
                else f"in [{self.minimum:g}, {self.maximum:g}]"
            )
            raise ScheduleError(f"{where}: {self.name!r} must be {bounds}, got {value!r}")
        return value


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    summary: str
    options: tuple[Option, ...]
    from_scratch: bool = False  # trains a fresh initialisation of the architecture
    masks_only: bool = False  # keeps masks through training: no channel removal

    def option(self, name: str) -> Option:
        return next(o for o in self.options if o.name == name)

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}


def _lr(default: float) -> Option:
    return Option(
        "lr",
        float,
        default,
        "Adam learning rate (cosine schedule to 0 over each training)",
        minimum=1e-8,
    )


_SEED = Option("seed", int, 0, "seeds initialisation, batch order and random methods", minimum=0)
_RAMP = Option(
    "ramp",
    str,
    "geometric",
    "per-round target: geometric (the same share of what is left each round) or linear",
    choices=("geometric", "linear"),
)

SCHEDULES: dict[str, ScheduleInfo] = {
    s.name: s
    for s in [
        ScheduleInfo(
            "one-shot",
            "prune once, then fine-tune",
            (
                Option("epochs", int, 0, "fine-tuning epochs after pruning (0: none)", minimum=0),
                Option("distill", bool, False, "fine-tune with the dense model as teacher"),
                _lr(3e-3),
                _SEED,
            ),
        ),
        ScheduleInfo(
            "iterative",
            "k rounds of prune, then fine-tune (Han et al. 2015)",
            (
                Option("rounds", int, 3, "pruning rounds", minimum=1),
                Option("epochs", int, 2, "fine-tuning epochs after each round", minimum=1),
                _RAMP,
                _lr(1e-3),
                _SEED,
            ),
        ),
        ScheduleInfo(
            "gradual",
            "prune while training on Zhu & Gupta's cubic schedule",
            (
                Option(
                    "epochs",
                    int,
                    5,
                    "training epochs in all (pruning, then recovery at the final sparsity)",
                    minimum=1,
                ),
                Option(
                    "frequency", int, 10, "optimizer steps between mask updates (Δt)", minimum=1
                ),
                Option(
                    "start",
                    float,
                    0.0,
                    "where pruning starts (t0), as a fraction of the training steps",
                    0.0,
                    1.0,
                ),
                Option(
                    "end",
                    float,
                    0.75,
                    "where pruning ends at the latest (t0 + nΔt), as a fraction",
                    0.0,
                    1.0,
                ),
                Option(
                    "initial_sparsity",
                    float,
                    0.0,
                    "s_i: the sparsity of the first update (capped at each layer's ratio)",
                    0.0,
                    0.99,
                ),
                _lr(1e-3),
                _SEED,
            ),
            masks_only=True,
        ),
        ScheduleInfo(
            "snip",
            "prune a fresh initialisation by connection sensitivity, then train it (SNIP)",
            (
                Option(
                    "epochs",
                    int,
                    10,
                    "training epochs of the sparse network from scratch",
                    minimum=1,
                ),
                Option(
                    "batch",
                    int,
                    100,
                    "training samples of the one batch the saliency is computed on",
                    minimum=1,
                ),
                _lr(2e-3),
                _SEED,
            ),
            from_scratch=True,
            masks_only=True,
        ),
        ScheduleInfo(
            "lottery",
            "train, prune, rewind the survivors, retrain; k rounds (lottery ticket)",
            (
                Option(
                    "rounds",
                    int,
                    3,
                    "prune-rewind-retrain rounds after the first training",
                    minimum=1,
                ),
                Option(
                    "epochs",
                    int,
                    5,
                    "epochs of every training (the first and each retraining)",
                    minimum=1,
                ),
                Option(
                    "rewind",
                    int,
                    0,
                    "rewind to the values after this many steps of the first training "
                    "(0: the initial values)",
                    minimum=0,
                ),
                Option(
                    "reinit",
                    bool,
                    False,
                    "re-initialise the survivors at random instead of rewinding (the control)",
                ),
                _RAMP,
                _lr(2e-3),
                _SEED,
            ),
            from_scratch=True,
            masks_only=True,
        ),
        ScheduleInfo(
            "regularized",
            "train with a sparsity-inducing penalty, prune, fine-tune",
            (
                Option("epochs", int, 5, "training epochs with the penalty", minimum=1),
                Option(
                    "finetune_epochs",
                    int,
                    2,
                    "fine-tuning epochs after pruning (0: none)",
                    minimum=0,
                ),
                Option(
                    "penalty",
                    str,
                    "auto",
                    "bn-l1 (network slimming), group-lasso (output channels), or auto",
                    choices=("auto", "bn-l1", "group-lasso"),
                ),
                Option("strength", float, 1e-3, "the penalty's weight λ in the loss", minimum=0.0),
                _lr(1e-3),
                _SEED,
            ),
        ),
    ]
}


def schedule_names() -> list[str]:
    return list(SCHEDULES)


def _info(name: Any) -> ScheduleInfo:
    try:
        return SCHEDULES[name]
    except (KeyError, TypeError):
        raise ScheduleError(f"unknown schedule {name!r}; choose from {schedule_names()}") from None


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as the plan records it: its name and the options given (defaults not filled in,
    so the plan's ``"schedule"`` object round-trips exactly)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        info = _info(self.name)
        allowed = [o.name for o in info.options]
        seen = set()
        for key, value in self.options:
            if key not in allowed:
                raise ScheduleError(
                    f"schedule {self.name!r}: unknown option {key!r}; allowed: {allowed}"
                )
            if key in seen:
                raise ScheduleError(f"schedule {self.name!r}: option {key!r} given twice")
            seen.add(key)
            info.option(key).check(value, f"schedule {self.name!r}")
        merged = {**info.defaults(), **dict(self.options)}
        if self.name == "gradual" and merged["end"] < merged["start"]:
            raise ScheduleError(
                f"schedule 'gradual': 'end' ({merged['end']!r}) must not come before 'start' "
                f"({merged['start']!r})"
            )

    @classmethod
    def make(cls, name: str, **options: Any) -> ScheduleSpec:
        return cls(name, tuple(options.items()))

    @classmethod
    def from_dict(cls, data: Any) -> ScheduleSpec:
        if not isinstance(data, dict):
            raise ScheduleError(
                '\'schedule\' must be an object like {"name": "iterative", "rounds": 3}, '
                f"got {data!r}"
            )
        if "name" not in data:
            raise ScheduleError(f"'schedule' needs a 'name' (one of {schedule_names()})")
        return cls(data["name"], tuple((k, v) for k, v in data.items() if k != "name"))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.options)}

    def with_options(self, **options: Any) -> ScheduleSpec:
        """A copy with these options set (others kept, in their order)."""
        merged = dict(self.options)
        merged.update(options)
        return ScheduleSpec(self.name, tuple(merged.items()))

    @property
    def info(self) -> ScheduleInfo:
        return SCHEDULES[self.name]

    def resolved(self) -> dict[str, Any]:
        """Every option, the defaults filled in."""
        return {**self.info.defaults(), **dict(self.options)}

    def describe(self) -> str:
        o = self.resolved()
        if self.name == "one-shot":
            return "one-shot" + (
                f", then {o['epochs']} fine-tuning epoch(s)" if o["epochs"] else ", no fine-tuning"
            )
        if self.name == "iterative":
            return f"iterative: {o['rounds']} round(s) x {o['epochs']} epoch(s), {o['ramp']} ramp"
        if self.name == "gradual":
            return (
                f"gradual: {o['epochs']} epoch(s), masks every {o['frequency']} steps from "
                f"{o['start']:.0%} to {o['end']:.0%} of training"
            )
        if self.name == "snip":
            return f"SNIP at initialisation, then {o['epochs']} epoch(s) from scratch"
        if self.name == "lottery":
            how = (
                "random re-initialisation"
                if o["reinit"]
                else (f"rewind to step {o['rewind']}" if o["rewind"] else "rewind to init")
            )
            return (
                f"lottery: {o['epochs']} epoch(s), then {o['rounds']} round(s) of prune, {how},"
                " retrain"
            )
        return (
            f"regularized ({o['penalty']}, λ={o['strength']:g}): {o['epochs']} epoch(s), prune, "
            f"{o['finetune_epochs']} fine-tuning epoch(s)"
        )
