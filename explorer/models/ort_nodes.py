"""ONNX nodes the interpreter has no torch equivalent for, run by ONNX Runtime one node at a time.

An ``OrtNode`` holds one node of the user's graph as plain data. ``run_node`` evaluates it on
torch tensors through a one-node ONNX Runtime session (built once per node and input types, shared
by every copy of the model), and exports back as the very same node, so a model holding such nodes
still exports to ONNX like any other. There is no gradient through them: a graph that needs one
cannot be fine-tuned, and its channels cannot be followed (structured pruning is off for it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.errors import RecoverError

__all__ = ["OrtNode", "OrtWeight", "run_node"]

# Ops whose weights we know: which inputs are weights, and the permutation of the file's layout
# that puts the output dimension first and the reduction dimensions after (as a conv's weight),
# so that N:M groups run along what the op sums over. Other ops: every float initializer of rank
# >= 2 they read, as it is.
LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "ConvTranspose": ((1,), (1, 0)),  # (in, out/groups, k...) -> (out/groups, in, k...)
    # W and R: (dirs, gates*hidden, in) -> (gates*hidden, dirs, in); B (the biases) stays dense.
    "LSTM": ((1, 2), (1, 0, 2)),
    "GRU": ((1, 2), (1, 0, 2)),
    "RNN": ((1, 2), (1, 0, 2)),
}

_SESSIONS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class OrtNode:
    """One ONNX node (serialized) and what a one-node graph around it needs."""

    label: str  # ``Resize`` or ``com.microsoft.Gelu``: what messages call it
    node: bytes  # the NodeProto
    opsets: tuple[tuple[str, int], ...]  # the model's opset imports
    ir_version: int
    output_types: tuple[int, ...]  # ONNX element type per output, 0 where inference did not tell

    @classmethod
    def of(cls, node: Any, model: Any, types: dict[str, int]) -> OrtNode:
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        return cls(
            label=f"{domain}.{node.op_type}" if domain else node.op_type,
            node=node.SerializeToString(),
            opsets=tuple((o.domain, o.version) for o in model.opset_import),
            ir_version=model.ir_version,
            output_types=tuple(types.get(o, 0) for o in node.output),
        )

    def proto(self) -> Any:
        import onnx

        return onnx.NodeProto.FromString(self.node)

    def session(self, feeds: dict[str, np.ndarray]) -> Any:
        """The one-node session for inputs of these element types (cached)."""
        key = (self.node, self.opsets, tuple((n, a.dtype.str) for n, a in feeds.items()))
        with _LOCK:
            session = _SESSIONS.get(key)
        if session is not None:
            return session
        import onnxruntime as ort
        from onnx import helper

        node = self.proto()
        inputs = [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), None)
            for n, a in feeds.items()
        ]
        first = inputs[0].type.tensor_type.elem_type if inputs else 1
        outputs = [
            helper.make_tensor_value_info(n, t or first, None)
            for n, t in zip(node.output, self.output_types, strict=False)
            if n
        ]
        graph = helper.make_graph([node], "node", inputs, outputs)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets],
            ir_version=self.ir_version,
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        with _LOCK:
            if len(_SESSIONS) > 512:  # many input types seen: start again rather than grow forever
                _SESSIONS.clear()
            _SESSIONS[key] = session
        return session

    def symbolic_attributes(self) -> dict[str, Any]:
        """The node's attributes as the TorchScript exporter's ``g.op`` keywords."""
        from onnx import AttributeProto, numpy_helper

        out: dict[str, Any] = {}
        for a in self.proto().attribute:
            if a.type == AttributeProto.INT:
                out[f"{a.name}_i"] = a.i
            elif a.type == AttributeProto.FLOAT:
                out[f"{a.name}_f"] = a.f
            elif a.type == AttributeProto.STRING:
                out[f"{a.name}_s"] = a.s.decode("utf-8")
            elif a.type == AttributeProto.TENSOR:
                out[f"{a.name}_t"] = torch.from_numpy(np.array(numpy_helper.to_array(a.t)))
            elif a.type == AttributeProto.INTS:
                out[f"{a.name}_i"] = list(a.ints)
            elif a.type == AttributeProto.FLOATS:
                out[f"{a.name}_f"] = list(a.floats)
            elif a.type == AttributeProto.STRINGS:
                out[f"{a.name}_s"] = [s.decode("utf-8") for s in a.strings]
            else:
                raise NotImplementedError(
                    f"{self.label}: attribute {a.name!r} of type {a.type} cannot be exported"
                )
        return out


class OrtWeight(nn.Module):
    """A weight initializer read by a node that runs in ONNX Runtime (an LSTM's ``W``, a
    ConvTranspose kernel), held as a layer so that unstructured and N:M methods prune it.

    ``weight`` is stored output dimension first (``perm`` of the file's layout, see ``LAYOUTS``);
    ``value()`` gives it back in the file's layout. No MACs are counted for it.
    """

    def __init__(
        self, value: torch.Tensor, op: str, role: str, perm: tuple[int, ...] | None
    ) -> None:
        super().__init__()
        full = (*perm, *range(len(perm), value.dim())) if perm else None
        self.perm = full
        self.weight = nn.Parameter(value.permute(full).contiguous() if full else value)
        self.bias = None
        self.out_channels = self.weight.shape[0]
        self.display_type = f"{op}.{role}"

    def value(self) -> torch.Tensor:
        if self.perm is None:
            return self.weight
        return self.weight.permute(tuple(int(i) for i in np.argsort(self.perm)))


class _RunInOrt(torch.autograd.Function):
    """Forward: ONNX Runtime. Export: the original node. Backward: an error naming the op."""

    @staticmethod
    def forward(ctx: Any, spec: OrtNode, *inputs: torch.Tensor | None) -> Any:
        ctx.label = spec.label
        node = spec.proto()
        feeds = {
            name: np.ascontiguousarray(value.detach().cpu().numpy())
            for name, value in zip(node.input, inputs, strict=False)
            if name and value is not None
        }
        wanted = [n for n in node.output if n]
        results = dict(zip(wanted, spec.session(feeds).run(wanted, feeds), strict=False))
        outs = tuple(
            torch.from_numpy(np.array(results[n])) if n else torch.empty(0) for n in node.output
        )
        return outs[0] if len(outs) == 1 else outs

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> Any:
        raise RecoverError(
            f"no gradient through {ctx.label}: that op runs in ONNX Runtime, so this graph "
            "cannot be fine-tuned here"
        )

    @staticmethod
    def symbolic(g: Any, spec: OrtNode, *inputs: Any) -> Any:
        node = spec.proto()
        args = list(inputs)
        while args and args[-1] is None:  # trailing optional inputs can be left out
            args.pop()
        for k, value in enumerate(args):
            if value is None:  # an optional input in the middle: an empty name in ONNX
                args[k] = g.op("prim::Constant")
                args[k].setType(torch._C.OptionalType.ofTensor())
        op = (
            f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        )
        return g.op(op, *args, outputs=len(node.output), **spec.symbolic_attributes())


def run_node(spec: OrtNode, inputs: list[torch.Tensor | None]) -> Any:
    """Evaluate ``spec`` on ``inputs`` (None: an absent optional input); one tensor or a tuple."""
    return _RunInOrt.apply(spec, *inputs)
