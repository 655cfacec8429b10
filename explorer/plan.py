"""PruningPlan: the plain, versioned JSON that says which layer loses how much.

The format is a contract (``../shared/DESIGN.md``)::

    {"format": "pruning-explorer/plan", "version": 1, "model": "zoo:digits-cnn",
     "method": "l1-unstructured", "scope": "local",
     "layers": {"features.0": 0.3, "classifier.0": {"ratio": 0.5, "method": "l2-structured"}}}

Unknown keys, methods and layers and ratios outside [0, 1) are errors, never ignored. A plan
replays on a fresh model: nothing in it is pickled.

An optional ``"schedule"`` object says *when* the pruning happens (``explorer.schedule_spec``, run
by ``explorer.schedules``), e.g.
``{"name": "iterative", "rounds": 3, "epochs": 4}``: the export replays it. Its options are
validated like the rest and kept as given (defaults are not written in), so it round-trips
exactly; a plan without one is written as before, byte for byte.

An optional top-level ``"round_to": N`` (local plans with a structured method) rounds the output
channels every pruned group keeps up to a multiple of N (never more than the group has), so that
dense CPU kernels see widths they run fast at (``explorer.latency``). A plan without it is written
as before, byte for byte.

An optional top-level ``"blocks": ["layer1.1", "layer3.1"]`` removes whole residual blocks (or
transformer layers): each becomes the identity, with every layer inside it (``explorer.blocks``
says which modules can); the layers of a removed block take no ratio. A plan without it is written
as before, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from explorer.errors import PlanError, ScheduleError
from explorer.methods import get_method
from explorer.schedule_spec import ScheduleSpec

__all__ = [
    "FORMAT",
    "MAX_ROUND_TO",
    "VERSION",
    "LayerRule",
    "PruningPlan",
    "check_block_names",
    "check_ratio",
    "check_round_to",
]

FORMAT = "pruning-explorer/plan"
VERSION = 1
SCOPES = ("local", "global")
MAX_ROUND_TO = 1024
_TOP_KEYS = {
    "format",
    "version",
    "model",
    "method",
    "scope",
    "layers",
    "ratio",
    "round_to",
    "schedule",
    "blocks",
}
_LAYER_KEYS = {"ratio", "method"}


def check_ratio(value: Any, where: str) -> float:
    """Return ``value`` as a float in [0, 1), or raise PlanError naming ``where`` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{where}: ratio must be a number in [0, 1), got {value!r}")
    ratio = float(value)
    if not math.isfinite(ratio) or not 0.0 <= ratio < 1.0:
        raise PlanError(f"{where}: ratio must be in [0, 1), got {value!r}")
    return ratio


def check_block_names(value: Any) -> tuple[str, ...]:
    """Return ``value`` (the plan's ``"blocks"``) as a tuple of distinct module names, or raise."""
    if not isinstance(value, (list, tuple)) or not value:
        raise PlanError(f"'blocks' must be a non-empty list of block names, got {value!r}")
    for name in value:
        if not isinstance(name, str) or not name:
            raise PlanError(f"'blocks': a block is named by its module's name, got {name!r}")
    if len(set(value)) != len(value):
        twice = sorted({n for n in value if list(value).count(n) > 1})
        raise PlanError(f"'blocks' names {twice} more than once")
    return tuple(value)


def check_round_to(value: Any, where: str) -> int:
    """Return ``value`` as an int in [1, 1024] (1: no rounding), or raise PlanError naming
    ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROUND_TO:
        raise PlanError(
            f"{where}: must be a whole number of channels in [1, {MAX_ROUND_TO}], got {value!r}"
        )
    return value


@dataclass(frozen=True)
class LayerRule:
    ratio: float
    method: str | None = None  # None: the plan's method


@dataclass(frozen=True)
class PruningPlan:
    """Per-layer pruning ratios. ``ratio`` is the top-level ratio of ``scope="global"`` plans."""

    method: str
    layers: Mapping[str, LayerRule] = field(default_factory=dict)
    scope: str = "local"
    ratio: float | None = None
    model: str | None = None
    round_to: int | None = (
        None  # kept channels rounded up to a multiple of it (local structured plans)
    )
    schedule: ScheduleSpec | None = None  # when to prune (None: one-shot, as before)
    blocks: tuple[str, ...] | None = None  # whole blocks removed (each becomes the identity)

    def __post_init__(self) -> None:
        get_method(self.method)  # the registry validates the names
        if self.blocks is not None:
            object.__setattr__(self, "blocks", check_block_names(self.blocks))
        if self.scope not in SCOPES:
            raise PlanError(f"scope must be one of {list(SCOPES)}, got {self.scope!r}")
        for name, rule in self.layers.items():
            check_ratio(rule.ratio, f"layer {name!r}")
            if rule.method is not None:
                get_method(rule.method)
                if self.scope == "global" and rule.method != self.method:
                    raise PlanError(
                        f"layer {name!r}: a global plan ranks one method; drop its 'method'"
                    )
        if self.scope == "global":
            if self.ratio is None:
                raise PlanError("a global plan needs a top-level 'ratio'")
            check_ratio(self.ratio, "global ratio")
        elif self.ratio is not None:
            raise PlanError("a top-level 'ratio' is only for scope 'global'; give per-layer ratios")
        if self.round_to is not None:
            check_round_to(self.round_to, "round_to")
            if self.scope == "global":
                raise PlanError(
                    "'round_to' is for local plans: a global ranking sets every group's count"
                    " itself"
                )
            methods = {self.method, *(r.method for r in self.layers.values() if r.method)}
            if not any(get_method(m).structured for m in methods):
                raise PlanError(
                    f"'round_to' rounds kept channel counts; {self.method} removes no channels"
                )

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def uniform(
        cls, method: str, names: Iterable[str], ratio: float, model: str | None = None
    ) -> PruningPlan:
        return cls(method=method, layers={n: LayerRule(ratio) for n in names}, model=model)

    @classmethod
    def from_dict(cls, data: Any) -> PruningPlan:
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise PlanError(f"unknown plan key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
        if data.get("format") != FORMAT:
            raise PlanError(f"'format' must be {FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != VERSION:
            raise PlanError(
                f"unsupported plan version {data.get('version')!r}; this tool reads {VERSION}"
            )
        if not isinstance(data.get("method"), str):
            raise PlanError(f"'method' must be a method name, got {data.get('method')!r}")
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise PlanError(f"'model' must be a model spec string, got {model!r}")
        raw_layers = data.get("layers", {})
        if not isinstance(raw_layers, dict):
            raise PlanError(
                f"'layers' must be an object of layer name -> ratio, got {raw_layers!r}"
            )
        layers: dict[str, LayerRule] = {}
        for name, value in raw_layers.items():
            if isinstance(value, dict):
                extra = set(value) - _LAYER_KEYS
                if extra:
                    raise PlanError(
                        f"layer {name!r}: unknown key(s) {sorted(extra)}; allowed:"
                        f" {sorted(_LAYER_KEYS)}"
                    )
                if "ratio" not in value:
                    raise PlanError(f"layer {name!r}: missing 'ratio'")
                method = value.get("method")
                if method is not None and not isinstance(method, str):
                    raise PlanError(f"layer {name!r}: 'method' must be a name, got {method!r}")
                layers[name] = LayerRule(check_ratio(value["ratio"], f"layer {name!r}"), method)
            else:
                layers[name] = LayerRule(check_ratio(value, f"layer {name!r}"))
        ratio = data.get("ratio")
        if ratio is not None:
            ratio = check_ratio(ratio, "global ratio")
        round_to = data.get("round_to")
        if round_to is not None:
            round_to = check_round_to(round_to, "'round_to'")
        blocks = check_block_names(data["blocks"]) if "blocks" in data else None
        schedule = None
        if "schedule" in data:
            try:
                schedule = ScheduleSpec.from_dict(data["schedule"])
            except ScheduleError as e:
                raise PlanError(str(e)) from None
        return cls(
            method=data["method"],
            layers=layers,
            scope=data.get("scope", "local"),
            ratio=ratio,
            model=model,
            round_to=round_to,
            schedule=schedule,
            blocks=blocks,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> PruningPlan:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise PlanError(f"the plan is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        try:
            text = Path(path).read_bytes()
        except OSError as e:
            raise PlanError(f"{path}: cannot read the plan ({e.strerror})") from None
        try:
            return cls.from_json(text)
        except PlanError as e:
            raise PlanError(f"{path}: {e}") from None

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        layers: dict[str, Any] = {}
        for name, rule in self.layers.items():
            if rule.method is None or rule.method == self.method:
                layers[name] = rule.ratio
            else:
                layers[name] = {"ratio": rule.ratio, "method": rule.method}
        d: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        if self.model is not None:
            d["model"] = self.model
        d.update(method=self.method, scope=self.scope)
        if self.ratio is not None:
            d["ratio"] = self.ratio
        d["layers"] = layers
        if self.schedule is not None:
            d["schedule"] = self.schedule.to_dict()
        if self.round_to is not None:
            d["round_to"] = self.round_to
        if self.blocks:
            d["blocks"] = list(self.blocks)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def key(self) -> str:
        """A short content hash (layer order does not matter): a cache key for this plan."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    # --- queries -------------------------------------------------------------------------------

    def method_of(self, layer: str) -> str:
        rule = self.layers.get(layer)
        return rule.method if rule is not None and rule.method else self.method

    def check_layers(self, names: Iterable[str]) -> None:
        """Raise PlanError if the plan names a layer that the model does not have."""
        known = list(names)
        unknown = [n for n in self.layers if n not in known]
        if unknown:
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            raise PlanError(
                f"unknown layer(s) {unknown} for this model; its prunable layers are: {shown}"
            )

    def with_layers(self, layers: Mapping[str, LayerRule]) -> PruningPlan:
        return replace(self, layers=dict(layers))

    def with_schedule(self, schedule: ScheduleSpec | None) -> PruningPlan:
        return replace(self, schedule=schedule)

    def with_round_to(self, round_to: int | None) -> PruningPlan:
        return replace(self, round_to=round_to)

    def with_blocks(self, blocks: Iterable[str] | None) -> PruningPlan:
        """The plan removing ``blocks`` as well (None or empty: no block removed)."""
        names = tuple(blocks or ())
        return replace(self, blocks=names or None)

    @property
    def is_empty(self) -> bool:
        if self.blocks:
            return False
        if self.scope == "global":
            return not self.layers or not self.ratio
        return all(rule.ratio == 0 for rule in self.layers.values())
