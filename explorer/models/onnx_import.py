"""Load an ONNX model as a torch ``nn.Module``: a small interpreter of the ONNX graph.

One concern: turning an ONNX graph into torch modules (one converter per supported op, and the
naming of the layers they make); the part of a graph run in ONNX Runtime is ``ort_nodes``.

Weights become real layers: ``Conv`` an ``nn.Conv1d/2d/3d``, ``Gemm`` and ``MatMul`` with a
constant weight an ``nn.Linear`` (a following ``Add`` of a constant bias is folded into it),
``BatchNormalization`` a batch-norm module, ``LayerNormalization`` an ``nn.LayerNorm`` and a
``Gather`` of rows of a constant table (token embeddings) an ``nn.Embedding``. Every
other supported op is a torch function, run in the graph's topological order by ``forward``.
Because the layers are real modules, Torch-Pruning's DepGraph (which traces autograd) can group
and remove their channels, and the module exports back to ONNX like any other.

An op the interpreter does not know (``supported_ops()``), from any domain ONNX Runtime knows,
runs in ONNX Runtime one node at a time (``explorer.models.ort_nodes``). Such a graph keeps its
layers, histograms, unstructured and N:M pruning, sensitivity and evaluation, but no channel can be
followed through an opaque node: ``ort_ops`` names them, structured pruning and fine-tuning are
off, and ``write_onnx`` writes the user's own graph with the pruned (zeroed) weights, which is what
gets measured and exported. Control flow (subgraphs) is refused.

Layers are named after the model's own names where the file keeps them: the weight initializer
(``features.0.weight`` gives ``features.0``, as PyTorch's dynamo exporter writes), the module scope
the dynamo exporter records in a node's metadata (for a weight it transposed and renamed), or the
node's scope (``/features/features.0/Conv`` gives ``features.0``, as the TorchScript exporter
writes); otherwise the sanitized node name.

Nothing is unpickled: ONNX is protobuf. Tensors stored outside the file ("external data") are
read only from plain file names in the model's own folder.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from explorer.errors import ExportError, ModelLoadError
from explorer.models.files import read_model_file
from explorer.models.ort_nodes import LAYOUTS, OrtNode, OrtWeight, run_node

__all__ = ["AnyRankBatchNorm", "OnnxModule", "load_onnx", "supported_ops"]

Value = torch.Tensor | None


@dataclass(frozen=True)
class _Node:
    """One ONNX node, as plain data (the module stays deep-copyable: no closures over layers)."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    module: str | None = None  # qualified name of the layer that owns this node's weights
    owned: tuple[bool, ...] = ()  # per input: held by the layer (not read from the environment)
    ort: OrtNode | None = None  # set for a node run by ONNX Runtime (op "Ort")


class AnyRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """ONNX BatchNormalization: normalizes dim 1 of an input of any rank >= 2."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"BatchNormalization expects an input of rank >= 2, got rank {input.dim()}"
            )


_ONNX_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Erf": torch.erf,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Softplus": F.softplus,
    "Softsign": F.softsign,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
    "Not": torch.logical_not,
    "Sign": torch.sign,
    "Identity": lambda x: x,
    "IsNaN": torch.isnan,
}

_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Greater": torch.gt,
    "Less": torch.lt,
    "GreaterOrEqual": torch.ge,
    "LessOrEqual": torch.le,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}

_OTHER_OPS = {
    "Conv",
    "Gemm",
    "MatMul",
    "BatchNormalization",
    "LayerNormalization",
    "Div",
    "Mod",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "HardSigmoid",
    "Gelu",
    "Clip",
    "Softmax",
    "LogSoftmax",
    "PRelu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Shape",
    "Size",
    "Expand",
    "Cast",
    "Constant",
    "ConstantOfShape",
    "Dropout",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "Pad",
    "Tile",
    "ArgMax",
    "Range",
    "IsInf",
    "GatherElements",
    "GatherND",
}


_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min", "Sum", "Mean", "Where"}
_TOKENS = {
    "Expand",
    "Tile",
    "Concat",
}  # ops that carry a constant token's channels into the activations


def supported_ops() -> list[str]:
    """ONNX op types (default domain) the interpreter runs."""
    return sorted(set(_UNARY) | set(_BINARY) | _OTHER_OPS)


# --- naming --------------------------------------------------------------------------------------

_QUALIFIED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def _component(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_") or "_"
    return text


def _scope_name(node_name: str) -> str | None:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1`` (the TorchScript exporter's scopes).

    A child of a container is scoped ``{container}.{index}`` (``/blocks/blocks.0/expand/expand.0``
    is ``blocks.0.expand.0``); other children by their attribute name alone.
    """
    if not node_name.startswith("/"):
        return None
    parts = [p for p in node_name.split("/") if p][
        :-1
    ]  # the last part is the op (``Conv``, ``Gemm_1``)
    current, previous = "", ""
    for part in parts:
        if previous and part.startswith(previous + "."):
            current += part[len(previous) :]
        else:
            current = f"{current}.{part}" if current else part
        previous = part
    return current if current and _QUALIFIED.match(current) else None


def _module_scope(node: Any) -> str | None:
    """The module a node came from, as torch's dynamo exporter records it in the node's metadata
    (``pkg.torch.onnx.name_scopes``: ``['', 'vit', ..., 'vit.layers.0.attention.q_proj',
    'linear']``).
    """
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if (
                isinstance(scopes, list)
                and len(scopes) >= 2
                and isinstance(scopes[-2], str)
                and _QUALIFIED.match(scopes[-2])
            ):
                return scopes[-2]
    return None


def _layer_name(node: Any, weight_name: str | None, index: int) -> str:
    if weight_name and weight_name.endswith(".weight") and _QUALIFIED.match(weight_name[:-7]):
        return weight_name[:-7]
    scoped = _module_scope(node) or _scope_name(node.name)
    if scoped:
        return scoped
    if node.name:
        return _component(node.name)
    return f"{node.op_type.lower()}_{index}"


# --- the module ----------------------------------------------------------------------------------


class OnnxModule(nn.Module):
    """An ONNX graph run node by node with torch; weights live in real layers (see module doc)."""

    def __init__(self, model: Any, source: str = "model.onnx") -> None:
        super().__init__()
        from onnx import numpy_helper

        graph = model.graph
        self.source = source
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self._consts: dict[str, np.ndarray] = dict(
            init
        )  # every constant value, for attribute-like inputs
        inputs = [i.name for i in graph.input if i.name not in init]
        if not inputs:
            raise ModelLoadError(f"{source}: the graph takes no input")
        # Several inputs (a text model's input_ids and attention_mask) are fed by these names.
        self.input_names: tuple[str, ...] = tuple(inputs)
        self.input_name = inputs[0]
        declared = next(i for i in graph.input if i.name == self.input_name).type.tensor_type
        dims = (
            [
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in declared.shape.dim
            ]
            if declared.HasField("shape")
            else []
        )
        # The per-sample input shape the file declares (None where a dimension is free; None for
        # several inputs: their data is named, not shaped to fit).
        self.input_shape: tuple[int | None, ...] | None = (
            tuple(dims[1:]) if len(dims) > 1 and len(inputs) == 1 else None
        )
        if not graph.output:
            raise ModelLoadError(f"{source}: the graph has no output")
        self.output_name = graph.output[0].name
        if len(graph.output) > 1:  # what evaluation uses, said on the Model page and by evaluate
            self.output_note = f"the first of its {len(graph.output)} outputs, {self.output_name!r}"

        raw = _toposort(list(graph.node), {*self.input_names, *init, ""}, source)
        shapes, types = _inferred(model)
        constant_outputs = {c.output[0] for c in raw if c.op_type == "Constant"}
        # Nodes without a torch equivalent here (or a Conv whose weight is computed) run in ONNX
        # Runtime, one node at a time; they export back unchanged. Structured pruning and
        # fine-tuning are off for such a graph; measuring writes the user's own graph back.
        in_ort = {
            id(n)
            for n in raw
            if n.domain not in ("", "ai.onnx")
            or (
                n.op_type not in supported_ops()
                and not (n.op_type == "Resize" and _resize_mode(n, source))
            )
            or (
                n.op_type == "Conv"
                and n.input[1] not in init
                and n.input[1] not in constant_outputs
            )
        }
        self.ort_ops: tuple[str, ...] = tuple(
            sorted(
                {
                    (f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type
                    for n in raw
                    if id(n) in in_ort
                }
            )
        )
        self._original = model.SerializeToString() if self.ort_ops else b""
        # layer -> (initializer, permutation of the file's layout or None, alpha)
        self._weight_source: dict[str, tuple[str, tuple[int, ...] | None, float]] = {}
        self._ort_weight: dict[
            str, str
        ] = {}  # initializer read by an ONNX Runtime node -> its OrtWeight layer
        for n in raw:  # Constant nodes: known at load, like initializers
            if n.op_type == "Constant":
                self._consts[n.output[0]] = _constant_value(n, source)
        producers = {o: n for n in raw for o in n.output}
        consumers: dict[str, list[Any]] = {}
        for n in raw:
            for name in n.input:
                consumers.setdefault(name, []).append(n)

        self._buffer_of: dict[str, str] = {}  # ONNX constant name -> buffer attribute
        self._used_names: set[str] = set()
        self._layer_of_weight: dict[
            str, str
        ] = {}  # weight initializer -> the (first) layer holding it
        self._layer_of_key: dict[Any, str] = {}  # what makes nodes share a layer -> that layer
        self.folded_nodes = 0  # constant-only nodes folded into initializers before loading
        nodes: list[_Node] = []
        skipped: set[int] = set()  # Add nodes folded into the Linear before them
        for index, n in enumerate(raw):
            if id(n) in skipped:
                continue
            attrs = _attributes(n, source)
            op, ins, outs, module = n.op_type, tuple(n.input), tuple(n.output), None
            if op == "Constant":
                continue
            if id(n) in in_ort:
                nodes.append(
                    _Node(
                        op="Ort",
                        name=n.name,
                        inputs=ins,
                        outputs=outs,
                        owned=(False,) * len(ins),
                        ort=OrtNode.of(n, model, types),
                    )
                )
                continue
            if op == "Conv" and len(ins) > 1 and ins[1] in self._consts:
                module = self._conv(n, attrs, index)
            elif (
                op == "Gemm"
                and len(ins) > 1
                and ins[1] in self._consts
                and not attrs.get("transA", 0)
            ):
                module = self._gemm(n, attrs, index)
            elif (
                op == "MatMul"
                and ins[1] in self._consts
                and self._consts[ins[1]].ndim == 2
                and ins[0] not in self._consts
            ):
                bias_node = _foldable_bias(n, consumers, self._consts, self.output_name)
                module = self._matmul(n, index, bias_node)
                if bias_node is not None:
                    skipped.add(id(bias_node))
                    outs = tuple(bias_node.output)
                op = "Linear"
            elif (
                op == "Gather"
                and ins[0] in self._consts
                and ins[1] not in self._consts
                and int(attrs.get("axis", 0)) == 0
                and self._consts[ins[0]].ndim == 2
                and self._consts[ins[0]].dtype.kind == "f"
            ):  # a lookup table: token or position embeddings
                module = self._embedding(n, index)
                op = "Embedding"
            elif op == "BatchNormalization" and all(i in self._consts for i in ins[1:5]):
                if attrs.get("training_mode", 0):
                    raise ModelLoadError(
                        f"{source}: node {n.name!r} is a BatchNormalization in training mode"
                    )
                module = self._batchnorm(n, attrs, index)
            elif (
                op == "LayerNormalization"
                and len(ins) > 1
                and ins[1] in self._consts
                and attrs.get("axis", -1) == -1
                and self._consts[ins[1]].ndim == 1
                and (len(ins) < 3 or not ins[2] or ins[2] in self._consts)
            ):
                module = self._layernorm(n, attrs, index)
            elif op == "Reshape" and _is_flatten(n, self._consts, shapes):
                op, ins, attrs = "Flatten", ins[:1], {"axis": 1}
            elif op == "Reshape" and _keeps_last(n, self._consts, shapes, producers):
                attrs = {**attrs, "keep_last": 1}  # (.., C) -> (.., C): C follows pruned channels
            elif op == "Reshape" and _heads_reshape(n, self._consts, shapes):
                attrs = {**attrs, "heads": _heads_reshape(n, self._consts, shapes)}
            node = _Node(op=op, name=n.name, inputs=ins, outputs=outs, attrs=attrs, module=module)
            nodes.append(replace(node, owned=tuple(_owned(node, i) for i in ins)))
        self._ort_weights(nodes)
        # Constants the remaining nodes read become buffers (they travel with copies and exports).
        # A float tensor combined element-wise with activations (a positional embedding, a
        # per-channel scale), or a token expanded to the batch and joined to them (a ViT's class
        # token), becomes a frozen parameter instead: DepGraph then prunes it along with the
        # channels it meets.
        for node in nodes:
            for name, owned in zip(node.inputs, node.owned, strict=False):
                if (
                    name in self._consts
                    and name not in self._buffer_of
                    and not owned
                    and name not in self._ort_weight
                ):
                    value = torch.from_numpy(np.array(self._consts[name]))
                    attr = self._unique("const_" + _component(name))
                    if (
                        value.is_floating_point()
                        and value.numel() > 1
                        and (
                            (
                                node.op in _ELEMENTWISE
                                and any(i not in self._consts for i in node.inputs)
                            )
                            or (
                                node.op in _TOKENS
                                and value.dim() >= 2
                                and (name == node.inputs[0] or node.op == "Concat")
                                and any(i not in self._consts for i in node.inputs)
                            )
                        )
                    ):
                        self.register_parameter(attr, nn.Parameter(value, requires_grad=False))
                    else:
                        self.register_buffer(attr, value)
                    self._buffer_of[name] = attr
        self._nodes = tuple(nodes)
        # Keep only what forward reads as plain values (shapes, axes, pads): small or integer
        # constants. The weights live in the layers and buffers; copies must not duplicate them.
        self._consts = {
            k: v for k, v in self._consts.items() if v.dtype.kind in "iub" or v.size <= 16
        }
        weights = {f"{layer}.weight" for layer in self._weight_source}
        self._frozen = (
            {
                name: _digest(t)
                for name, t in [*self.named_parameters(), *self.named_buffers()]
                if name not in weights
            }
            if self.ort_ops
            else {}
        )

    # --- building layers -------------------------------------------------------------------------

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._used_names or hasattr(self, name):
            name = f"{base}_{i}"
            i += 1
        self._used_names.add(name)
        return name

    def _add_layer(
        self, name: str, layer: nn.Module, weight: str, node: Any = None, *extra: str
    ) -> str:
        """Register ``layer`` under the qualified ``name`` (containers created on the way).

        Two nodes alike in everything (op, constant inputs, attributes) share one layer, called
        twice (a tied weight). Nodes that only share a weight initializer get a layer each: the
        TorchScript exporter deduplicates equal initializers (two batch norms' ones and zeros),
        which does not make the layers one.
        """
        key = (
            weight
            if node is None
            else (
                node.op_type,
                node.domain,
                tuple(node.input[1:]),
                extra,
                tuple(a.SerializeToString() for a in node.attribute),
            )
        )
        if key in self._layer_of_key:
            return self._layer_of_key[key]
        parts = [_component(p) for p in name.split(".")]
        qualified = ".".join(parts)
        if qualified in self._used_names or not self._can_nest(parts):
            qualified = self._unique(_component(name.replace(".", "_")))
            parts = [qualified]
        self._used_names.add(qualified)
        parent: nn.Module = self
        for i, part in enumerate(parts[:-1]):
            child = parent._modules.get(part)
            if child is None:
                child = nn.Module()
                parent.add_module(part, child)
                self._used_names.add(".".join(parts[: i + 1]))
            parent = child
        parent.add_module(parts[-1], layer)
        self._layer_of_weight.setdefault(weight, qualified)
        self._layer_of_key[key] = qualified
        return qualified

    def _can_nest(self, parts: list[str]) -> bool:
        """Can ``parts`` become a chain of containers ending in a new layer, clashing with
        nothing?"""
        parent: nn.Module = self
        for part in parts[:-1]:
            child = parent._modules.get(part)
            if child is None:
                return not hasattr(parent, part)
            if type(child) is not nn.Module:  # a real layer cannot also be a container
                return False
            parent = child
        return not hasattr(parent, parts[-1])

    def _param(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self._consts[name], dtype=np.float32))

    def _source(
        self, layer: str, initializer: str, perm: tuple[int, ...] | None = None, alpha: float = 1.0
    ) -> str:
        """Remember where ``layer``'s weight comes from, to write it back (``write_onnx``)."""
        self._weight_source.setdefault(layer, (initializer, perm, alpha))
        return layer

    def _ort_weights(self, nodes: list[_Node]) -> None:
        """Float weights (rank >= 2) that nodes run in ONNX Runtime read become ``OrtWeight``
        layers."""
        for node in nodes:
            if node.ort is None:
                continue
            proto = node.ort.proto()
            known = LAYOUTS.get(node.ort.label)
            for index, name in enumerate(node.inputs):
                value = self._consts.get(name) if name else None
                if (
                    value is None
                    or name in self._layer_of_weight
                    or value.dtype.kind != "f"
                    or value.ndim < 2
                    or value.size < 16
                    or (known and index not in known[0])
                ):
                    continue
                role = _input_role(proto, index, self.opset)
                perm = known[1] if known else None
                layer = OrtWeight(self._param(name), node.ort.label, role, perm)
                if name.endswith(".weight") and _QUALIFIED.match(name[:-7]):
                    wanted = name[:-7]
                else:
                    scope = _scope_name(proto.name) or _component(
                        proto.name or proto.op_type.lower()
                    )
                    wanted = f"{scope}.{role}"
                qualified = self._add_layer(wanted, layer, name)
                self._ort_weight[name] = qualified
                self._source(qualified, name, layer.perm)

    def _conv(self, n: Any, attrs: dict[str, Any], index: int) -> str:
        w = self._param(n.input[1])
        if w.ndim not in (3, 4, 5):
            raise ModelLoadError(
                f"{self.source}: Conv node {n.name!r} has a weight of rank {w.ndim}"
            )
        dims = w.ndim - 2
        kernel = tuple(attrs.get("kernel_shape", w.shape[2:]))
        if tuple(kernel) != tuple(w.shape[2:]):
            raise ModelLoadError(
                f"{self.source}: Conv node {n.name!r}: kernel_shape {kernel} != weight"
                f" {tuple(w.shape)}"
            )
        group = int(attrs.get("group", 1))
        bias = len(n.input) > 2 and bool(n.input[2])
        if bias and n.input[2] not in self._consts:
            raise ModelLoadError(
                f"{self.source}: Conv node {n.name!r} has a computed bias (unsupported)"
            )
        conv_type = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        layer = conv_type(
            w.shape[1] * group,
            w.shape[0],
            kernel_size=kernel,
            stride=tuple(attrs.get("strides", [1] * dims)),
            dilation=tuple(attrs.get("dilations", [1] * dims)),
            groups=group,
            bias=bias,
        )
        pads = attrs.get("pads", [0] * (2 * dims))
        if attrs.get("auto_pad", "NOTSET") == "NOTSET" and pads[:dims] == pads[dims:]:
            layer.padding = tuple(pads[:dims])
        with torch.no_grad():
            layer.weight.copy_(w)
            if bias:
                layer.bias.copy_(self._param(n.input[2]))
        return self._source(
            self._add_layer(_layer_name(n, n.input[1], index), layer, n.input[1], n), n.input[1]
        )

    def _gemm(self, n: Any, attrs: dict[str, Any], index: int) -> str:
        b = self._param(n.input[1])
        if b.ndim != 2:
            raise ModelLoadError(
                f"{self.source}: Gemm node {n.name!r} has a weight of rank {b.ndim}"
            )
        weight = (b if attrs.get("transB", 0) else b.T) * float(attrs.get("alpha", 1.0))
        out_features, in_features = weight.shape
        c = n.input[2] if len(n.input) > 2 and n.input[2] else None
        bias = None
        if c is not None and c in self._consts:
            cv = self._param(c) * float(attrs.get("beta", 1.0))
            if (
                cv.numel() in (1, out_features)
                and cv.ndim <= 2
                and (cv.ndim < 2 or cv.shape[0] == 1)
            ):
                bias = cv.reshape(-1).expand(out_features).clone()
        layer = nn.Linear(in_features, out_features, bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        name = self._add_layer(_layer_name(n, n.input[1], index), layer, n.input[1], n)
        return self._source(
            name,
            n.input[1],
            None if attrs.get("transB", 0) else (1, 0),
            float(attrs.get("alpha", 1.0)),
        )

    def _matmul(self, n: Any, index: int, bias_node: Any) -> str:
        b = self._param(n.input[1])  # (in, out)
        layer = nn.Linear(b.shape[0], b.shape[1], bias=bias_node is not None)
        const = (
            next(i for i in bias_node.input if i in self._consts) if bias_node is not None else ""
        )
        with torch.no_grad():
            layer.weight.copy_(b.T)
            if bias_node is not None:
                layer.bias.copy_(self._param(const).reshape(-1).expand(b.shape[1]))
        name = self._add_layer(_layer_name(n, n.input[1], index), layer, n.input[1], n, const)
        return self._source(name, n.input[1], (1, 0))

    def _embedding(self, n: Any, index: int) -> str:
        table = self._param(n.input[0])
        layer = nn.Embedding(table.shape[0], table.shape[1])
        with torch.no_grad():
            layer.weight.copy_(table)
        return self._add_layer(_layer_name(n, n.input[0], index), layer, n.input[0], n)

    def _batchnorm(self, n: Any, attrs: dict[str, Any], index: int) -> str:
        scale, bias, mean, var = (self._param(i) for i in n.input[1:5])
        layer = AnyRankBatchNorm(
            scale.numel(),
            eps=float(attrs.get("epsilon", 1e-5)),
            momentum=1.0 - float(attrs.get("momentum", 0.9)),
        )
        with torch.no_grad():
            layer.weight.copy_(scale)
            layer.bias.copy_(bias)
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        layer.eval()
        return self._add_layer(_layer_name(n, n.input[1], index), layer, n.input[1], n)

    def _layernorm(self, n: Any, attrs: dict[str, Any], index: int) -> str:
        scale = self._param(n.input[1])
        has_bias = len(n.input) > 2 and bool(n.input[2])
        layer = nn.LayerNorm(scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)), bias=has_bias)
        with torch.no_grad():
            layer.weight.copy_(scale)
            if has_bias:
                layer.bias.copy_(self._param(n.input[2]))
        return self._add_layer(_layer_name(n, n.input[1], index), layer, n.input[1], n)

    # --- running ---------------------------------------------------------------------------------

    def _value(self, env: dict[str, Value], name: str) -> Value:
        if not name:
            return None
        if name in env:
            return env[name]
        attr = self._buffer_of.get(name)
        if attr is not None:
            return getattr(self, attr)
        layer = self._ort_weight.get(name)
        if layer is not None:
            return self.get_submodule(layer).value()
        raise RuntimeError(f"ONNX value {name!r} is not computed yet")

    def _const(self, name: str | None) -> np.ndarray | None:
        return self._consts.get(name) if name else None

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """Run the graph on its inputs, given in ``input_names`` order or by name."""
        if len(args) > len(self.input_names) or set(kwargs) - set(self.input_names[len(args) :]):
            raise TypeError(
                f"the graph takes inputs {list(self.input_names)}; got {len(args)} positional "
                f"and {sorted(kwargs)}"
            )
        env: dict[str, Value] = dict(zip(self.input_names, args, strict=False))
        env.update(kwargs)
        missing = [n for n in self.input_names if n not in env]
        if missing:
            raise TypeError(f"the graph takes inputs {list(self.input_names)}; {missing} not given")
        for node in self._nodes:
            args = [
                None if owned else self._value(env, name)
                for name, owned in zip(node.inputs, node.owned, strict=False)
            ]
            try:
                result = getattr(self, "_op_" + node.op)(node, args)
            except ModelLoadError:
                raise
            except Exception as e:
                raise RuntimeError(
                    f"ONNX node {node.name or node.op!r} ({node.op}): {type(e).__name__}: {e}"
                ) from e
            if isinstance(result, (tuple, list)):
                for name, value in zip(node.outputs, result, strict=False):
                    env[name] = value
            else:
                env[node.outputs[0]] = result
        out = env[self.output_name]
        assert out is not None
        return out

    def _op_Ort(self, node: _Node, a: list[Value]) -> Any:
        assert node.ort is not None
        return run_node(node.ort, a)

    # --- writing back --------------------------------------------------------------------------

    def write_onnx(self, path: str | Path) -> Path:
        """Write the user's own graph with this module's weights (for a graph with ``ort_ops``).

        Only zeros can be written back: a layer weight must equal the loaded one with some entries
        set to zero, and every other parameter and buffer must be unchanged (batch-norm statistics
        or fine-tuned weights have no place in the original graph).

        Raises:
            ExportError: something other than zeroing changed, naming the tensor.
        """
        import onnx
        from onnx import numpy_helper

        if not self._original:
            raise ExportError(
                f"{self.source}: nothing runs in ONNX Runtime here; export the module instead"
            )
        current = dict([*self.named_parameters(), *self.named_buffers()])
        for name, digest in self._frozen.items():
            if name not in current or _digest(current[name]) != digest:
                raise ExportError(
                    f"{self.source}: {name!r} changed; a graph that runs {list(self.ort_ops)} in"
                    " ONNX Runtime can only have its weights set to zero (no recalibration or"
                    " fine-tuning)"
                )
        model = onnx.load_model_from_string(self._original)
        tensors = {t.name: t for t in model.graph.initializer}
        constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
        for layer, (source, perm, alpha) in self._weight_source.items():
            proto = tensors.get(source)
            if proto is None:  # a Constant node's value
                proto = next(a.t for a in constants[source].attribute if a.name == "value")
            original = numpy_helper.to_array(proto)
            loaded = torch.from_numpy(np.array(original, dtype=np.float32))
            loaded = (loaded.permute(perm) if perm else loaded) * alpha
            weight = current[f"{layer}.weight"].detach()
            keep = weight != 0
            if weight.shape != loaded.shape or not torch.equal(weight, loaded * keep):
                raise ExportError(
                    f"{self.source}: the weight of {layer!r} changed beyond zeroing entries "
                    f"(shape {tuple(weight.shape)}, loaded {tuple(loaded.shape)})"
                )
            mask = (keep.permute(tuple(int(i) for i in np.argsort(perm))) if perm else keep).numpy()
            proto.CopyFrom(
                numpy_helper.from_array((original * mask).astype(original.dtype), proto.name)
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(model, str(path))
        return path

    # Layers.
    def _op_Conv(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x = a[0]
        if node.module is None:
            raise RuntimeError("Conv with a computed weight is not supported")
        layer = self.get_submodule(node.module)
        dims = x.dim() - 2
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        pads = node.attrs.get("pads", [0] * (2 * dims))
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = _same_pads(
                x.shape[2:], layer.kernel_size, layer.stride, layer.dilation, auto_pad
            )
        elif auto_pad == "VALID":
            pads = [0] * (2 * dims)
        if auto_pad != "NOTSET" or pads[:dims] != pads[dims:]:
            x = F.pad(x, _torch_pads(pads))
        return layer(x)

    def _op_Gemm(self, node: _Node, a: list[Value]) -> torch.Tensor:
        attrs = node.attrs
        if node.module is not None:
            layer = self.get_submodule(node.module)
            y = layer(a[0])
            c = a[2] if len(a) > 2 else None
            if c is not None and layer.bias is None:
                y = y + float(attrs.get("beta", 1.0)) * c
            return y
        x = a[0].T if attrs.get("transA", 0) else a[0]
        w = a[1].T if attrs.get("transB", 0) else a[1]
        y = float(attrs.get("alpha", 1.0)) * (x @ w)
        if len(a) > 2 and a[2] is not None:
            y = y + float(attrs.get("beta", 1.0)) * a[2]
        return y

    def _op_Embedding(self, node: _Node, a: list[Value]) -> torch.Tensor:
        assert node.module is not None and a[1] is not None
        layer = self.get_submodule(node.module)
        idx = a[1].to(torch.int64)
        return layer(torch.where(idx < 0, idx + layer.num_embeddings, idx))

    def _op_Linear(self, node: _Node, a: list[Value]) -> torch.Tensor:
        assert node.module is not None
        return self.get_submodule(node.module)(a[0])

    def _op_MatMul(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return torch.matmul(a[0], a[1])

    def _op_BatchNormalization(self, node: _Node, a: list[Value]) -> torch.Tensor:
        if node.module is not None:
            return self.get_submodule(node.module)(a[0])
        return F.batch_norm(
            a[0], a[3], a[4], a[1], a[2], False, 0.0, float(node.attrs.get("epsilon", 1e-5))
        )

    def _op_LayerNormalization(self, node: _Node, a: list[Value]) -> torch.Tensor:
        if node.module is not None:
            return self.get_submodule(node.module)(a[0])
        x = a[0]
        axis = node.attrs.get("axis", -1) % x.dim()
        shape = tuple(x.shape[axis:])
        scale = a[1].expand(shape) if a[1] is not None else None
        bias = a[2].expand(shape) if len(a) > 2 and a[2] is not None else None
        return F.layer_norm(x, shape, scale, bias, float(node.attrs.get("epsilon", 1e-5)))

    # Element-wise.
    def _op_Div(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x, y = a
        if not x.is_floating_point() and not y.is_floating_point():
            return torch.div(x, y, rounding_mode="trunc")
        return torch.div(x, y)

    def _op_IsInf(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x = a[0]
        positive, negative = (
            node.attrs.get("detect_positive", 1),
            node.attrs.get("detect_negative", 1),
        )
        if positive and negative:
            return torch.isinf(x)
        if positive:
            return torch.isposinf(x)
        return torch.isneginf(x) if negative else torch.zeros_like(x, dtype=torch.bool)

    def _op_Mod(self, node: _Node, a: list[Value]) -> torch.Tensor:
        if node.attrs.get("fmod", 0):
            return torch.fmod(a[0], a[1])
        return torch.remainder(a[0], a[1])

    def _op_Max(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return _fold(torch.maximum, a)

    def _op_Min(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return _fold(torch.minimum, a)

    def _op_Sum(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return _fold(torch.add, a)

    def _op_Mean(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return _fold(torch.add, a) / len(a)

    def _op_Where(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return torch.where(a[0].bool(), a[1], a[2])

    def _op_LeakyRelu(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return F.leaky_relu(a[0], float(node.attrs.get("alpha", 0.01)))

    def _op_Elu(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return F.elu(a[0], float(node.attrs.get("alpha", 1.0)))

    def _op_Celu(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return F.celu(a[0], float(node.attrs.get("alpha", 1.0)))

    def _op_Selu(self, node: _Node, a: list[Value]) -> torch.Tensor:
        alpha = float(node.attrs.get("alpha", 1.67326319217681884765625))
        gamma = float(node.attrs.get("gamma", 1.05070102214813232421875))
        return gamma * torch.where(a[0] > 0, a[0], alpha * (torch.exp(a[0]) - 1))

    def _op_HardSigmoid(self, node: _Node, a: list[Value]) -> torch.Tensor:
        alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
        return torch.clamp(alpha * a[0] + beta, 0.0, 1.0)

    def _op_Gelu(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return F.gelu(a[0], approximate=node.attrs.get("approximate", "none"))

    def _op_Clip(self, node: _Node, a: list[Value]) -> torch.Tensor:
        if self.opset < 11:
            lo, hi = node.attrs.get("min"), node.attrs.get("max")
        else:
            lo = a[1] if len(a) > 1 else None
            hi = a[2] if len(a) > 2 else None
        if lo is None and hi is None:
            return a[0]
        return torch.clamp(a[0], lo, hi)

    def _softmax(
        self, node: _Node, x: torch.Tensor, fn: Callable[..., torch.Tensor]
    ) -> torch.Tensor:
        if self.opset >= 13:
            return fn(x, dim=int(node.attrs.get("axis", -1)))
        axis = int(node.attrs.get("axis", 1)) % x.dim()  # before opset 13: over the flattened tail
        return fn(x.flatten(axis), dim=-1).reshape(x.shape) if axis < x.dim() - 1 else fn(x, dim=-1)

    def _op_Softmax(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return self._softmax(node, a[0], torch.softmax)

    def _op_LogSoftmax(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return self._softmax(node, a[0], torch.log_softmax)

    def _op_PRelu(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x, slope = a
        return torch.where(x >= 0, x, x * slope)

    # Pooling and reductions.
    def _op_MaxPool(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x = a[0]
        dims = x.dim() - 2
        k = tuple(node.attrs["kernel_shape"])
        strides = tuple(node.attrs.get("strides", [1] * dims))
        dil = tuple(node.attrs.get("dilations", [1] * dims))
        pads = self._pool_pads(node, x, k, strides, dil)
        padding = pads[:dims]
        if pads[:dims] != pads[dims:] or any(
            p > kk // 2 for p, kk in zip(padding, k, strict=False)
        ):
            x = F.pad(x, _torch_pads(pads), value=-math.inf)
            padding = [0] * dims
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
        return pool(
            x, k, strides, tuple(padding), dil, ceil_mode=bool(node.attrs.get("ceil_mode", 0))
        )

    def _op_AveragePool(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x = a[0]
        dims = x.dim() - 2
        k = tuple(node.attrs["kernel_shape"])
        strides = tuple(node.attrs.get("strides", [1] * dims))
        pads = self._pool_pads(node, x, k, strides, (1,) * dims)
        include = bool(node.attrs.get("count_include_pad", 0))
        padding = pads[:dims]
        if pads[:dims] != pads[dims:] or any(
            p > kk // 2 for p, kk in zip(padding, k, strict=False)
        ):
            if not include and any(pads):
                raise RuntimeError("asymmetric padding without count_include_pad is not supported")
            x = F.pad(x, _torch_pads(pads))
            padding = [0] * dims
        pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[dims - 1]
        return pool(
            x,
            k,
            strides,
            tuple(padding),
            ceil_mode=bool(node.attrs.get("ceil_mode", 0)),
            count_include_pad=include,
        )

    def _pool_pads(
        self,
        node: _Node,
        x: torch.Tensor,
        k: Sequence[int],
        strides: Sequence[int],
        dil: Sequence[int],
    ) -> list[int]:
        dims = x.dim() - 2
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            return _same_pads(x.shape[2:], k, strides, dil, auto_pad)
        if auto_pad == "VALID":
            return [0] * (2 * dims)
        return list(node.attrs.get("pads", [0] * (2 * dims)))

    def _op_GlobalAveragePool(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return a[0].mean(dim=tuple(range(2, a[0].dim())), keepdim=True)

    def _op_GlobalMaxPool(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return a[0].amax(dim=tuple(range(2, a[0].dim())), keepdim=True)

    def _reduce(self, node: _Node, a: list[Value], fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        x = a[0]
        axes = node.attrs.get("axes")
        if len(node.inputs) > 1 and node.inputs[1]:
            axes = self._ints(node.inputs[1], a[1])
        keep = bool(node.attrs.get("keepdims", 1))
        if not axes:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(int(i) for i in axes), keepdim=keep)

    def _op_ReduceMean(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return self._reduce(node, a, torch.mean)

    def _op_ReduceSum(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return self._reduce(node, a, torch.sum)

    def _op_ReduceMax(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return self._reduce(node, a, torch.amax)

    def _op_ReduceMin(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return self._reduce(node, a, torch.amin)

    def _op_ReduceProd(self, node: _Node, a: list[Value]) -> torch.Tensor:
        def prod(x: torch.Tensor, dim: tuple[int, ...], keepdim: bool) -> torch.Tensor:
            for d in sorted((d % x.dim() for d in dim), reverse=True):
                x = torch.prod(x, dim=d, keepdim=keepdim)
            return x

        return self._reduce(node, a, prod)

    def _op_ArgMax(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return torch.argmax(
            a[0], dim=int(node.attrs.get("axis", 0)), keepdim=bool(node.attrs.get("keepdims", 1))
        )

    # Shapes.
    def _ints(self, name: str, value: Value) -> list[int]:
        const = self._const(name)
        if const is not None:
            return [int(v) for v in np.asarray(const).reshape(-1)]
        assert value is not None
        return [int(v) for v in value.reshape(-1).tolist()]

    def _op_Flatten(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x = a[0]
        axis = int(node.attrs.get("axis", 1)) % (x.dim() + 1) if x.dim() else 0
        if axis == 0:
            return x.reshape(1, -1)
        if axis == x.dim():  # every dimension before the axis: (numel, 1)
            return x.reshape(-1, 1)
        return x.flatten(axis).flatten(0, axis - 1) if axis > 1 else x.flatten(1)

    def _op_Resize(self, node: _Node, a: list[Value]) -> torch.Tensor:
        """Linear and cubic Resize (what vision models use on feature maps and position
        embeddings) as ``F.interpolate``, which computes the same; other modes run in ONNX Runtime.
        """
        x = a[0]
        mode = {"linear": ("linear", "bilinear", "trilinear"), "cubic": (None, "bicubic", None)}[
            node.attrs["mode"]
        ]
        torch_mode = mode[x.dim() - 3]
        align = node.attrs.get("coordinate_transformation_mode", "half_pixel") == "align_corners"
        sizes = a[3] if len(a) > 3 else None
        if sizes is not None and sizes.numel():
            return F.interpolate(
                x,
                size=[int(v) for v in self._ints(node.inputs[3], sizes)[2:]],
                mode=torch_mode,
                align_corners=align,
            )
        scales = [
            float(v)
            for v in (
                (self._const(node.inputs[2]) if self._const(node.inputs[2]) is not None else a[2])
                .reshape(-1)
                .tolist()
            )
        ][2:]
        return F.interpolate(
            x,
            scale_factor=scales,
            mode=torch_mode,
            align_corners=align,
            recompute_scale_factor=False,
        )

    def _op_Reshape(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x = a[0]
        allowzero = bool(node.attrs.get("allowzero", 0))
        const = self._const(node.inputs[1])
        if const is not None:
            shape = [int(v) for v in np.asarray(const).reshape(-1)]
            if not allowzero:
                shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            if node.attrs.get("keep_last"):
                shape[-1] = x.shape[-1]
            elif (
                node.attrs.get("heads") == "split"
            ):  # (.., H*D) -> (.., H, D): H from the (pruned) width
                shape[-2] = x.shape[-1] // shape[-1]
            elif node.attrs.get("heads") == "merge":  # (.., H, D) -> (.., H*D)
                shape[-1] = x.shape[-2] * x.shape[-1]
            return x.reshape(shape)
        shape_t = a[1].to(torch.int64)
        if node.attrs.get("keep_last"):
            shape_t = torch.cat([shape_t[:-1], torch._shape_as_tensor(x)[-1:]])
        if not allowzero:  # a 0 copies the input's size at that position
            current = torch._shape_as_tensor(x)[: shape_t.numel()]
            if shape_t.numel() > x.dim():
                current = torch.cat([current, shape_t[x.dim() :]])
            shape_t = torch.where(shape_t == 0, current, shape_t)
        return torch._reshape_from_tensor(x, shape_t)

    def _op_Transpose(self, node: _Node, a: list[Value]) -> torch.Tensor:
        perm = node.attrs.get("perm") or list(range(a[0].dim()))[::-1]
        return a[0].permute(*perm)

    def _axes(self, node: _Node, a: list[Value]) -> list[int] | None:
        if len(node.inputs) > 1 and node.inputs[1]:
            return self._ints(node.inputs[1], a[1])
        axes = node.attrs.get("axes")
        return None if axes is None else [int(v) for v in axes]

    def _op_Squeeze(self, node: _Node, a: list[Value]) -> torch.Tensor:
        axes = self._axes(node, a)
        x = a[0]
        if axes is None:
            return x.squeeze()
        for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
            x = x.squeeze(ax)
        return x

    def _op_Unsqueeze(self, node: _Node, a: list[Value]) -> torch.Tensor:
        axes = self._axes(node, a) or []
        x = a[0]
        rank = x.dim() + len(axes)
        for ax in sorted(ax % rank for ax in axes):
            x = x.unsqueeze(ax)
        return x

    def _op_Concat(self, node: _Node, a: list[Value]) -> torch.Tensor:
        parts = [t for t in a if t is not None and t.numel() > 0] or [t for t in a if t is not None]
        return torch.cat(parts, dim=int(node.attrs["axis"]))

    def _op_Split(self, node: _Node, a: list[Value]) -> tuple[torch.Tensor, ...]:
        x = a[0]
        axis = int(node.attrs.get("axis", 0))
        if len(node.inputs) > 1 and node.inputs[1]:
            sizes = self._ints(node.inputs[1], a[1])
        elif "split" in node.attrs:
            sizes = [int(v) for v in node.attrs["split"]]
        else:
            n = int(node.attrs.get("num_outputs", len(node.outputs)))
            size = -(-x.shape[axis] // n)
            sizes = [min(size, x.shape[axis] - i * size) for i in range(n)]
        if (
            len(sizes) > 1
            and len(set(sizes)) == 1
            and sum(sizes) != x.shape[axis]
            and x.shape[axis] % len(sizes) == 0
        ):  # an even split stays even once the channels are pruned
            sizes = [x.shape[axis] // len(sizes)] * len(sizes)
        return torch.split(x, sizes, dim=axis)

    def _op_Slice(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x = a[0]
        if self.opset < 10:
            starts, ends = node.attrs["starts"], node.attrs["ends"]
            axes = node.attrs.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            traced = self._traced_slice(node, a)
            if traced is not None:
                return traced
            starts = self._ints(node.inputs[1], a[1])
            ends = self._ints(node.inputs[2], a[2])
            axes = (
                self._ints(node.inputs[3], a[3])
                if len(a) > 3 and a[3] is not None
                else list(range(len(starts)))
            )
            steps = (
                self._ints(node.inputs[4], a[4])
                if len(a) > 4 and a[4] is not None
                else [1] * len(starts)
            )
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
            axis %= x.dim()
            size = int(x.shape[axis])
            start = start + size if start < 0 else start
            end = end + size if end < 0 else end
            index: list[slice] = [slice(None)] * x.dim()
            if step < 0:  # torch slices need a positive step: flip, then slice the mirrored range
                start = min(max(start, 0), size - 1)
                end = min(max(end, -1), size - 1)
                x = x.flip(axis)
                index[axis] = slice(size - 1 - start, size - 1 - end, -step)
            else:
                index[axis] = slice(min(max(start, 0), size), min(max(end, 0), size), step)
            x = x[tuple(index)]
        return x

    def _traced_slice(self, node: _Node, a: list[Value]) -> torch.Tensor | None:
        """A Slice whose starts or ends are computed (a sequence length, a batch size), while the
        TorchScript exporter traces this module: as tensor operations the tracer follows (Python
        ints would be recorded as the example's sizes). None otherwise, or when its axes or steps
        are computed too or a step is negative."""
        if not torch.jit.is_tracing() or all(self._const(n) is not None for n in node.inputs[1:3]):
            return None
        names = list(node.inputs) + [""] * (5 - len(node.inputs))
        axes_c, steps_c = self._const(names[3]), self._const(names[4])
        if (names[3] and axes_c is None) or (names[4] and steps_c is None):
            return None
        x, starts, ends = a[0], a[1].reshape(-1).to(torch.int64), a[2].reshape(-1).to(torch.int64)
        n = starts.numel()
        axes = [int(v) for v in np.asarray(axes_c).reshape(-1)] if axes_c is not None else range(n)
        steps = (
            [int(v) for v in np.asarray(steps_c).reshape(-1)] if steps_c is not None else [1] * n
        )
        if any(step <= 0 for step in steps):
            return None
        shape = torch._shape_as_tensor(x)
        zero = torch.zeros((), dtype=torch.int64)
        for i, (axis, step) in enumerate(zip(axes, steps, strict=True)):
            axis %= x.dim()
            size = shape[axis]
            start, end = starts[i], ends[i]
            start = torch.minimum(
                torch.maximum(torch.where(start < 0, start + size, start), zero), size
            )
            end = torch.minimum(torch.maximum(torch.where(end < 0, end + size, end), zero), size)
            index = torch.arange(start, torch.maximum(end, start), step, dtype=torch.int64)
            x = x.index_select(axis, index)
        return x

    def _op_Gather(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x, idx = a
        axis = int(node.attrs.get("axis", 0)) % x.dim()
        idx = idx.to(torch.int64)
        idx = torch.where(idx < 0, idx + x.shape[axis], idx)
        out = torch.index_select(x, axis, idx.reshape(-1))
        return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))

    def _op_GatherElements(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x, idx = a
        axis = int(node.attrs.get("axis", 0)) % x.dim()
        idx = idx.to(torch.int64)
        return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))

    def _op_GatherND(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x, idx = a
        batch = int(node.attrs.get("batch_dims", 0))
        idx = idx.to(torch.int64)
        depth = idx.shape[-1]
        lead = x.shape[:batch]
        flat_x = x.reshape(-1, *x.shape[batch:])  # (B, ...) with the batch dims merged
        flat_i = idx.reshape(flat_x.shape[0], -1, depth)  # (B, M, depth)
        sizes = torch.tensor(x.shape[batch : batch + depth])
        flat_i = torch.where(flat_i < 0, flat_i + sizes, flat_i)
        rows = torch.arange(flat_x.shape[0]).reshape(-1, 1).expand(-1, flat_i.shape[1])
        picked = flat_x[(rows, *flat_i.unbind(-1))]  # (B, M, rest...)
        return picked.reshape(*lead, *idx.shape[batch:-1], *x.shape[batch + depth :])

    def _op_Shape(self, node: _Node, a: list[Value]) -> torch.Tensor:
        shape = torch._shape_as_tensor(a[0])
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        return shape[start:end] if (start or end is not None) else shape

    def _op_Size(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return torch._shape_as_tensor(a[0]).prod()

    def _traced_shape(self, name: str, value: Value) -> list[Any] | None:
        """A computed shape while the TorchScript ONNX exporter traces this module: its entries as
        0-d tensors, which the tracer follows (Python ints would be recorded as constants, and the
        export would only run at the example's batch size). None otherwise."""
        if self._const(name) is not None or value is None or not torch.jit.is_tracing():
            return None
        return list(value.reshape(-1).to(torch.int64).unbind(0))

    def _op_Expand(self, node: _Node, a: list[Value]) -> torch.Tensor:
        traced = self._traced_shape(node.inputs[1], a[1])
        if traced is not None:  # ONNX Expand broadcasts both ways: as adding zeros of that shape
            zeros = torch.zeros(traced, dtype=a[0].dtype)
            return torch.logical_or(a[0], zeros) if a[0].dtype == torch.bool else a[0] + zeros
        shape = self._ints(node.inputs[1], a[1])
        return a[0].expand(torch.broadcast_shapes(tuple(a[0].shape), tuple(shape)))

    def _op_Tile(self, node: _Node, a: list[Value]) -> torch.Tensor:
        return a[0].repeat(*self._ints(node.inputs[1], a[1]))

    def _op_Cast(self, node: _Node, a: list[Value]) -> torch.Tensor:
        to = int(node.attrs["to"])
        if to not in _ONNX_DTYPES:
            raise RuntimeError(f"Cast to ONNX type {to} is not supported")
        return a[0].to(_ONNX_DTYPES[to])

    def _op_ConstantOfShape(self, node: _Node, a: list[Value]) -> torch.Tensor:
        value = node.attrs.get("value")
        fill = (
            torch.from_numpy(np.array(value).reshape(-1)[:1])
            if value is not None
            else torch.zeros(1)
        )
        traced = self._traced_shape(node.inputs[0], a[0])
        if traced is not None:
            return (
                torch.full(traced, fill.item(), dtype=fill.dtype)
                if traced
                else fill.reshape(()).clone()
            )
        shape = self._ints(node.inputs[0], a[0])
        return (
            fill.expand(shape).clone() if shape else fill.reshape(()).clone()
        )  # an empty shape: a scalar

    def _op_Range(self, node: _Node, a: list[Value]) -> torch.Tensor:
        start, limit, delta = a
        if torch.jit.is_tracing():  # 0-d tensors: the tracer follows them (a computed length)
            return torch.arange(start, limit, delta, dtype=start.dtype)
        return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)

    def _op_Dropout(self, node: _Node, a: list[Value]) -> tuple[torch.Tensor, torch.Tensor]:
        return a[0], torch.ones_like(a[0], dtype=torch.bool)

    def _op_Pad(self, node: _Node, a: list[Value]) -> torch.Tensor:
        x = a[0]
        mode = node.attrs.get("mode", "constant")
        if self.opset < 11:
            pads, value = list(node.attrs["pads"]), float(node.attrs.get("value", 0.0))
            axes = list(range(x.dim()))
        else:
            pads = self._ints(node.inputs[1], a[1])
            value = float(a[2].item()) if len(a) > 2 and a[2] is not None else 0.0
            axes = (
                self._ints(node.inputs[3], a[3])
                if len(a) > 3 and a[3] is not None
                else list(range(x.dim()))
            )
        full = [0] * (2 * x.dim())
        n = len(axes)
        for i, axis in enumerate(axes):
            axis %= x.dim()
            full[axis], full[x.dim() + axis] = pads[i], pads[n + i]
        torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}.get(mode)
        if torch_mode is None:
            raise RuntimeError(f"Pad mode {mode!r} is not supported")
        torch_pads = _torch_pads(full)
        while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
            torch_pads = torch_pads[
                :-2
            ]  # leading (batch, channel) dims unpadded: reflect/edge need that
        if torch_mode == "constant":
            return F.pad(x, torch_pads, value=value)
        return F.pad(x, torch_pads, mode=torch_mode)


for _op, _fn in _UNARY.items():
    setattr(OnnxModule, f"_op_{_op}", lambda self, node, a, _fn=_fn: _fn(a[0]))
for _op, _fn in _BINARY.items():
    setattr(OnnxModule, f"_op_{_op}", lambda self, node, a, _fn=_fn: _fn(a[0], a[1]))


# --- helpers -------------------------------------------------------------------------------------


def _fold(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], values: list[Value]
) -> torch.Tensor:
    out = values[0]
    for v in values[1:]:
        out = fn(out, v)
    assert out is not None
    return out


def _torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] (spatial dims) -> F.pad order (last dim first)."""
    dims = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(dims)):
        out += [int(pads[i]), int(pads[dims + i])]
    return out


def _same_pads(
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    mode: str,
) -> list[int]:
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=False):
        out = -(-int(size) // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - int(size), 0)
        small = total // 2
        begin, end = (small, total - small) if mode == "SAME_UPPER" else (total - small, small)
        begins.append(begin)
        ends.append(end)
    return begins + ends


def _owned(node: _Node, name: str) -> bool:
    """Is ``name`` a weight held by ``node``'s layer (so not needed as a buffer)?"""
    if node.module is None:
        return False
    if node.op in ("Conv", "BatchNormalization", "LayerNormalization", "Linear"):
        return name != node.inputs[0]
    if (
        node.op == "Gemm"
    ):  # a constant C is kept too: added in forward when not folded into the bias
        return name == node.inputs[1]
    if node.op == "Embedding":
        return name == node.inputs[0]
    return False


def _foldable_bias(
    matmul: Any, consumers: dict[str, list[Any]], consts: dict[str, np.ndarray], graph_output: str
) -> Any:
    """The ``Add`` of a constant 1-D bias that alone consumes ``matmul``'s output, if any."""
    out = matmul.output[0]
    users = consumers.get(out, [])
    if (
        out == graph_output
        or len(users) != 1
        or users[0].op_type != "Add"
        or users[0].domain not in ("", "ai.onnx")
    ):
        return None
    add = users[0]
    other = [i for i in add.input if i != out]
    if len(other) != 1 or other[0] not in consts:
        return None
    bias = consts[other[0]]
    width = consts[matmul.input[1]].shape[1]
    if bias.ndim == 1 and bias.shape[0] in (1, width):
        return add
    return None


def _resize_mode(node: Any, source: str) -> bool:
    """Is this Resize one ``F.interpolate`` computes exactly (linear or cubic on 1-3 spatial
    dimensions, half-pixel or align-corners coordinates, no antialiasing, N and C kept)?"""
    attrs = _attributes(node, source)
    mode, coords = (
        attrs.get("mode", "nearest"),
        attrs.get("coordinate_transformation_mode", "half_pixel"),
    )
    if mode not in ("linear", "cubic") or coords not in (
        "half_pixel",
        "pytorch_half_pixel",
        "align_corners",
    ):
        return False
    if (
        attrs.get("antialias", 0)
        or attrs.get("exclude_outside", 0)
        or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch"
        or float(attrs.get("cubic_coeff_a", -0.75)) != -0.75
        or attrs.get("axes") is not None
    ):
        return False
    return len(node.input) >= 3


def _is_flatten(
    node: Any, consts: dict[str, np.ndarray], shapes: dict[str, list[int | None]]
) -> bool:
    """A Reshape of (N, C, ...) to the constant (N or -1, C * ...): a flatten whose width must
    follow
    the channels when they are pruned."""
    if len(node.input) < 2 or node.input[1] not in consts:
        return False
    target = [int(v) for v in np.asarray(consts[node.input[1]]).reshape(-1)]
    src = shapes.get(node.input[0])
    if src is None or len(src) < 3 or len(target) != 2 or any(d is None for d in src[1:]):
        return False
    width = math.prod(d for d in src[1:] if d is not None)
    return target[1] == width and (target[0] in (-1, 0) or target[0] == src[0])


def _keeps_last(
    node: Any,
    consts: dict[str, np.ndarray],
    shapes: dict[str, list[int | None]],
    producers: dict[str, Any],
) -> bool:
    """A Reshape that keeps the input's last dimension (``[-1, 768]`` around a linear layer,
    constant
    or computed): that dimension then follows the channels when they are pruned."""
    src = shapes.get(node.input[0])
    if len(node.input) < 2 or not src or len(src) < 2 or src[-1] is None or src[-1] <= 1:
        return False
    if node.input[1] in consts:
        target = [int(v) for v in np.asarray(consts[node.input[1]]).reshape(-1)]
        return len(target) >= 2 and target[-1] == src[-1]
    # A computed shape: what inference says of the output, or a Concat ending in the width as a
    # constant.
    target = shapes.get(node.output[0]) or []
    if len(target) >= 2 and target[-1] == src[-1]:
        return True
    concat = producers.get(node.input[1])
    if (
        concat is None
        or concat.op_type != "Concat"
        or len(concat.input) < 2
        or concat.input[-1] not in consts
    ):
        return False
    last = np.asarray(consts[concat.input[-1]]).reshape(-1)
    return last.size == 1 and int(last[0]) == src[-1]


def _heads_reshape(
    node: Any, consts: dict[str, np.ndarray], shapes: dict[str, list[int | None]]
) -> str:
    """``split`` for a Reshape to a constant shape that splits the last dimension into heads
    ((.., H*D) -> (.., H, D)), ``merge`` for the reverse; the head count then follows heads pruned
    whole (an exporter that wrote the count as a constant). Empty otherwise."""
    src = shapes.get(node.input[0])
    if (
        len(node.input) < 2
        or node.input[1] not in consts
        or not src
        or any(d is None for d in src[-2:])
    ):
        return ""
    target = [int(v) for v in np.asarray(consts[node.input[1]]).reshape(-1)]
    if (
        len(target) == len(src) + 1
        and target[-1] > 1
        and target[-2] > 1
        and target[-2] * target[-1] == src[-1]
    ):
        return "split"
    if (
        len(target) == len(src) - 1
        and len(src) >= 3
        and target[-1] == src[-2] * src[-1]
        and src[-2] > 1
    ):
        return "merge"
    return ""


def _inferred(model: Any) -> tuple[dict[str, list[int | None]], dict[str, int]]:
    """Shapes and element types ONNX shape inference finds (a help, never required)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}, {}
    shapes: dict[str, list[int | None]] = {}
    types: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.elem_type:
            types[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
            ]
    return shapes, types


def _input_role(node: Any, index: int, opset: int) -> str:
    """The schema's name of input ``index`` (``W``, ``R``...), or ``input{index}``."""
    import onnx

    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
        if index < len(schema.inputs) and _QUALIFIED.match(schema.inputs[index].name):
            return schema.inputs[index].name
    except Exception:  # a contrib op: onnx does not know its schema
        pass
    return f"input{index}"


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.detach().contiguous().numpy().tobytes()).hexdigest()


def _attributes(node: Any, source: str) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type in (attr.GRAPH, attr.GRAPHS):
            raise ModelLoadError(
                f"{source}: node {node.name!r} ({node.op_type}) holds a subgraph: control flow "
                "(If, Loop, Scan) is not supported"
            )
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif hasattr(value, "dims") and hasattr(value, "data_type"):  # TensorProto
            value = numpy_helper.to_array(value)
        elif isinstance(value, list):
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        attrs[attr.name] = value
    return attrs


def _constant_value(node: Any, source: str) -> np.ndarray:
    attrs = _attributes(node, source)
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            value = attrs[key]
            if key.startswith("value_int"):
                return np.array(value, dtype=np.int64)
            if key.startswith("value_float"):
                return np.array(value, dtype=np.float32)
            return np.asarray(value)
    raise ModelLoadError(
        f"{source}: Constant node {node.name!r} has no supported value attribute ({sorted(attrs)})"
    )


def _toposort(nodes: list[Any], known: set[str], source: str) -> list[Any]:
    """Nodes in an order where every input is computed first (ONNX files usually are already)."""
    available = set(known)
    ordered, pending = [], list(nodes)
    while pending:
        progress = False
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
                progress = True
            else:
                rest.append(n)
        if not progress:
            missing = sorted({i for n in rest for i in n.input if i not in available})[:5]
            raise ModelLoadError(f"{source}: the graph reads values nothing computes ({missing})")
        pending = rest
    return ordered


def _ort_reason(e: Exception) -> str:
    """ONNX Runtime's message without its error code and C++ source location."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    if text.startswith(
        "/"
    ):  # "/onnxruntime_src/...cc:256 onnxruntime::Model::Model(...) The reason"
        tail = re.search(r"\)\s+([^()]+)$", text)
        text = tail.group(1) if tail else text
    return text


def _check_external_data(model: Any, path: Path) -> None:
    """External tensors: only plain file names in the model's folder (no paths, no '..')."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            if not location or Path(location).name != location or location in (".", ".."):
                raise ModelLoadError(
                    f"{path}: initializer {tensor.name!r} points outside the model's folder "
                    f"({location!r}); save the model as one file"
                )
            if not (path.parent / location).is_file():
                raise ModelLoadError(
                    f"{path}: initializer {tensor.name!r} is stored in {location!r}, "
                    "which is missing next to the model"
                )


def _constant_nodes(model: Any) -> int:
    """How many nodes (other than ``Constant``) compute only from constants: a computed bias, a
    reshaped or scaled weight, an ``Identity`` of a deduplicated initializer..."""
    known = {t.name for t in model.graph.initializer} | {""}
    count = 0
    for node in model.graph.node:  # topological in a valid graph
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            known.update(node.output)
        elif node.input and node.domain in ("", "ai.onnx") and all(i in known for i in node.input):
            known.update(node.output)
            count += 1
    return count


def _fold_constant_subgraphs(model: Any, path: Path) -> tuple[Any, int]:
    """Fold the graph's constant subgraphs into initializers with onnxscript's optimizer (the
    constant folding torch's dynamo exporter runs), so that weights computed from constants
    become layers like any other. Returns the model and how many nodes were folded."""
    count = _constant_nodes(model)
    if not count:
        return model, 0
    import onnx_ir.passes.common as common_passes
    from onnxscript import ir
    from onnxscript.optimizer import fold_constants_ir

    try:
        graph = ir.serde.deserialize_model(model)
        fold_constants_ir(graph, input_size_limit=1 << 31, output_size_limit=1 << 31)
        common_passes.RemoveUnusedNodesPass()(graph)
        folded = ir.serde.serialize_model(graph)
    except Exception as e:
        raise ModelLoadError(
            f"{path}: {count} node(s) compute only from constants, and folding them failed "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
        ) from None
    return folded, count - _constant_nodes(folded)


def load_onnx(path: str | Path) -> OnnxModule:
    """Read an ONNX file into an ``OnnxModule`` (eval mode).

    Raises:
        ModelLoadError: not an ONNX file, a corrupt or invalid graph, unsupported ops (listed), or
            external data outside the model's folder.
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    data = read_model_file(path)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:
        raise ModelLoadError(
            f"{path}: not a readable ONNX model ({type(e).__name__}:"
            f" {str(e).splitlines()[0] if str(e) else 'corrupt or truncated'})"
        ) from None
    if not model.graph.node:
        raise ModelLoadError(
            f"{path}: not an ONNX model (no graph nodes; the file may be corrupt or truncated)"
        )
    _check_external_data(model, path)
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        raise ModelLoadError(
            f"{path}: cannot read its external data ({type(e).__name__}: {e})"
        ) from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{path}: invalid ONNX model ({first})") from None
    model, folded = _fold_constant_subgraphs(model, path)
    module = OnnxModule(model, source=str(path)).eval()
    module.folded_nodes = folded
    if module.ort_ops:  # those nodes run in ONNX Runtime: it must know them
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(module._original, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelLoadError(
                f"{path}: uses {list(module.ort_ops)}, which the interpreter runs in ONNX Runtime, "
                f"and ONNX Runtime cannot load the graph: {_ort_reason(e)}"
            ) from None
    return module
