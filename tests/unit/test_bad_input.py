"""The bad-input corpus: every mistake a user can make with a model, data, a plan or the command
line costs one clear line on stderr that names the culprit, and exit code 2; never a traceback.

Every case runs the real CLI in-process (``explorer.cli.main``). Pickle payloads carry a
``__reduce__`` that would create a sentinel file if anything unpickled them: the tests check that
it was never created.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from explorer.cli import main
from explorer.data import load_data
from explorer.models.zoo import build
from explorer.runtime import export_onnx

MLP = "zoo:digits-mlp"


class Payload:
    """Unpickling this creates ``path`` (harmless, and visible): the proof that something ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


@dataclass
class Corpus:
    root: Path
    sentinel: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def _plan(**overrides: object) -> dict:
    plan = {
        "format": "pruning-explorer/plan",
        "version": 1,
        "method": "l1-unstructured",
        "layers": {"hidden.0": 0.5},
    }
    plan.update(overrides)
    return plan


def _rewrite_zip(
    src: Path,
    dst: Path,
    edit: Callable[[str, bytes], bytes | None],
    extra: dict[str, bytes] | None = None,
) -> None:
    """Copy a zip, passing every member through ``edit`` (None drops it), adding ``extra``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for name in zin.namelist():
            data = edit(name[len(root) + 1 :], zin.read(name))
            if data is not None:
                zout.writestr(name, data)
        for name, data in (extra or {}).items():
            zout.writestr(f"{root}/{name}", data)


def _edit_program(edit: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def fn(name: str, data: bytes) -> bytes:
        if name == "models/model.json":
            program = json.loads(data)
            edit(program)
            return json.dumps(program).encode()
        return data

    return fn


def _first_node(program: dict) -> dict:
    return program["graph_module"]["graph"]["nodes"][0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("bad-input")
    c = Corpus(root, root / "PWNED")
    rng = np.random.default_rng(0)
    mlp = build("digits-mlp").eval()
    x = rng.random((40, 64), dtype=np.float32)
    y = rng.integers(0, 10, 40)

    # Valid models to damage.
    export_onnx(mlp, torch.from_numpy(x[:1]), c / "mlp.onnx")
    program = torch.export.export(
        mlp, (torch.from_numpy(x[:2]),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, c / "mlp.pt2")
    onnx_bytes, pt2_bytes = (c / "mlp.onnx").read_bytes(), (c / "mlp.pt2").read_bytes()

    # Models.
    (c / "corrupt.onnx").write_bytes(rng.bytes(4096))
    (c / "truncated.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    (c / "empty.onnx").write_bytes(b"")
    x_info = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])
    y_info = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 10])
    w = numpy_helper.from_array(rng.random((64, 10), dtype=np.float32), "w")
    # An op of a domain ONNX Runtime does not know: nothing can run it.
    unknown = helper.make_graph(
        [helper.make_node("Frobnicate", ["x", "w"], ["y"], domain="acme", name="frob")],
        "g",
        [x_info],
        [y_info],
        [w],
    )
    onnx.save(
        helper.make_model(
            unknown,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)],
            ir_version=10,
        ),
        c / "custom_op.onnx",
    )

    # Control flow: an If whose branches are subgraphs.
    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], [name])],
            name,
            [],
            [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["n", 10])],
        )

    # The condition depends on the input (a constant one is folded away, and with it the If).
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    control = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "zero"], ["cond"]),
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=branch("a"),
                else_branch=branch("b"),
                name="choose",
            ),
        ],
        "g",
        [x_info],
        [y_info],
        [w, zero],
    )
    onnx.save(
        helper.make_model(control, opset_imports=[helper.make_opsetid("", 17)]),
        c / "control_flow.onnx",
    )
    nan_model = onnx.load_model_from_string(onnx_bytes)
    w = nan_model.graph.initializer[0]
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] = np.nan
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    onnx.save(nan_model, c / "nan_weight.onnx")
    (c / "nan_weight.name").write_text(w.name)

    (c / "corrupt.pt2").write_bytes(b"PK\x03\x04" + rng.bytes(4096))
    (c / "truncated.pt2").write_bytes(pt2_bytes[: len(pt2_bytes) // 2])
    (c / "empty.pt2").write_bytes(b"")
    torch.save({"model": Payload(c.sentinel)}, c / "saved_pickle.pt2")  # torch.save, renamed
    _rewrite_zip(
        c / "mlp.pt2",
        c / "pickled_weight.pt2",
        lambda n, d: (
            d.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            if n == "data/weights/model_weights_config.json"
            else d
        ),
    )
    _rewrite_zip(
        c / "mlp.pt2",
        c / "eval_expr.pt2",
        _edit_program(
            lambda p: p["graph_module"]["graph"]["nodes"][0]["inputs"][0]["arg"].update(
                {
                    "as_sym_int": {
                        "as_expr": {
                            "expr_str": f"__import__('builtins').open('{c.sentinel}', 'w')",
                            "hint": None,
                        }
                    }
                }
            )
        ),
    )
    _rewrite_zip(
        c / "mlp.pt2",
        c / "os_target.pt2",
        _edit_program(lambda p: _first_node(p).update(target="torch.os.system")),
    )
    injected = json.dumps(
        f"x=open('{c.sentinel}', 'w')"
    ).encode()  # torch.fx pastes names into code
    _rewrite_zip(
        c / "mlp.pt2",
        c / "code_in_name.pt2",
        lambda n, d: (
            d.replace(b'"name": "x"', b'"name": ' + injected) if n == "models/model.json" else d
        ),
    )
    _rewrite_zip(
        c / "mlp.pt2",
        c / "guards.pt2",
        _edit_program(lambda p: p.update(guards_code=[f"open('{c.sentinel}', 'w')"])),
    )
    _rewrite_zip(
        c / "mlp.pt2",
        c / "aoti.pt2",
        lambda n, d: d,
        extra={"data/aotinductor/model/model.so": b"\x7fELF"},
    )

    (c / "model.pt").write_bytes(pickle.dumps(Payload(c.sentinel)))
    torch.save({"state": Payload(c.sentinel)}, c / "weights.pth")
    (c / "entry.py").write_text(
        "import torch\nfrom torch import nn\n\ndef raises():\n    raise ValueError('boom in my"
        " build')\n\ndef not_a_module():\n    return 42\n\nclass Net(nn.Module):\n    def"
        " __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(64, 10)\n    def"
        " forward(self, x):\n        return self.fc(x)\n\ndef net():\n    return Net()\n\ndef"
        " inf_weights():\n    net = Net()\n    with torch.no_grad():\n        net.fc.weight[0, 0] ="
        " float('inf')\n    return net\n"
    )

    # Data.
    np.savez(c / "digits.npz", x=x, y=y)
    np.savez(c / "object.npz", x=np.array([Payload(c.sentinel)], dtype=object))
    (c / "pickle.npz").write_bytes(pickle.dumps({"x": Payload(c.sentinel)}))
    (c / "empty.npz").write_bytes(b"")
    np.savez(c / "mismatch.npz", x=x, y=y[:-1])
    np.savez(c / "labels12.npz", x=x, y=np.full(40, 12))
    x_nan = x.copy()
    x_nan[3, 7] = np.nan
    np.savez(c / "nan.npz", x=x_nan, y=y)
    np.savez(c / "shape5.npz", x=x[:, :5], y=y)
    (c / "data.pkl").write_bytes(pickle.dumps({"x": Payload(c.sentinel)}))
    header = ",".join(f"f{i}" for i in range(64)) + ",label\n"
    rows = [
        ",".join(f"{v:.3f}" for v in row) + f",{label}\n"
        for row, label in zip(x[:5], y[:5], strict=False)
    ]
    (c / "text.csv").write_text(
        header + rows[0] + rows[1].replace(rows[1].split(",")[1], "abc", 1) + rows[2]
    )
    (c / "empty.csv").write_text("")
    (c / "badlabel.csv").write_text(header + rows[0] + rows[1].rsplit(",", 1)[0] + ",cat\n")
    (c / "images" / "seven").mkdir(parents=True)
    (c / "images" / "seven" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(100))
    (c / "no_images" / "seven").mkdir(parents=True)

    # Plans.
    for name, plan in {
        "unknown_layer": _plan(layers={"nope.0": 0.5}),
        "unknown_method": _plan(method="l3-magic"),
        "bad_format": _plan(format="someone-else/plan"),
        "version2": _plan(version=2),
        "ratio_high": _plan(layers={"hidden.0": 1.5}),
        "ratio_negative": _plan(layers={"hidden.0": -0.1}),
        "ratio_text": _plan(layers={"hidden.0": "abc"}),
        "unknown_key": _plan(ratios=0.5),
        "output_structured": _plan(method="l1-structured", layers={"classifier": 0.5}),
    }.items():
        (c / f"{name}.json").write_text(json.dumps(plan))
    (c / "ratio_nan.json").write_text(json.dumps(_plan()).replace("0.5", "NaN"))
    (c / "notjson.json").write_text("{format: pruning-explorer/plan")
    (c / "a_file").write_text("not a folder")
    assert load_data(str(c / "digits.npz")).has_labels  # the base data is fine
    return c


# (id, argv, culprit the message must contain); "{dir}" is the corpus folder.
CASES: list[tuple[str, list[str], str]] = [
    # Models.
    (
        "onnx-corrupt",
        ["layers", "--model", "{dir}/corrupt.onnx", "--data", "{dir}/digits.npz"],
        "corrupt.onnx",
    ),
    (
        "onnx-truncated",
        ["layers", "--model", "{dir}/truncated.onnx", "--data", "{dir}/digits.npz"],
        "truncated.onnx",
    ),
    (
        "onnx-empty",
        ["layers", "--model", "{dir}/empty.onnx", "--data", "{dir}/digits.npz"],
        "empty.onnx",
    ),
    (
        "onnx-missing",
        ["layers", "--model", "{dir}/missing.onnx", "--data", "{dir}/digits.npz"],
        "missing.onnx",
    ),
    (
        "onnx-op-nothing-runs",
        ["layers", "--model", "{dir}/custom_op.onnx", "--data", "{dir}/digits.npz"],
        "acme:Frobnicate(-1) is not a registered",
    ),
    (
        "onnx-control-flow",
        ["layers", "--model", "{dir}/control_flow.onnx", "--data", "{dir}/digits.npz"],
        "'choose' (If)",
    ),
    (
        "onnx-nan-weight",
        ["layers", "--model", "{dir}/nan_weight.onnx", "--data", "{dir}/digits.npz"],
        "{nan_weight}",
    ),
    (
        "pt2-corrupt",
        ["layers", "--model", "{dir}/corrupt.pt2", "--data", "{dir}/digits.npz"],
        "corrupt.pt2",
    ),
    (
        "pt2-truncated",
        ["layers", "--model", "{dir}/truncated.pt2", "--data", "{dir}/digits.npz"],
        "truncated.pt2",
    ),
    (
        "pt2-empty",
        ["layers", "--model", "{dir}/empty.pt2", "--data", "{dir}/digits.npz"],
        "empty.pt2",
    ),
    (
        "pt2-torch-save-pickle",
        ["layers", "--model", "{dir}/saved_pickle.pt2", "--data", "{dir}/digits.npz"],
        "torch.save",
    ),
    (
        "pt2-pickled-weight",
        ["layers", "--model", "{dir}/pickled_weight.pt2", "--data", "{dir}/digits.npz"],
        "pickled",
    ),
    (
        "pt2-eval-in-shape-expr",
        ["layers", "--model", "{dir}/eval_expr.pt2", "--data", "{dir}/digits.npz"],
        "__import__",
    ),
    (
        "pt2-os-system-target",
        ["layers", "--model", "{dir}/os_target.pt2", "--data", "{dir}/digits.npz"],
        "torch.os.system",
    ),
    (
        "pt2-code-in-a-name",
        ["layers", "--model", "{dir}/code_in_name.pt2", "--data", "{dir}/digits.npz"],
        "x=open(",
    ),
    (
        "pt2-compiled-code",
        ["layers", "--model", "{dir}/aoti.pt2", "--data", "{dir}/digits.npz"],
        "AOTInductor",
    ),
    (
        "pt-pickle",
        ["layers", "--model", "{dir}/model.pt", "--data", "{dir}/digits.npz"],
        "model.pt",
    ),
    (
        "pth-pickle",
        ["layers", "--model", "{dir}/weights.pth", "--data", "{dir}/digits.npz"],
        "weights.pth",
    ),
    (
        "entrypoint-raises",
        ["layers", "--model", "{dir}/entry.py:raises", "--data", "{dir}/digits.npz"],
        "boom in my build",
    ),
    (
        "entrypoint-not-module",
        ["layers", "--model", "{dir}/entry.py:not_a_module", "--data", "{dir}/digits.npz"],
        "int",
    ),
    (
        "entrypoint-missing-func",
        ["layers", "--model", "{dir}/entry.py:nothing", "--data", "{dir}/digits.npz"],
        "nothing",
    ),
    (
        "entrypoint-inf-weight",
        ["layers", "--model", "{dir}/entry.py:inf_weights", "--data", "{dir}/digits.npz"],
        "fc.weight",
    ),
    ("zoo-unknown", ["layers", "--model", "zoo:digits-giant"], "digits-giant"),
    ("model-without-data", ["layers", "--model", "{dir}/mlp.onnx"], "mlp.onnx"),
    # Data.
    ("npz-object-array", ["layers", "--model", MLP, "--data", "{dir}/object.npz"], "object.npz"),
    ("npz-is-a-pickle", ["layers", "--model", MLP, "--data", "{dir}/pickle.npz"], "pickle.npz"),
    ("npz-empty", ["layers", "--model", MLP, "--data", "{dir}/empty.npz"], "empty.npz"),
    ("data-pkl", ["layers", "--model", MLP, "--data", "{dir}/data.pkl"], "data.pkl"),
    ("x-y-lengths", ["layers", "--model", MLP, "--data", "{dir}/mismatch.npz"], "39"),
    (
        "labels-out-of-range",
        ["evaluate", "--model", MLP, "--data", "{dir}/labels12.npz", "--runs", "30"],
        "12",
    ),
    ("nan-in-data", ["layers", "--model", MLP, "--data", "{dir}/nan.npz"], "NaN"),
    ("wrong-input-shape", ["layers", "--model", MLP, "--data", "{dir}/shape5.npz"], "(5,)"),
    (
        "wrong-input-shape-entrypoint",
        ["layers", "--model", "{dir}/entry.py:net", "--data", "{dir}/shape5.npz"],
        "(1, 5)",
    ),
    (
        "wrong-input-shape-onnx",
        ["layers", "--model", "{dir}/mlp.onnx", "--data", "{dir}/shape5.npz"],
        "(5,)",
    ),
    ("csv-text-cell", ["layers", "--model", MLP, "--data", "{dir}/text.csv"], "'abc'"),
    ("csv-empty", ["layers", "--model", MLP, "--data", "{dir}/empty.csv"], "empty.csv"),
    ("csv-bad-label", ["layers", "--model", MLP, "--data", "{dir}/badlabel.csv"], "'cat'"),
    (
        "image-corrupt",
        ["layers", "--model", "zoo:digits-cnn", "--data", "{dir}/images"],
        "broken.png",
    ),
    (
        "image-folder-empty",
        ["layers", "--model", "zoo:digits-cnn", "--data", "{dir}/no_images"],
        "seven",
    ),
    ("data-missing", ["layers", "--model", MLP, "--data", "{dir}/nowhere.npz"], "nowhere.npz"),
    # Plans.
    (
        "plan-unknown-layer",
        ["evaluate", "--model", MLP, "--plan", "{dir}/unknown_layer.json"],
        "nope.0",
    ),
    (
        "plan-unknown-method",
        ["evaluate", "--model", MLP, "--plan", "{dir}/unknown_method.json"],
        "l3-magic",
    ),
    (
        "plan-bad-format",
        ["evaluate", "--model", MLP, "--plan", "{dir}/bad_format.json"],
        "someone-else/plan",
    ),
    ("plan-version", ["evaluate", "--model", MLP, "--plan", "{dir}/version2.json"], "version 2"),
    ("plan-ratio-above-1", ["evaluate", "--model", MLP, "--plan", "{dir}/ratio_high.json"], "1.5"),
    (
        "plan-ratio-negative",
        ["evaluate", "--model", MLP, "--plan", "{dir}/ratio_negative.json"],
        "-0.1",
    ),
    ("plan-ratio-text", ["evaluate", "--model", MLP, "--plan", "{dir}/ratio_text.json"], "'abc'"),
    ("plan-ratio-nan", ["evaluate", "--model", MLP, "--plan", "{dir}/ratio_nan.json"], "nan"),
    (
        "plan-unknown-key",
        ["evaluate", "--model", MLP, "--plan", "{dir}/unknown_key.json"],
        "ratios",
    ),
    ("plan-not-json", ["evaluate", "--model", MLP, "--plan", "{dir}/notjson.json"], "notjson.json"),
    ("plan-missing", ["evaluate", "--model", MLP, "--plan", "{dir}/nope.json"], "nope.json"),
    (
        "plan-structured-output-layer",
        ["evaluate", "--model", MLP, "--plan", "{dir}/output_structured.json"],
        "classifier",
    ),
    # Command lines.
    (
        "cli-ratios-text",
        ["sensitivity", "--model", MLP, "--ratios", "0.1,abc", "--out", "{dir}/s.csv"],
        "0.1,abc",
    ),
    (
        "cli-ratio-above-1",
        ["sensitivity", "--model", MLP, "--ratios", "0.2,1.2", "--out", "{dir}/s.csv"],
        "1.2",
    ),
    ("cli-out-suffix", ["sensitivity", "--model", MLP, "--out", "{dir}/s.txt"], "s.txt"),
    ("cli-runs-zero", ["evaluate", "--model", MLP, "--runs", "0"], "'0'"),
    ("cli-threads-negative", ["evaluate", "--model", MLP, "--threads", "-3"], "-3"),
    ("cli-unknown-command", ["frobnicate"], "frobnicate"),
    ("cli-missing-model", ["layers"], "--model"),
    (
        "export-out-is-a-file",
        ["export", "--model", MLP, "--plan", "{dir}/good.json", "--out", "{dir}/a_file"],
        "a_file",
    ),
]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("argv", "culprit"), [(a, c) for _, a, c in CASES], ids=[i for i, _, _ in CASES]
)
def test_bad_input_is_one_clear_line(
    argv: list[str], culprit: str, corpus: Corpus, capsys: pytest.CaptureFixture[str]
) -> None:
    (corpus / "good.json").write_text(json.dumps(_plan()))
    subs = {"{dir}": str(corpus.root), "{nan_weight}": (corpus / "nan_weight.name").read_text()}
    for key, value in subs.items():
        argv = [a.replace(key, value) for a in argv]
        culprit = culprit.replace(key, value)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    assert culprit in lines[0], f"{culprit!r} not in {lines[0]!r}"
    assert not corpus.sentinel.exists(), "a payload from a user's file was executed"


def test_pickle_refusal_says_how_to_save(
    corpus: Corpus, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["layers", "--model", str(corpus / "model.pt"), "--data", str(corpus / "digits.npz")])
        == 2
    )
    err = capsys.readouterr().err
    assert "torch.export.save" in err and "weights_only=True" in err


def test_valid_files_of_the_corpus_load(corpus: Corpus, capsys: pytest.CaptureFixture[str]) -> None:
    """The undamaged originals load: the failures above come from the damage, not the setup."""
    for model in ("mlp.onnx", "mlp.pt2"):
        assert (
            main(
                [
                    "layers",
                    "--model",
                    str(corpus / model),
                    "--data",
                    str(corpus / "digits.npz"),
                    "--json",
                ]
            )
            == 0
        )
        names = [layer["name"] for layer in json.loads(capsys.readouterr().out)]
        assert names == ["hidden.0", "hidden.2", "classifier"]
    assert not corpus.sentinel.exists()


def test_guard_code_in_a_program_is_never_run(corpus: Corpus) -> None:
    """torch's loader would exec the program's guard code; ours drops it and still loads."""
    from explorer.models.pt2_import import load_program

    model = load_program(corpus / "guards.pt2")
    with torch.no_grad():
        model(torch.rand(2, 64))
    assert not corpus.sentinel.exists()


def test_zip_rewrite_keeps_a_loadable_program(corpus: Corpus) -> None:
    """The tampered archives are made by rewriting the zip; an untouched rewrite still loads, so
    each refusal is caused by its tampering."""
    from explorer.models.pt2_import import load_program

    _rewrite_zip(corpus / "mlp.pt2", corpus / "rewritten.pt2", lambda n, d: d)
    model = load_program(corpus / "rewritten.pt2")
    x = torch.rand(3, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), build("digits-mlp").eval()(x), atol=1e-6)
    buf = io.BytesIO((corpus / "rewritten.pt2").read_bytes())
    assert zipfile.is_zipfile(buf)
