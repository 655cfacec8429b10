"""The dense model's exported ONNX file as a template: the file a pruned copy would export to,
written
without running the exporter again.

Exporting a 224-px ResNet takes seconds (tracing, ONNX passes, constant folding); a pruned copy of a
model exports to the same graph with other initializer values (zeroed weights) or shapes (removed
channels). The template exports the dense model once and finds, for every initializer, the torch
tensors it is computed from: a parameter or buffer as it is, a transposed matrix, or a convolution
folded with the batch norm after it (what the TorchScript exporter does in eval mode:
``w * gamma / sqrt(var + eps)``, ``(b - mean) * gamma / sqrt(var + eps) + beta``). Each such recipe
is accepted only if, evaluated on the dense model, it reproduces the exported initializer bit for
bit; :meth:`OnnxTemplate.render` then evaluates the same recipes on the pruned copy. Initializers
no recipe explains are constants of the graph (shape tensors, ...).

A pruned model the template cannot vouch for (a changed tensor no recipe reads; a tensor used by
two recipes whose values collide; a changed shape on a graph the template has not seen shrink) is
refused with :class:`TemplateMiss`, and the caller exports for real. Tests check the rendered
bytes against ``export_onnx`` of the pruned model, byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.capabilities import ort_ops
from explorer.inputs import run_model
from explorer.models.outputs import logits_of
from explorer.runtime import INPUT_NAME, OUTPUT_NAME, OrtModel, export_onnx, torchscript_export
from explorer.tolerance import relative_error

log = logging.getLogger(__name__)

__all__ = ["OnnxTemplate", "TemplateMiss", "template_for", "why_untemplated", "write_onnx"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class TemplateMiss(Exception):
    """The template cannot write this model's file exactly; export it for real."""


@dataclass(frozen=True)
class _Recipe:
    """How one initializer is computed from the model: ``kind`` and the state-dict names it
    reads."""

    kind: str  # "param", "transposed", "fold_weight", "fold_bias", "fold_bias_nobias"
    sources: tuple[
        str, ...
    ]  # state-dict names: the tensor, or conv weight/bias then bn weight/bias/mean/var

    def __call__(self, state: dict[str, torch.Tensor], eps: dict[str, float]) -> np.ndarray:
        with torch.no_grad():
            if self.kind == "param":
                t = state[self.sources[0]]
            elif self.kind == "transposed":
                t = state[self.sources[0]].t()
            else:
                *conv, gamma, beta, mean, var = (state[s] for s in self.sources)
                scale = gamma / torch.sqrt(var + eps[self.sources[-1]])
                if self.kind == "fold_weight":
                    w = conv[0]
                    t = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
                elif self.kind == "fold_bias":
                    t = (conv[0] - mean) * scale + beta
                else:  # a convolution without bias
                    t = beta - mean * scale
            return t.detach().contiguous().numpy()


def _digest(a: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _conv_bn_pairs(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, batch norm) pairs where the batch norm runs right after the convolution, on as many
    channels: the pairs the exporter may have folded (checked bit for bit afterwards)."""
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=name: order.append(name))
        for name, m in model.named_modules()
        if isinstance(m, (*_CONVS, *_NORMS))
    ]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    pairs = []
    for a, b in zip(order, order[1:], strict=False):
        conv, norm = modules[a], modules[b]
        if (
            isinstance(conv, _CONVS)
            and isinstance(norm, _NORMS)
            and norm.affine
            and norm.track_running_stats
            and norm.num_features == conv.out_channels
        ):
            pairs.append((a, b))
    return pairs


def _candidates(model: nn.Module, pairs: list[tuple[str, str]]) -> list[_Recipe]:
    state = dict(model.state_dict(keep_vars=False))
    out = [_Recipe("param", (n,)) for n, t in state.items() if t.dtype.is_floating_point]
    out += [
        _Recipe("transposed", (n,))
        for n, t in state.items()
        if t.dtype.is_floating_point and t.dim() == 2
    ]
    for conv, bn in pairs:
        stats = (f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var")
        out.append(_Recipe("fold_weight", (f"{conv}.weight", *stats)))
        if f"{conv}.bias" in state:
            out.append(_Recipe("fold_bias", (f"{conv}.bias", *stats)))
        else:
            out.append(_Recipe("fold_bias_nobias", stats))
    return out


class OnnxTemplate:
    """The dense model's ONNX export, with a recipe for every initializer computed from its tensors.

    Build it with :meth:`of` (one export); :meth:`render` writes the file a pruned copy of the
    model exports to, or raises :class:`TemplateMiss`.
    """

    def __init__(
        self,
        proto: object,
        recipes: dict[int, _Recipe],
        eps: dict[str, float],
        dense_state: dict[str, torch.Tensor],
    ) -> None:
        self.proto = proto  # onnx.ModelProto of the dense model
        self.recipes = recipes  # initializer index -> recipe
        self.eps = eps
        self.dense_state = dense_state  # the base model's own tensors (never modified)
        self.covered = {s for r in recipes.values() for s in r.sources}  # tensors some recipe reads
        self.dense_bytes = len(proto.SerializeToString())  # type: ignore[attr-defined]

    @classmethod
    def of(cls, model: nn.Module, example_input: torch.Tensor) -> OnnxTemplate:
        """Export ``model`` once (the TorchScript exporter, as ``export_onnx`` does) and explain its
        initializers. Raises :class:`TemplateMiss` where that export is not ``export_onnx``'s."""
        import onnx
        from onnx import numpy_helper

        if ort_ops(model):
            raise TemplateMiss("the model is written back as the user's own ONNX graph")
        model = model.eval()
        buf = io.BytesIO()
        try:
            torchscript_export(
                model,
                (example_input,),
                buf,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        except Exception as e:  # export_onnx falls back to the dynamo exporter: not templated
            raise TemplateMiss(f"the TorchScript exporter failed: {type(e).__name__}") from None
        proto = onnx.load_model_from_string(buf.getvalue())
        state = {n: t.detach() for n, t in model.state_dict().items()}
        pairs = _conv_bn_pairs(model, example_input)
        eps = {f"{bn}.running_var": float(dict(model.named_modules())[bn].eps) for _, bn in pairs}
        by_digest: dict[str, list[_Recipe]] = {}
        for recipe in _candidates(model, pairs):
            by_digest.setdefault(_digest(recipe(state, eps)), []).append(recipe)
        recipes: dict[int, _Recipe] = {}
        ambiguous: set[str] = set()
        for k, init in enumerate(proto.graph.initializer):
            found = by_digest.get(_digest(numpy_helper.to_array(init)), [])
            if len(found) == 1:
                recipes[k] = found[0]
            elif found:  # several tensors hold these values: which one the graph reads is unknown
                preferred = [r for r in found if r.kind == "param" and r.sources[0] == init.name]
                if len(preferred) == 1:
                    recipes[k] = preferred[0]
                else:
                    for r in found:
                        ambiguous.update(r.sources)
        template = cls(proto, recipes, eps, state)
        template.covered -= ambiguous
        return template

    def changes(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
        """The state of a pruned copy, and the names of its tensors that differ from dense.

        Raises:
            TemplateMiss: a changed tensor that no recipe reads, or other tensors than dense.
        """
        state = {n: t.detach() for n, t in model.state_dict().items()}
        if set(state) != set(self.dense_state):
            raise TemplateMiss("the pruned model has other tensors than the dense one")
        changed = {
            n
            for n, t in state.items()
            if tuple(t.shape) != tuple(self.dense_state[n].shape)
            or not torch.equal(t, self.dense_state[n])
        }
        missing = sorted(changed - self.covered)
        if missing:
            raise TemplateMiss(f"no recipe reads {missing[:3]}{'...' if len(missing) > 3 else ''}")
        return state, changed

    def render(self, model: nn.Module) -> bytes:
        """The ONNX file (bytes) that ``export_onnx(model)`` writes, for a pruned copy of the
        template's model: the recipes of every changed tensor evaluated on it.

        Raises:
            TemplateMiss: a changed tensor that no recipe reads.
        """
        import onnx
        from onnx import helper

        state, changed = self.changes(model)
        out = onnx.ModelProto()
        out.CopyFrom(self.proto)
        inits = out.graph.initializer
        for k, recipe in self.recipes.items():
            if not changed.intersection(recipe.sources):
                continue
            value = recipe(state, self.eps)
            tensor = inits[k]
            want = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            tensor.raw_data = np.ascontiguousarray(value, dtype=want).tobytes()
            del tensor.dims[:]
            tensor.dims.extend(value.shape)
        self._regroup(out, model, changed)
        return out.SerializeToString()

    def _regroup(self, out: object, model: nn.Module, changed: set[str]) -> None:
        """A depthwise convolution that lost channels has fewer groups: its node says so."""
        index = {init.name: k for k, init in enumerate(out.graph.initializer)}  # type: ignore[attr-defined]
        modules = dict(model.named_modules())
        for node in out.graph.node:  # type: ignore[attr-defined]
            if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in index:
                continue
            recipe = self.recipes.get(index[node.input[1]])
            if (
                recipe is None
                or recipe.kind not in ("param", "fold_weight")
                or recipe.sources[0] not in changed
            ):
                continue
            module = modules.get(recipe.sources[0].rsplit(".", 1)[0])
            if not isinstance(module, _CONVS):
                raise TemplateMiss(
                    f"a Conv node reads {recipe.sources[0]}, which is not a convolution's weight"
                )
            attrs = [a for a in node.attribute if a.name == "group"]
            if attrs:
                attrs[0].i = module.groups
            elif module.groups != 1:
                raise TemplateMiss(f"the Conv node of {recipe.sources[0]} declares no groups")


_TEMPLATES: weakref.WeakKeyDictionary[Any, OnnxTemplate | TemplateMiss] = (
    weakref.WeakKeyDictionary()
)
_TEMPLATES_LOCK = threading.Lock()


def template_for(subject: Any) -> OnnxTemplate | None:
    """The template of a Subject's base model, built once while the subject lives (None, with the
    reason kept, where the model cannot be templated)."""
    with _TEMPLATES_LOCK:
        found = _TEMPLATES.get(subject)
    if found is None:
        try:
            found = OnnxTemplate.of(subject.model, subject.example_input)
        except TemplateMiss as e:
            found = e
        with _TEMPLATES_LOCK:
            _TEMPLATES[subject] = found
    return found if isinstance(found, OnnxTemplate) else None


def why_untemplated(subject: Any) -> str:
    """Why :func:`template_for` gives None for ``subject`` ("" when it does not)."""
    template_for(subject)
    found = _TEMPLATES.get(subject)
    return str(found) if isinstance(found, TemplateMiss) else ""


def _agrees(data: bytes, model: nn.Module, example: Any) -> bool:
    """Does the file ``data`` compute what ``model`` computes on ``example`` (ONNX Runtime against
    torch, within float noise of the output scale)?"""
    try:
        got = OrtModel(data, threads=1)(example.numpy())
        with torch.no_grad():
            want = logits_of(run_model(model, example))
    except Exception:  # a file ONNX Runtime cannot load or run: not the model
        return False
    return relative_error(got, want) <= 1e-3


def write_onnx(subject: Any, model: nn.Module, path: str | Path) -> str:
    """Write the ONNX file of a pruned copy of ``subject``'s model to ``path``: from the template
    when
    it vouches for it (the exporter's own bytes, in milliseconds) and the file computes what the
    model computes on the example input (checked in ONNX Runtime), else with ``export_onnx``.
    Returns ``"template"`` or ``"exporter"``."""
    template = template_for(subject)
    if template is not None:
        try:
            data = template.render(model)
            if _agrees(data, model, subject.example_input):
                Path(path).write_bytes(data)
                return "template"
            log.warning(
                "the template's file disagrees with the pruned model: exporting it for real"
            )
        except TemplateMiss:
            pass
    export_onnx(model, subject.example_input, path)
    return "exporter"
