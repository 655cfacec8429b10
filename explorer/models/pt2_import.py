"""Load a program saved with ``torch.export.save`` (``.pt2``) without running anything it carries.

One concern: the safe door for ``.pt2`` files (the archive's checks, then the program's layers).

``torch.export.load`` is not safe on a file from someone else: in torch 2.13 it unpickles tensor
subclasses, custom objects and (on a failed safe load) the example inputs, ``exec``s the program's
guard code, evaluates its shape expressions with ``sympy.sympify`` (``eval``), imports modules
named in its input/output specs, and loads compiled AOTInductor libraries. So before anything is
deserialized, the archive is checked: only raw tensors (no pickles), no compiled code, example
inputs that load with ``weights_only=True``, node targets that are registered operators, shape
expressions made only of sympy names and numbers, no module imports, and names (which torch.fx
pastes into the Python code it generates) that are plain identifiers; guard code is dropped. What
fails a check is refused with the reason.

The program's graph then gets real layers back: every ``aten.conv*``, ``aten.linear``,
``aten.batch_norm`` and ``aten.layer_norm`` whose weights are the program's own parameters becomes
an ``nn.Conv*d``, ``nn.Linear``, batch norm or ``nn.LayerNorm`` module named after the original
one (``features.0``), so Torch-Pruning's DepGraph can remove channels and plans written for the
original model apply unchanged.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from explorer.errors import ModelLoadError
from explorer.inputs import Inputs, run_model
from explorer.models.files import read_model_file
from explorer.models.outputs import logits_of
from explorer.tolerance import REL_TOL, relative_error

__all__ = ["TORCH_VERSION_CHECKED", "check_archive", "load_program"]

# The checks below follow torch 2.13's loader; another version may read the archive differently.
TORCH_VERSION_CHECKED = (2, 13)

_ALLOWED_FILES = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
}
_ALLOWED_DIRS = ("data/weights/", "data/constants/", "data/sample_inputs/", "models/", "extra/")
_OP_NAMESPACES = {"aten", "prims", "higher_order"}
_OPERATOR_FUNCS = {
    "getitem",
    "add",
    "sub",
    "mul",
    "floordiv",
    "truediv",
    "mod",
    "neg",
    "pow",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and_",
    "or_",
    "not_",
    "pos",
    "abs",
}
# aten operators spelled as Python's dunder methods (a text model's mask: ``mask & causal``); any
# other name with '__' could reach a Python attribute of torch.ops instead of an operator.
_ATEN_DUNDER_OPS = {
    f"__{op}__"
    for op in ("and", "or", "xor", "lshift", "rshift", "iand", "ior", "ixor", "ilshift", "irshift")
}
_TARGET_OPS = re.compile(
    r"^torch\.ops\.([a-z_][a-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z_][A-Za-z0-9_]*)?$"
)
_TARGET_SYM = re.compile(r"^torch\.(_?sym_[a-z_]+|_check|_check_is_size)$")
_TARGET_MATH = re.compile(r"^math\.[a-z][a-z0-9_]*$")
# Names a shape expression may use (sympy's srepr and torch's sympy functions).
_SYMPY_NAMES = {
    "Symbol",
    "Integer",
    "Rational",
    "Float",
    "Add",
    "Mul",
    "Pow",
    "Max",
    "Min",
    "Abs",
    "Eq",
    "Ne",
    "Lt",
    "Le",
    "Gt",
    "Ge",
    "StrictLessThan",
    "StrictGreaterThan",
    "LessThan",
    "GreaterThan",
    "Equality",
    "Unequality",
    "And",
    "Or",
    "Not",
    "true",
    "false",
    "True",
    "False",
    "None",
    "oo",
    "zoo",
    "nan",
    "Infinity",
    "NegativeInfinity",
    "Piecewise",
    "ExprCondPair",
    "Tuple",
    "floor",
    "ceiling",
    "Mod",
    "sqrt",
    "int_oo",
    "IntInfinity",
    "NegativeIntInfinity",
    "Half",
    "One",
    "Zero",
    "NegativeOne",
    "FloorDiv",
    "ModularIndexing",
    "Where",
    "PythonMod",
    "CleanDiv",
    "CeilToInt",
    "FloorToInt",
    "CeilDiv",
    "LShift",
    "RShift",
    "PowByNatural",
    "FloatPow",
    "FloatTrueDiv",
    "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat",
    "TruncToInt",
    "RoundToInt",
    "RoundDecimal",
    "ToFloat",
    "Identity",
    "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or",
}
# Names that end up in the Python code torch.fx generates for the program: variables (node and
# argument names) are plain dotted identifiers only, so a name cannot carry code. Attribute paths
# (weight names) may also hold '-' (torchvision's RegNet names a block 'block1-0'): torch.fx writes
# such a part as getattr(module, "block1-0"), a quoted string, which can hold no quote here.
_DOTTED = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_PATH = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_CODE_NAMES = {"name", "as_name", "arg_name"}
_PATH_NAMES = {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn"}
_EXPR_TOKEN = re.compile(
    r"\s+|(?P<num>\d+(\.\d+)?([eE][+-]?\d+)?)|(?P<str>'[A-Za-z0-9_.+\-]*')"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<kw>=(?!=))|(?P<op>==|!=|<=|>=|\*\*|[(),+\-*/%<>])"
)


def _refuse(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(f"{path}: refused: {why}")


# --- checks before deserializing -----------------------------------------------------------------


def _check_expr(expr: str, path: Path) -> None:
    """A shape expression may hold only sympy names, symbol names, numbers and operators."""
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None:
            raise _refuse(
                path,
                f"a shape expression holds {expr[pos : pos + 20]!r} (only sympy terms are read)",
            )
        name = m.group("name")
        if name is not None:
            is_kwarg = re.match(r"\s*=(?!=)", expr[m.end() :]) is not None
            if "__" in name or not (
                name in _SYMPY_NAMES
                or re.fullmatch(r"[a-z]+\d+", name)
                or (is_kwarg and re.fullmatch(r"[a-z_]+", name))
            ):
                raise _refuse(
                    path, f"a shape expression uses the name {name!r} (only sympy terms are read)"
                )
        pos = m.end()


def _check_target(target: str, path: Path) -> None:
    m = _TARGET_OPS.match(target)
    ok = (
        (
            m is not None
            and m.group(1) in _OP_NAMESPACES
            and (
                "__" not in target
                or (
                    m.group(1) == "aten"
                    and m.group(2) in _ATEN_DUNDER_OPS
                    and "__" not in (m.group(3) or "")
                )
            )
        )
        or _TARGET_SYM.match(target) is not None
        or _TARGET_MATH.match(target) is not None
        or (target.startswith("_operator.") and target[len("_operator.") :] in _OPERATOR_FUNCS)
    )
    if not ok:
        raise _refuse(
            path, f"the program calls {target!r}, which is not a registered torch operator"
        )


def _check_name(name: Any, path: Path, pattern: re.Pattern[str] = _DOTTED) -> None:
    if isinstance(name, str) and name and not pattern.match(name):
        raise _refuse(
            path, f"the program names something {name[:60]!r} (only identifiers are read)"
        )


def _walk(value: Any, path: Path, depth: int = 0, names: bool = True) -> None:
    """Check node targets, shape expressions, names and embedded JSON (pytree specs) everywhere.

    ``names``: check the names torch.fx turns into code (not inside node metadata, which is
    dropped after loading).
    """
    if depth > 200:
        raise _refuse(path, "the program's description is nested too deeply")
    if isinstance(value, dict):
        if "__enum__" in value or "default_factory_module" in value:
            raise _refuse(path, "an input/output spec names a Python type to import")
        if isinstance(value.get("target"), str) and "inputs" in value and "outputs" in value:
            _check_target(value["target"], path)
        if names:
            for key in _CODE_NAMES & value.keys():
                _check_name(value[key], path)
            for key in _PATH_NAMES & value.keys():
                _check_name(value[key], path, _PATH)
            for name in value.get("forward_arg_names") or []:
                _check_name(name, path)
        expr = value.get("expr_str")
        if isinstance(expr, str):
            _check_expr(expr, path)
        for key, v in value.items():
            _walk(v, path, depth + 1, names and key != "metadata")
    elif isinstance(value, list):
        for v in value:
            _walk(v, path, depth + 1, names)
    elif isinstance(value, str) and value[:1] in ("{", "["):
        try:
            inner = json.loads(value)
        except ValueError:
            return
        _walk(inner, path, depth + 1, names)


def check_archive(data: bytes, path: Path) -> None:
    """Refuse a .pt2 archive that torch's loader could not read without running code from it.

    Raises:
        ModelLoadError: naming the file and the reason.
    """
    if (
        tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
        != TORCH_VERSION_CHECKED
    ):
        raise _refuse(
            path,
            "the .pt2 safety checks were written for torch "
            f"{'.'.join(map(str, TORCH_VERSION_CHECKED))}, this is torch {torch.__version__}",
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelLoadError(
            f"{path}: not a torch.export archive (corrupt or truncated: {e})"
        ) from None
    if any(n.endswith("data.pkl") for n in names):
        raise _refuse(path, "this is a torch.save file (a pickle), not a torch.export.save program")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or not names:
        raise ModelLoadError(
            f"{path}: not a torch.export archive (expected one top folder, found"
            f" {sorted(roots)[:3]})"
        )
    root = roots.pop() + "/"
    rel = [n[len(root) :] for n in names]
    for name in rel:
        if name.startswith("data/aotinductor/"):
            raise _refuse(
                path, "the archive holds compiled AOTInductor code; save the program alone"
            )
        if (
            name
            and not name.endswith("/")
            and name not in _ALLOWED_FILES
            and not name.startswith(_ALLOWED_DIRS)
        ):
            raise _refuse(path, f"unexpected file {name!r} in the archive")

    def read(name: str) -> bytes:
        try:
            return archive.read(root + name)
        except KeyError:
            raise ModelLoadError(f"{path}: not a torch.export archive (no {name})") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise ModelLoadError(f"{path}: corrupt archive ({name}: {e})") from None

    if read("archive_format").strip() != b"pt2":
        raise ModelLoadError(f"{path}: not a torch.export archive (archive_format is not pt2)")
    models = [n for n in rel if n.startswith("models/") and n.endswith(".json")]
    if not models:
        raise ModelLoadError(f"{path}: the archive holds no program (models/*.json)")
    for model_file in models:
        model = model_file[len("models/") : -len(".json")]
        for kind in ("weights", "constants"):
            if f"data/{kind}/{model}.pt" in rel:
                raise _refuse(
                    path,
                    f"its {kind} are stored in the old pickled format; save it again with"
                    " torch.export.save",
                )
            for name in [f"data/{kind}/{model}_{kind}_config.json"]:
                try:
                    config = json.loads(read(name)).get("config", {})
                except (ValueError, AttributeError):
                    raise ModelLoadError(f"{path}: corrupt archive ({name} is not JSON)") from None
                for fqn, meta in config.items():
                    if not _PATH.match(str(fqn)):
                        raise _refuse(
                            path,
                            f"a {kind[:-1]} is named {str(fqn)[:60]!r} (only identifiers are read)",
                        )
                    if (
                        not isinstance(meta, dict)
                        or meta.get("use_pickle")
                        or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_"))
                    ):
                        raise _refuse(
                            path,
                            f"{kind[:-1]} {fqn!r} is a pickled object; only plain tensors are read",
                        )
        sample = f"data/sample_inputs/{model}.pt"
        if sample in rel:
            try:
                torch.load(io.BytesIO(read(sample)), weights_only=True)
            except Exception as e:
                raise _refuse(
                    path, f"its example inputs need unpickling ({type(e).__name__})"
                ) from None
        try:
            program = json.loads(read(model_file))
        except (ValueError, UnicodeDecodeError):
            raise ModelLoadError(f"{path}: corrupt archive ({model_file} is not JSON)") from None
        _walk(program, path)


# --- output structures ------------------------------------------------------------------------

# Containers torch's pytree deserializes itself. Another type named in an output spec (a Hugging
# Face ModelOutput) would have to be imported and registered first: it is read as the plain dict
# of its fields instead, and its logits are the model's output.
_PLAIN_SPECS = {"builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict", None}


def _plain_spec(node: Any, renamed: list[str]) -> Any:
    if not isinstance(node, dict):
        return node
    if node.get("type") not in _PLAIN_SPECS:
        renamed.append(str(node["type"]))
        node = {**node, "type": "builtins.dict"}
    return {
        **node,
        "children_spec": [_plain_spec(c, renamed) for c in node.get("children_spec") or []],
    }


def _plain_outputs(data: bytes, path: Path) -> tuple[bytes, str]:
    """The archive with every output spec naming another type read as a dict of the same fields,
    and the name of the type replaced (empty when none was)."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    renamed: list[str] = []
    files: dict[str, bytes] = {}
    for name in archive.namelist():
        content = archive.read(name)
        if name.split("/", 1)[-1].startswith("models/") and name.endswith(".json"):
            program = json.loads(content)
            for entry in program.get("graph_module", {}).get("module_call_graph", []):
                signature = entry.get("signature") or {}
                spec = signature.get("out_spec")
                if isinstance(spec, str):
                    version, tree = json.loads(spec)
                    signature["out_spec"] = json.dumps([version, _plain_spec(tree, renamed)])
            content = json.dumps(program).encode()
        files[name] = content
    if not renamed:
        return data, ""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, content in files.items():
            z.writestr(name, content)
    return out.getvalue(), renamed[0]


def _logits_leaf(program: Any) -> int | None:
    """Which output leaf holds the logits: the one keyed ``logits`` where the program returns a
    dict (or a ModelOutput read as one) of tensors, else None (a single output)."""
    spec = program.call_spec.out_spec
    if spec is None or spec.type is not dict or not isinstance(spec.context, (list, tuple)):
        return None
    keys = list(spec.context)
    if "logits" in keys and all(child.num_leaves == 1 for child in spec.children()):
        return keys.index("logits")
    return None


# --- from an fx graph to layers ------------------------------------------------------------------


def _aten(name: str, overload: str = "default") -> Any:
    return getattr(getattr(torch.ops.aten, name), overload)


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _tensor_attr(gm: fx.GraphModule, node: Any) -> tuple[str, torch.Tensor] | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        try:
            value = gm.get_parameter(node.target)
        except AttributeError:
            try:
                value = gm.get_buffer(node.target)
            except AttributeError:
                return None
        return node.target, value
    return None


def _install(gm: fx.GraphModule, prefix: str, layer: nn.Module, kind: str) -> str:
    """Put ``layer`` at ``prefix`` (replacing the plain container that held its tensors) or next to
    it."""
    parent_name, _, child = prefix.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    current = parent._modules.get(child) if child else None
    own = {n for n, _ in layer.named_parameters()} | {n for n, _ in layer.named_buffers()}
    if (
        current is not None
        and type(current) is nn.Module
        and not current._modules
        and set(current._parameters) | set(current._buffers) <= own | {"num_batches_tracked"}
    ):
        setattr(parent, child, layer)
        return prefix
    base = f"{child or 'layer'}_{kind}"
    name, i = base, 1
    while hasattr(parent, name):
        name, i = f"{base}_{i}", i + 1
    parent.add_module(name, layer)
    return f"{parent_name}.{name}" if parent_name else name


def _only_user(value: fx.Node | None, node: fx.Node) -> bool:
    return value is None or set(value.users) == {node}


def _transposed_weight(gm: fx.GraphModule, node: Any) -> tuple[str, torch.Tensor] | None:
    """``permute(w, [1, 0])`` or ``t(w)`` of a 2-D weight of the program (decomposed linears)."""
    if (
        isinstance(node, fx.Node)
        and node.op == "call_function"
        and len(node.users) == 1
        and (
            node.target == _aten("t")
            or (node.target == _aten("permute") and list(node.args[1]) == [1, 0])
        )
    ):
        w = _tensor_attr(gm, node.args[0])
        if w is not None and w[1].ndim == 2 and len(node.args[0].users) == 1:
            return w
    return None


def _to_layer(
    gm: fx.GraphModule, node: fx.Node
) -> tuple[nn.Module, str, str, list[fx.Node], Any] | None:
    """The layer replacing ``node`` (a conv, linear or norm on the program's own tensors), if any:
    (layer, weight name, kind, the nodes feeding it its tensors, its input)."""
    t = node.target
    if t in (_aten("addmm"), _aten("mm")):  # decomposed linear: addmm(bias, x, t(w)) or mm(x, t(w))
        x, wt = (
            (node.args[1], node.args[2]) if t == _aten("addmm") else (node.args[0], node.args[1])
        )
        w = _transposed_weight(gm, wt)
        stored = None
        if (
            w is None
        ):  # Hugging Face's Conv1D (GPT-2): addmm(bias, x, w) on a weight stored (in, out)
            stored = _tensor_attr(gm, wt)
            if stored is None or stored[1].ndim != 2 or len(wt.users) != 1:
                return None
            w = (stored[0], stored[1].detach().T.contiguous())
        b = _tensor_attr(gm, node.args[0]) if t == _aten("addmm") else None
        if (
            (t == _aten("addmm") and (b is None or b[1].ndim != 1))
            or node.kwargs.get("beta", 1) != 1
            or node.kwargs.get("alpha", 1) != 1
        ):
            return None
        linear = nn.Linear(w[1].shape[1], w[1].shape[0], bias=b is not None)
        linear.weight = (
            _as_param(w[1]) if stored is None else nn.Parameter(w[1], requires_grad=False)
        )
        if b is not None:
            linear.bias = _as_param(b[1])
        feeds = [wt] + ([node.args[0]] if b is not None else [])
        return linear, w[0], "linear", feeds, x
    convs = {_aten(f"conv{d}d", overload) for d in (1, 2, 3) for overload in ("default", "padding")}
    if t in convs or t == _aten("convolution"):
        if t == _aten("convolution"):
            if _arg(node, 6, "transposed", False) or any(_arg(node, 7, "output_padding", [0])):
                return None
            stride, padding, dilation = node.args[3], node.args[4], node.args[5]
            groups = _arg(node, 8, "groups", 1)
        else:
            stride = _arg(node, 3, "stride", 1)
            padding = _arg(node, 4, "padding", 0)
            dilation = _arg(node, 5, "dilation", 1)
            groups = _arg(node, 6, "groups", 1)
        w, b = _tensor_attr(gm, node.args[1]), _tensor_attr(gm, _arg(node, 2, "bias", None))
        if (
            w is None
            or (b is None and _arg(node, 2, "bias", None) is not None)
            or w[1].ndim not in (3, 4, 5)
        ):
            return None
        weight = w[1]
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[weight.ndim - 3](
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=b is not None,
        )
        conv.weight = _as_param(weight)
        if b is not None:
            conv.bias = _as_param(b[1])
        return (
            conv,
            w[0],
            "conv",
            [n for n in (node.args[1], _arg(node, 2, "bias", None)) if isinstance(n, fx.Node)],
            node.args[0],
        )
    if t == _aten("linear"):
        w, b = _tensor_attr(gm, node.args[1]), _tensor_attr(gm, _arg(node, 2, "bias", None))
        if w is None or w[1].ndim != 2 or (b is None and _arg(node, 2, "bias", None) is not None):
            return None
        linear = nn.Linear(w[1].shape[1], w[1].shape[0], bias=b is not None)
        linear.weight = _as_param(w[1])
        if b is not None:
            linear.bias = _as_param(b[1])
        return (
            linear,
            w[0],
            "linear",
            [n for n in (node.args[1], _arg(node, 2, "bias", None)) if isinstance(n, fx.Node)],
            node.args[0],
        )
    if t in (_aten("batch_norm"), _aten("_native_batch_norm_legit_no_training")):
        if t == _aten("batch_norm") and _arg(node, 5, "training", False):
            return None
        tensors = [_tensor_attr(gm, a) for a in node.args[1:5]]
        if any(x is None for x in tensors):
            return None
        (wn, w), (_, b), (_, mean), (_, var) = tensors  # type: ignore[misc]
        momentum, eps = (
            (node.args[6], node.args[7])
            if t == _aten("batch_norm")
            else (node.args[5], node.args[6])
        )
        from explorer.models.onnx_import import AnyRankBatchNorm

        bn = AnyRankBatchNorm(w.shape[0], eps=float(eps), momentum=float(momentum))
        bn.weight, bn.bias = _as_param(w), _as_param(b)
        bn.running_mean, bn.running_var = mean.detach().clone(), var.detach().clone()
        return bn, wn, "bn", [a for a in node.args[1:5] if isinstance(a, fx.Node)], node.args[0]
    if t == _aten(
        "embedding"
    ):  # a lookup table: an nn.Embedding (DepGraph prunes its width with the channels)
        w = _tensor_attr(gm, node.args[0])
        if (
            w is None
            or w[1].ndim != 2
            or any(
                _arg(node, i, k, d) != d
                for i, k, d in ((3, "scale_grad_by_freq", False), (4, "sparse", False))
            )
        ):
            return None
        padding = _arg(node, 2, "padding_idx", -1)
        emb = nn.Embedding(
            w[1].shape[0], w[1].shape[1], padding_idx=None if padding < 0 else padding
        )
        emb.weight = _as_param(w[1])
        return emb, w[0], "emb", [node.args[0]], node.args[1]
    if t == _aten("layer_norm"):
        shape = node.args[1]
        w, b = (
            _tensor_attr(gm, _arg(node, 2, "weight", None)),
            _tensor_attr(gm, _arg(node, 3, "bias", None)),
        )
        if w is None or len(shape) != 1 or (b is None and _arg(node, 3, "bias", None) is not None):
            return None
        ln = nn.LayerNorm(shape[0], eps=float(_arg(node, 4, "eps", 1e-5)), bias=b is not None)
        ln.weight = _as_param(w[1])
        if b is not None:
            ln.bias = _as_param(b[1])
        return ln, w[0], "ln", [a for a in node.args[2:4] if isinstance(a, fx.Node)], node.args[0]
    return None


def _as_param(t: torch.Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach(), requires_grad=False)


def _views(gm: fx.GraphModule) -> Iterator[tuple[fx.Node, Any, Any, Any]]:
    """Every view or reshape of the graph (a snapshot: callers may rewrite them): the node, its
    source, the shape it asks for and the source's example value (None where unknown)."""
    views = {_aten("view"), _aten("reshape"), _aten("_unsafe_view")}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in views:
            continue
        src, shape = node.args[0], node.args[1]
        yield node, src, shape, src.meta.get("val") if isinstance(src, fx.Node) else None


def _free_batch(gm: fx.GraphModule, batch: int | None) -> None:
    """Reshapes that flatten (N, C, ...) to (N, C*...) become ``flatten(x, 1)`` (their width then
    follows pruned channels); a view that hard-codes the example's batch size gets -1 there."""
    for node, src, shape, val in _views(gm):
        if (
            val is None
            or not isinstance(shape, (list, tuple))
            or not shape
            or not all(isinstance(s, int) for s in shape[1:])
        ):
            continue
        dims = list(val.shape)
        batch_dim = (
            shape[0] == -1 or shape[0] == dims[0] or isinstance(shape[0], fx.Node)
        )  # a dynamic batch: sym_size
        if (
            len(dims) >= 3
            and len(shape) == 2
            and all(isinstance(d, int) for d in dims[1:])
            and shape[1] == math.prod(dims[1:])
            and batch_dim
        ):
            with gm.graph.inserting_before(node):
                flat = gm.graph.call_function(_aten("flatten", "using_ints"), (src, 1, -1))
            node.replace_all_uses_with(flat)
            gm.graph.erase_node(node)
        elif (
            batch is not None
            and isinstance(shape[0], int)
            and shape[0] == batch
            and dims
            and dims[0] == batch
            and -1 not in shape
        ):
            node.args = (src, [-1, *shape[1:]])


def _follow_channels(gm: fx.GraphModule) -> None:
    """A view that keeps the last dimension (``view(x, [-1, 768])`` around a linear layer, as
    Hugging Face's ``Conv1D`` does) gets that dimension from its input when run: written as the
    example's size, it would break once the channels are pruned."""
    for node, src, shape, val in _views(gm):
        if (
            val is None
            or not isinstance(shape, (list, tuple))
            or len(shape) < 2
            or val.dim() < 2
            or not isinstance(shape[-1], int)
            or not isinstance(val.shape[-1], int)
            or shape[-1] != val.shape[-1]
            or shape[-1] <= 1
        ):
            continue
        with gm.graph.inserting_before(node):
            size = gm.graph.call_method("size", (src, -1))
        node.args = (src, [*shape[:-1], size])
    for node in list(
        gm.graph.nodes
    ):  # an even split of the last dimension stays even (a fused q/k/v)
        if (
            node.op != "call_function"
            or node.target != _aten("split", "Tensor")
            or len(node.args) < 3
        ):
            continue
        src, size, dim = node.args[:3]
        val = src.meta.get("val") if isinstance(src, fx.Node) else None
        if (
            val is None
            or not isinstance(size, int)
            or dim not in (-1, val.dim() - 1)
            or not isinstance(val.shape[-1], int)
            or val.shape[-1] % size
            or val.shape[-1] == size
        ):
            continue
        with gm.graph.inserting_before(node):
            width = gm.graph.call_method("size", (src, -1))
            piece = gm.graph.call_function(
                __import__("operator").floordiv, (width, val.shape[-1] // size)
            )
        node.args = (src, piece, dim)


# Ops that take a shape, and the Tensor method doing the same: the TorchScript ONNX exporter traces
# a size flowing into a method call as a shape, but records it as a constant in an op call.
_SHAPE_METHODS = {
    "view": "view",
    "reshape": "reshape",
    "_unsafe_view": "reshape",
    "expand": "expand",
    "repeat": "repeat",
    "new_zeros": "new_zeros",
    "new_ones": "new_ones",
    "new_empty": "new_empty",
    "split": "split",
}


def _has_symbol(value: Any) -> bool:
    if isinstance(value, fx.Node):
        return True
    return isinstance(value, (list, tuple)) and any(_has_symbol(v) for v in value)


def _traceable_sizes(gm: fx.GraphModule) -> None:
    """Sizes that follow the input's batch are computed so that the TorchScript ONNX exporter
    traces them as shapes: ``aten.sym_size.int(x, d)`` becomes ``x.size(d)``, and a view, reshape
    or expand to a shape holding such a size becomes the Tensor method. Run, both are the same;
    traced, the op calls would be recorded with the example's sizes as constants, and the exported
    file would only run at the example's batch size."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == _aten("sym_size", "int"):
            with gm.graph.inserting_before(node):
                size = gm.graph.call_method("size", (node.args[0], node.args[1]))
            node.replace_all_uses_with(size)
            gm.graph.erase_node(node)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        packet = node.target.overloadpacket.__name__
        method = _SHAPE_METHODS.get(packet)
        overload = node.target._overloadname
        if (
            method is None
            or overload not in ("default", "Tensor")
            or (overload == "Tensor") != (packet == "split")
            or len(node.args) < 2
            or not _has_symbol(node.args[1])
        ):
            continue
        shape = list(node.args[1]) if isinstance(node.args[1], (list, tuple)) else node.args[1]
        with gm.graph.inserting_before(node):
            call = gm.graph.call_method(
                method, (node.args[0], shape, *node.args[2:]), dict(node.kwargs)
            )
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)


def program_to_layers(
    gm: fx.GraphModule, batch: int | None = None, output: int | None = None
) -> fx.GraphModule:
    """Rewrite ``gm`` (from ``ExportedProgram.module()``) in place: layers instead of aten calls
    on its own weights, no guard module, batch-size-free reshapes, and the one output leaf
    ``output`` (the logits; None: the program must have one) returned as a plain tensor.
    Returns ``gm``."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
            if hasattr(gm, "_guards_fn"):
                delattr(gm, "_guards_fn")
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        made = _to_layer(gm, node)
        if made is None:
            continue
        layer, weight_name, kind, tensor_nodes, source = made
        if not all(_only_user(n, node) for n in tensor_nodes):
            continue  # a weight shared with another op stays functional
        prefix = (
            weight_name.rpartition(".")[0]
            if weight_name.endswith(".weight")
            else weight_name.replace(".", "_")
        )
        name = _install(gm, prefix, layer, kind)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (source,))
        if node.target == _aten("_native_batch_norm_legit_no_training"):
            for user in list(
                node.users
            ):  # (out, mean, invstd): only the output is used in inference
                if user.target is __import__("operator").getitem and user.args[1] == 0:
                    call.meta.update(
                        {k: user.meta[k] for k in ("val", "tensor_meta") if k in user.meta}
                    )
                    user.replace_all_uses_with(call)
                    gm.graph.erase_node(user)
            if node.users:
                gm.graph.erase_node(call)
                continue
        else:
            call.meta.update(
                {k: node.meta[k] for k in ("val", "tensor_meta") if k in node.meta}
            )  # shapes, for later rewrites
            node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        pending = list(tensor_nodes)
        while pending:  # the weights' get_attr (and transpose) nodes nothing reads any more
            n = pending.pop(0)
            if not n.users and n.graph is gm.graph and n in gm.graph.nodes:
                pending += [a for a in n.args if isinstance(a, fx.Node)]
                gm.graph.erase_node(n)
    _free_batch(gm, batch)
    _follow_channels(gm)
    _traceable_sizes(gm)
    # The program's pytree calling convention (flatten args, unflatten outputs) becomes a plain
    # ``forward(x) -> tensor``: simpler to trace, and deep copies skip pytree specs.
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    if isinstance(gm.graph._codegen, fx.graph._PyTreeCodeGen):
        if isinstance(outs, (tuple, list)) and output is not None and output < len(outs):
            outs = [outs[output]]
        if (
            not isinstance(outs, (tuple, list))
            or len(outs) != 1
            or not isinstance(outs[0], fx.Node)
        ):
            raise ValueError(
                "the program returns"
                f" {len(outs) if isinstance(outs, (tuple, list)) else 'a structure of'} values; it"
                " must return one tensor of logits (or a dict or ModelOutput holding 'logits')"
            )
        out_node.args = (outs[0],)
        gm.graph._codegen = fx.graph.CodeGen()
    for attr in ("_in_spec", "_out_spec"):
        gm.__dict__.pop(attr, None)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


def _check_graph_targets(gm: fx.GraphModule, path: Path) -> None:
    import operator

    allowed = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
    safe_funcs = {getattr(operator, n) for n in _OPERATOR_FUNCS}

    def safe(target: Any) -> bool:
        if isinstance(target, allowed) or target in safe_funcs:
            return True
        module, name = getattr(target, "__module__", ""), getattr(target, "__name__", "")
        return (module == "math") or (
            module == "torch" and _TARGET_SYM.match(f"torch.{name}") is not None
        )

    for module in gm.modules():
        if not isinstance(module, fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op == "call_function" and not safe(node.target):
                raise _refuse(
                    path, f"the program calls {node.target!r}, which is not a torch operator"
                )


def load_program(path: str | Path) -> nn.Module:
    """Load a ``torch.export.save`` program as an ``nn.Module`` with real layers (eval mode).

    Raises:
        ModelLoadError: unreadable, corrupt, refused by the safety checks (with the reason), or a
            program that only runs at its example's batch size.
    """
    from torch.export.pt2_archive._package import load_pt2

    path = Path(path)
    data = read_model_file(path)
    if not data.startswith(b"PK\x03\x04"):
        raise ModelLoadError(
            f"{path}: not a torch.export archive (a .pt2 is a zip written by torch.export.save)"
        )
    check_archive(data, path)
    data, output_type = _plain_outputs(data, path)
    try:
        contents = load_pt2(
            io.BytesIO(data)
        )  # not torch.export.load: no fallback to the old format
        programs = contents.exported_programs
        program = programs.get("model") or next(iter(programs.values()))
    except ModelLoadError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ModelLoadError(
            f"{path}: torch cannot read the program ({type(e).__name__}: {first})"
        ) from None
    program._guards_code = []  # never exec code from the file (ExportedProgram.module() would)
    example = program.example_inputs  # (args, kwargs), as exported
    try:
        gm = program.module(check_guards=False)
    except Exception as e:
        raise ModelLoadError(
            f"{path}: cannot rebuild a module from the program ({type(e).__name__}: {e})"
        ) from None
    # The rebuilt module checks the example's input shapes in a pre-hook (our batches differ) and
    # refuses train()/eval() (its layers are functional calls); with real layers both are sound.
    gm._forward_pre_hooks.clear()
    for attr in ("train", "eval"):
        if attr in gm.__dict__:
            delattr(gm, attr)
    _check_graph_targets(gm, path)
    for (
        module
    ) in gm.modules():  # the file's metadata (stack traces...) is never needed, nor printed
        if isinstance(module, fx.GraphModule):
            for node in module.graph.nodes:
                node.meta = {k: node.meta[k] for k in ("val", "tensor_meta") if k in node.meta}
    names = tuple(n.name for n in gm.graph.nodes if n.op == "placeholder")
    if not names:
        raise ModelLoadError(f"{path}: the program takes no input")
    # The example, in the order of the program's inputs: one tensor, or named Inputs (input_ids...).
    leaves = torch.utils._pytree.tree_leaves(example) if example is not None else []
    sample: torch.Tensor | Inputs | None = None
    if len(leaves) == len(names) and all(isinstance(t, torch.Tensor) and t.ndim for t in leaves):
        sample = leaves[0] if len(leaves) == 1 else Inputs(tuple(zip(names, leaves, strict=False)))
    reference = None
    if sample is not None:
        with torch.no_grad():
            reference = logits_of(gm(*example[0], **example[1]))
    try:
        program_to_layers(
            gm, batch=len(sample) if sample is not None else None, output=_logits_leaf(program)
        )
    except Exception as e:
        raise ModelLoadError(
            f"{path}: cannot turn the program's weights into layers ({type(e).__name__}: {e})"
        ) from None
    gm.requires_grad_(False)
    gm.eval()
    gm.input_names = names  # several inputs are taken in this order
    # The example's per-sample shape (what data is shaped to; none for several named inputs).
    gm.input_shape = tuple(sample.shape[1:]) if isinstance(sample, torch.Tensor) else None
    if output_type:
        gm.output_note = f"the logits of its {output_type.rpartition('.')[2]}"
    if sample is not None and isinstance(reference, torch.Tensor):
        batch = (
            sample.cat(sample).cat(sample)
            if isinstance(sample, Inputs)
            else torch.cat([sample, sample, sample])
        )
        try:
            with torch.no_grad():
                out = run_model(gm, sample)
                out3 = run_model(gm, batch)
        except Exception as e:
            raise ModelLoadError(
                f"{path}: the program only runs at its example's batch size {len(sample)} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); export it with "
                "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}"
            ) from None
        error = max(relative_error(out, reference), relative_error(out3[: len(sample)], reference))
        if error > REL_TOL:
            raise ModelLoadError(
                f"{path}: turning the program into layers changed its outputs (by {error:.1e} of "
                "their scale); please report it"
            )
    return gm
