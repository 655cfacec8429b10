"""Plans other tools can read: NNI's ``config_list`` and Torch-Pruning's ``pruning_ratio_dict``.

``to_nni(plan)`` writes NNI v3's config list: one entry per distinct ratio, with the layers of that
ratio under ``op_names`` and the ratio as ``sparse_ratio`` (a global plan is one entry with a
``global_group_id``: NNI then ranks all its layers together, as our global scope does).
``from_nni(config, inventory, method)`` reads a config list back into a plan, checked against the
model's layers like any plan: ``op_types``, ``op_names_re`` and the ``exclude_*`` keys (and the
legacy ``exclude``, ``sparsity``, ``sparsity_per_layer``, ``total_sparsity``, ``op_partial_names``)
select layers; an entry with a key this tool cannot honour (``sparse_threshold``,
``max_sparse_ratio``, ``target_settings``, a block ``granularity``...) or a layer two entries give
different ratios is refused with a message naming the entry. Unknown layers are errors, not
ignored (NNI ignores them; a plan does not).

``to_torch_pruning(plan)`` writes ``{"pruning_ratio_dict": {layer: ratio}}`` for a structured plan,
with the importance, ``global_pruning`` and ``round_to`` that reproduce it in Torch-Pruning (the
importance of the method's counterpart there: channel norms, group Taylor, batch-norm scale; null,
and the note says so, for a criterion Torch-Pruning does not have).

``sparse_ratio`` means what a plan's ratio means: the share of a layer's weights zeroed
(unstructured) or of its output channels removed (structured, NNI's ``out_channel``
granularity). A config list does not say which criterion ranks the weights: NNI picks it by the
pruner class (``nni_pruner`` names the one that matches the plan's method), and reading one back
takes ``method``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from explorer.errors import PlanError
from explorer.inspect import Inventory
from explorer.methods import Method, get_method
from explorer.methods.channel_norms import ChannelNorm
from explorer.plan import LayerRule, PruningPlan, check_ratio

__all__ = [
    "GLOBAL_GROUP",
    "from_nni",
    "load_config_list",
    "nni_pruner",
    "to_nni",
    "to_torch_pruning",
    "torch_pruning_note",
]

GLOBAL_GROUP = "pruning-explorer-global"
_SELECT = {
    "op_names",
    "op_types",
    "op_names_re",
    "op_partial_names",
    "exclude_op_names",
    "exclude_op_types",
    "exclude_op_names_re",
    "exclude",
}
_RATIO = (
    "sparse_ratio",
    "sparsity_per_layer",
    "sparsity",
    "total_sparsity",
)  # the first three: per layer
_ACCEPTED = _SELECT | set(_RATIO) | {"global_group_id", "granularity", "target_names"}
_WHY_NOT = {
    "sparse_threshold": "a threshold on the pruner's own metric, not a ratio",
    "max_sparse_ratio": "a bound for NNI's own allocation; give the ratio itself",
    "min_sparse_ratio": "a bound for NNI's own allocation; give the ratio itself",
    "max_sparsity_per_layer": "a bound for NNI's own allocation; give the ratio itself",
    "dependency_group_id": "coupled layers are found from the model's graph (DepGraph); drop it",
    "target_settings": "per-target settings; give 'sparse_ratio' for the layer's weight",
    "apply_method": "masks are applied by zeroing or removing here; drop the key",
    "internal_metric_block": "a block metric of NNI's own pruners",
    "quant_dtype": "a quantization setting (this reads pruning config lists)",
    "quant_types": "a quantization setting (this reads pruning config lists)",
    "quant_bits": "a quantization setting (this reads pruning config lists)",
}


# --- plan -> NNI ---------------------------------------------------------------------------------


def _single_method(plan: PruningPlan, tool: str) -> None:
    if plan.blocks:
        raise PlanError(
            f"{tool}'s configuration has no way to remove whole blocks; the plan removes"
            f" {list(plan.blocks)}: drop 'blocks' to convert the per-layer ratios"
        )
    mixed = sorted({n for n in plan.layers if plan.method_of(n) != plan.method})
    if mixed:
        raise PlanError(
            f"{tool} runs one criterion per config: layer(s) {mixed} use another method than the "
            f"plan's {plan.method!r}; split the plan by method"
        )


def to_nni(plan: PruningPlan) -> list[dict[str, Any]]:
    """NNI v3's ``config_list`` for ``plan``: one entry per distinct ratio (layers at 0 left out).

    Raises:
        PlanError: the plan mixes methods (a config list has no per-layer criterion).
    """
    _single_method(plan, "NNI")
    if plan.scope == "global":
        if plan.is_empty:
            return []
        return [
            {
                "op_names": list(plan.layers),
                "sparse_ratio": plan.ratio,
                "global_group_id": GLOBAL_GROUP,
            }
        ]
    by_ratio: dict[float, list[str]] = {}
    for name, rule in plan.layers.items():
        if rule.ratio > 0:
            by_ratio.setdefault(rule.ratio, []).append(name)
    return [{"op_names": names, "sparse_ratio": ratio} for ratio, names in by_ratio.items()]


def nni_pruner(method: str) -> str:
    """The NNI v3 pruner whose criterion matches ``method``, with what differs, as one sentence."""
    m = get_method(method)
    if isinstance(m, ChannelNorm) and m.p in (1, 2):
        return f"nni.compression.pruning.L{m.p}NormPruner (output channels by L{m.p} norm)"
    if m.name == "taylor-structured":
        return (
            "nni.compression.pruning.TaylorPruner (output channels by first-order Taylor "
            "importance, with gradients of training data)"
        )
    if m.structured:
        return (
            f"no NNI pruner ranks channels as {m.name} does; L1NormPruner removes the same share "
            "of output channels by L1 norm"
        )
    if m.name == "l1-unstructured":
        return "nni.compression.pruning.LevelPruner (single weights by magnitude)"
    if m.kind == "semi-structured":
        return (
            "NNI has no N:M pruner: LevelPruner at sparse_ratio 0.5 zeroes half the weights by "
            "magnitude, "
            "but not in the 2-of-4 pattern"
        )
    return (
        f"no NNI pruner ranks weights as {method} does; LevelPruner zeroes the same share by "
        "magnitude"
    )


# --- NNI -> plan ---------------------------------------------------------------------------------


def load_config_list(path: str | Path) -> list[Any]:
    """A config list read from a JSON file (a list, or an object with a ``config_list`` key)."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as e:
        raise PlanError(f"{path}: cannot read the config list ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise PlanError(f"{path}: not valid JSON: {e}") from None
    if isinstance(data, dict) and "config_list" in data:
        data = data["config_list"]
    if not isinstance(data, list):
        raise PlanError(
            f"{path}: a config list is a JSON list of objects, got {type(data).__name__}"
        )
    return data


def _names(entry: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key)
    if value is None:
        return []
    if (
        isinstance(value, str)
        or not isinstance(value, list)
        or not all(isinstance(v, str) for v in value)
    ):
        raise PlanError(f"{where}: '{key}' must be a list of strings, got {value!r}")
    return value


def _regexes(entry: Mapping[str, Any], key: str, where: str) -> list[re.Pattern[str]]:
    out = []
    for text in _names(entry, key, where):
        try:
            out.append(re.compile(text))
        except re.error as e:
            raise PlanError(
                f"{where}: '{key}' has a bad regular expression {text!r} ({e})"
            ) from None
    return out


def _select(entry: Mapping[str, Any], inventory: Inventory, where: str) -> list[str]:
    """The layers an entry selects, in model order (NNI's rules: names and patterns, filtered by
    types, minus the exclusions)."""
    names, types = _names(entry, "op_names", where), _names(entry, "op_types", where)
    partial = _names(entry, "op_partial_names", where)
    patterns = _regexes(entry, "op_names_re", where)
    known = inventory.names
    unknown = [n for n in names if n not in known]
    if unknown:
        shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise PlanError(
            f"{where}: unknown layer(s) {unknown} for this model; its prunable layers are: {shown}"
        )
    by_name = any(entry.get(k) is not None for k in ("op_names", "op_names_re", "op_partial_names"))
    if not by_name and not types:
        raise PlanError(f"{where}: selects no layer (give 'op_names', 'op_names_re' or 'op_types')")
    chosen = [
        n
        for n in known
        if not by_name
        or n in names
        or any(p in n for p in partial)
        or any(p.fullmatch(n) for p in patterns)
    ]
    if types and "default" not in types:
        chosen = [n for n in chosen if inventory[n].type in types]
    drop_names = set(_names(entry, "exclude_op_names", where))
    drop_types = set(_names(entry, "exclude_op_types", where))
    drop_patterns = _regexes(entry, "exclude_op_names_re", where)
    return [
        n
        for n in chosen
        if n not in drop_names
        and inventory[n].type not in drop_types
        and not any(p.fullmatch(n) for p in drop_patterns)
    ]


def _ratio(entry: Mapping[str, Any], where: str) -> tuple[float, bool] | None:
    """(ratio, ranked across the entry's layers) or None for an entry without a ratio."""
    given = [k for k in _RATIO if k in entry]
    if len(given) > 1:
        raise PlanError(f"{where}: give one of {given}, not several")
    if not given:
        return None
    key = given[0]
    return check_ratio(entry[key], f"{where}: '{key}'"), key == "total_sparsity"


def from_nni(
    config: list[Any], inventory: Inventory, method: str | None = None, model: str | None = None
) -> PruningPlan:
    """The plan a config list stands for, checked against ``inventory``'s layers.

    Args:
        method: the plan's method; by default ``l1-structured`` when the entries ask for
            ``out_channel`` granularity, ``l1-unstructured`` otherwise.
        model: the plan's ``model`` field.

    Raises:
        PlanError: naming the entry: an unknown key or layer, a setting this tool cannot honour,
            a bad ratio, a layer given two ratios, a mix of global and per-layer entries, or a
            structured method on a layer whose output channels cannot be removed.
    """
    if not isinstance(config, list):
        raise PlanError(f"a config list is a JSON list of objects, got {type(config).__name__}")
    out_channel = False
    rules: dict[str, tuple[float, int]] = {}  # layer -> (ratio, entry index)
    excluded: set[str] = set()
    groups: dict[str, tuple[float, int]] = {}  # global group id -> (ratio, first entry)
    grouped: set[str] = set()
    for i, entry in enumerate(config):
        where = f"config_list entry {i}"
        if not isinstance(entry, dict):
            raise PlanError(f"{where}: must be an object, got {entry!r}")
        for key in entry:
            if key in _WHY_NOT:
                raise PlanError(f"{where}: '{key}' is not supported ({_WHY_NOT[key]})")
            if key not in _ACCEPTED:
                raise PlanError(f"{where}: unknown key {key!r}; this reads {sorted(_ACCEPTED)}")
        granularity = entry.get("granularity", "default")
        if granularity not in ("default", "out_channel"):
            raise PlanError(
                f"{where}: granularity {granularity!r} is not supported (only 'default' and "
                "'out_channel': weights, or whole output channels)"
            )
        out_channel |= granularity == "out_channel"
        targets = entry.get("target_names")
        if targets is not None and not (
            isinstance(targets, list) and "weight" in targets and set(targets) <= {"weight", "bias"}
        ):
            raise PlanError(
                f"{where}: target_names {targets!r} is not supported (a plan prunes weights; "
                "['weight'] or ['weight', 'bias'])"
            )
        layers = _select(entry, inventory, where)
        exclude = entry.get("exclude", False)
        if not isinstance(exclude, bool):
            raise PlanError(f"{where}: 'exclude' must be true or false, got {exclude!r}")
        ratio = _ratio(entry, where)
        if exclude:
            if ratio is not None:
                raise PlanError(f"{where}: 'exclude' and a ratio cannot be in one entry")
            excluded.update(layers)
            continue
        if ratio is None:
            raise PlanError(
                f"{where}: no ratio (give 'sparse_ratio' in [0, 1), or 'exclude': true)"
            )
        value, ranked = ratio
        group = entry.get("global_group_id")
        if ranked:  # legacy total_sparsity: the entry's layers ranked together
            group = f"total_sparsity of entry {i}" if group is None else group
        if group is not None:
            first = groups.setdefault(str(group), (value, i))
            if first[0] != value:
                raise PlanError(
                    f"{where}: global group {group!r} has ratio {value} here and {first[0]} in "
                    f"entry {first[1]}; one group has one ratio"
                )
            grouped.update(layers)
        for name in layers:
            if name in rules and rules[name][0] != value:
                raise PlanError(
                    f"{where}: layer {name!r} gets ratio {value}, entry {rules[name][1]} gave it "
                    f"{rules[name][0]}; NNI versions disagree on which wins, so give it once"
                )
            rules.setdefault(name, (value, i))
    for name in excluded:
        rules.pop(name, None)
    method = method or ("l1-structured" if out_channel else "l1-unstructured")
    m = get_method(method)
    order = {n: k for k, n in enumerate(inventory.names)}
    names = sorted(rules, key=order.__getitem__)
    if m.structured:
        for name in names:
            if inventory[name].group is None:
                why = (
                    inventory.structured_error
                    or inventory[name].note
                    or "not in a dependency group"
                )
                raise PlanError(
                    f"config_list entry {rules[name][1]}: layer {name!r} cannot lose output "
                    "channels "
                    f"with {method} ({why})"
                )
    if groups:
        if len(groups) > 1 or set(names) - grouped:
            raise PlanError(
                "a plan has one scope: these entries mix global groups "
                f"{sorted(groups)} with per-layer ratios or other groups; give one global group "
                "or none"
            )
        ratio = next(iter(groups.values()))[0]
        return PruningPlan(
            method=method,
            layers={n: LayerRule(ratio) for n in names},
            scope="global",
            ratio=ratio,
            model=model,
        )
    return PruningPlan(
        method=method, layers={n: LayerRule(rules[n][0]) for n in names}, model=model
    )


# --- plan -> Torch-Pruning -----------------------------------------------------------------------


def to_torch_pruning(
    plan: PruningPlan, inventory: Inventory | None = None, round_to: int | None = None
) -> dict[str, Any]:
    """Torch-Pruning settings that reproduce a structured ``plan``: ``pruning_ratio_dict``
    (layer name -> ratio), the importance, ``global_pruning``, ``pruning_ratio`` and ``round_to``.

    A local plan lists its layers (each layer of a dependency group at the group's ratio: the
    largest of its members, as this tool prunes it); a global plan is Torch-Pruning's global
    pruning at the plan's ratio, with an empty dict (a dict entry would make its layer a scope of
    its own). With ``inventory``, ``ignored_layers`` lists the prunable layers the plan leaves
    whole (for a global plan, those Torch-Pruning must not rank).

    Raises:
        PlanError: an unstructured or N:M plan (Torch-Pruning removes channels), or mixed methods.
    """
    _single_method(plan, "Torch-Pruning")
    m = get_method(plan.method)
    if not m.structured:
        raise PlanError(
            f"Torch-Pruning removes channels; {plan.method!r} only zeroes weights: use a "
            "structured "
            "method, or convert to NNI's config list instead"
        )
    is_global = plan.scope == "global"
    ratios = {} if is_global else {n: r.ratio for n, r in plan.layers.items() if r.ratio > 0}
    if inventory is not None and not is_global:
        for members in inventory.groups.values():
            listed = [n for n in members if n in ratios]
            if listed:
                top = max(ratios[n] for n in listed)
                ratios.update({n: top for n in members})
    out: dict[str, Any] = {
        "pruning_ratio_dict": ratios,
        "pruning_ratio": float(plan.ratio or 0.0) if is_global else 0.0,
        "global_pruning": is_global,
        "importance": _importance(m, plan.scope),
        "round_to": round_to,
    }
    if inventory is not None:
        kept = set(plan.layers) if is_global else set(ratios)
        out["ignored_layers"] = [n for n in inventory.names if n not in kept]
    out["note"] = torch_pruning_note(plan, round_to)
    return out


def torch_pruning_note(plan: PruningPlan, round_to: int | None = None) -> str:
    """How to use the file with Torch-Pruning (keys are module names; the pruner takes modules)."""
    m = get_method(plan.method)
    where = (
        "pruning_ratio_dict={model.get_submodule(name): ratio for the file's layers}, "
        "pruning_ratio=0.0 (a "
        "layer not listed stays whole; the default would prune it at 0.5)"
        if plan.scope == "local"
        else f"pruning_ratio={plan.ratio}, global_pruning=True"
    )
    rounding = (
        " Rounding: Torch-Pruning removes ceil(n * ratio) of n channels where this tool removes "
        "floor(n * ratio) (n: a group's channels, or all ranked channels of a global plan): "
        "the two "
        "differ "
        "by one channel where n * ratio is not a whole number."
    )
    importance = _importance(m, plan.scope)
    if importance is None:
        importance = "<an importance of your choice>"
        rounding += (
            f" No Torch-Pruning importance ranks channels as {m.name} does: the ratios hold, "
            "the channels chosen may differ."
        )
    elif m.needs_data:
        rounding += (
            f" {m.name} reads data: Torch-Pruning's importance needs the same (for Taylor, "
            "loss.backward() on the calibration data before .step())."
        )
    return (
        "Torch-Pruning: tp.pruner.MetaPruner(model, example_inputs, importance="
        f"{importance}, {where}, round_to={round_to}, "
        "ignored_layers=[the modules of ignored_layers]), then .step(). A dependency group loses "
        "the "
        "same channels in all its layers." + rounding
    )


def _importance(method: Method, scope: str) -> str | None:
    """The Torch-Pruning importance that ranks channels as ``method`` does (None: none does)."""
    norm = "normalizer='mean'" if scope == "global" else ""
    if isinstance(method, ChannelNorm):
        return f"tp.importance.GroupMagnitudeImportance(p={method.p}" + (
            f", {norm})" if norm else ")"
        )
    counterpart = {
        "taylor-structured": "GroupTaylorImportance",
        "bn-scale-structured": "BNScaleImportance",
    }
    if method.name in counterpart:
        return f"tp.importance.{counterpart[method.name]}({norm})"
    return None
