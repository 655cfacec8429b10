"""PruningPlan: the plain, versioned JSON that says which layer loses how much.

The format is a contract (``../shared/DESIGN.md``)::

    {"format": "pruning-explorer/plan", "version": 1, "model": "zoo:digits-cnn",
     "method": "l1-unstructured", "scope": "local",
     "layers": {"features.0": 0.3, "classifier.0": {"ratio": 0.5, "method": "l2-structured"}}}

Unknown keys, methods and layers and ratios outside [0, 1) are errors, never ignored. A plan
replays on a fresh model: nothing in it is pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from explorer.errors import PlanError
from explorer.methods import get_method

__all__ = ["FORMAT", "VERSION", "LayerRule", "PruningPlan", "check_ratio"]

FORMAT = "pruning-explorer/plan"
VERSION = 1
SCOPES = ("local", "global")
_TOP_KEYS = {"format", "version", "model", "method", "scope", "layers", "ratio"}
_LAYER_KEYS = {"ratio", "method"}


def check_ratio(value: Any, where: str) -> float:
    """Return ``value`` as a float in [0, 1), or raise PlanError naming ``where`` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{where}: ratio must be a number in [0, 1), got {value!r}")
    ratio = float(value)
    if not math.isfinite(ratio) or not 0.0 <= ratio < 1.0:
        raise PlanError(f"{where}: ratio must be in [0, 1), got {value!r}")
    return ratio


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

    def __post_init__(self) -> None:
        get_method(self.method)  # the registry validates the names
        if self.scope not in SCOPES:
            raise PlanError(f"scope must be one of {list(SCOPES)}, got {self.scope!r}")
        for name, rule in self.layers.items():
            check_ratio(rule.ratio, f"layer {name!r}")
            if rule.method is not None:
                get_method(rule.method)
                if self.scope == "global" and rule.method != self.method:
                    raise PlanError(f"layer {name!r}: a global plan ranks one method; drop its 'method'")
        if self.scope == "global":
            if self.ratio is None:
                raise PlanError("a global plan needs a top-level 'ratio'")
            check_ratio(self.ratio, "global ratio")
        elif self.ratio is not None:
            raise PlanError("a top-level 'ratio' is only for scope 'global'; give per-layer ratios")

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def uniform(cls, method: str, names: Iterable[str], ratio: float, model: str | None = None) -> PruningPlan:
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
            raise PlanError(f"unsupported plan version {data.get('version')!r}; this tool reads {VERSION}")
        if not isinstance(data.get("method"), str):
            raise PlanError(f"'method' must be a method name, got {data.get('method')!r}")
        model = data.get("model")
        if model is not None and not isinstance(model, str):
            raise PlanError(f"'model' must be a model spec string, got {model!r}")
        raw_layers = data.get("layers", {})
        if not isinstance(raw_layers, dict):
            raise PlanError(f"'layers' must be an object of layer name -> ratio, got {raw_layers!r}")
        layers: dict[str, LayerRule] = {}
        for name, value in raw_layers.items():
            if isinstance(value, dict):
                extra = set(value) - _LAYER_KEYS
                if extra:
                    raise PlanError(f"layer {name!r}: unknown key(s) {sorted(extra)}; allowed: {sorted(_LAYER_KEYS)}")
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
        return cls(method=data["method"], layers=layers, scope=data.get("scope", "local"),
                   ratio=ratio, model=model)

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
            raise PlanError(f"unknown layer(s) {unknown} for this model; its prunable layers are: {shown}")

    def with_layers(self, layers: Mapping[str, LayerRule]) -> PruningPlan:
        return replace(self, layers=dict(layers))

    @property
    def is_empty(self) -> bool:
        if self.scope == "global":
            return not self.layers or not self.ratio
        return all(rule.ratio == 0 for rule in self.layers.values())
