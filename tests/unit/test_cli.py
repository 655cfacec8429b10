"""The headless CLI, in-process (``explorer.cli.main``), on one zoo model and one unseen model:
exit codes, outputs, the export bundle checked against ONNX Runtime, and user mistakes reported
as one line on stderr with exit code 2."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from explorer.cli import main
from explorer.models import ZOO
from explorer.plan import LayerRule, PruningPlan
from explorer.runtime import OrtModel

UNSEEN_PATH = Path(__file__).resolve().parents[1] / "models" / "unseen.py"
ZOO_MODEL = "zoo:digits-mlp"
UNSEEN = "transformer"
EVAL_KEYS = {
    "accuracy",
    "loss",
    "params_total",
    "params_nonzero",
    "macs",
    "onnx_bytes",
    "onnx_gzip_bytes",
    "latency_ms_median",
    "latency_ms_p90",
    "latency_threads",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must fail as a user mistake; return its one stderr line."""
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}, stderr: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err}"
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def unseen_args(unseen_data: Callable[[str, bool], Path]) -> list[str]:
    return ["--model", f"{UNSEEN_PATH}:{UNSEEN}", "--data", str(unseen_data(UNSEEN, True))]


def _write_plan(path: Path, plan: PruningPlan | dict) -> str:
    path.write_text(plan.to_json() if isinstance(plan, PruningPlan) else json.dumps(plan))
    return str(path)


def _zoo_plan() -> PruningPlan:
    return PruningPlan(
        method="l1-structured",
        model=ZOO_MODEL,
        layers={
            "hidden.0": LayerRule(0.5),
            "hidden.2": LayerRule(0.25),
            "classifier": LayerRule(0.3, "l1-unstructured"),
        },
    )


def _unseen_plan() -> PruningPlan:
    return PruningPlan(
        method="l2-structured",
        layers={
            "encoder.layers.0.linear1": LayerRule(0.5),
            "encoder.layers.1.linear1": LayerRule(0.5),
            "embed": LayerRule(0.3, "l1-unstructured"),
            "encoder.layers.0.self_attn.out_proj": LayerRule(0.5, "2:4"),
        },
    )


# --- layers --------------------------------------------------------------------------------------


def test_layers_zoo_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "layers", "--model", "zoo:list")
    assert code == 0
    for name, entry in ZOO.items():
        assert f"zoo:{name}" in out and entry.description in out


@pytest.mark.parametrize("which", ["zoo", "unseen"])
def test_layers_json(
    which: str,
    capsys: pytest.CaptureFixture[str],
    unseen_args: list[str],
    subject: Callable[..., object],
) -> None:
    args = ["--model", ZOO_MODEL] if which == "zoo" else unseen_args
    code, out, _ = run(capsys, "layers", *args, "--json")
    assert code == 0
    rows = json.loads(out)
    subj = subject(args[1], args[3] if len(args) > 2 else None)
    assert [r["name"] for r in rows] == subj.layer_names
    for row, info in zip(rows, subj.inventory.layers, strict=False):
        assert {"name", "type", "shape", "params", "group"} <= row.keys()
        assert (
            tuple(row["shape"]) == info.shape
            and row["group"] == info.group
            and row["params"] == info.params
        )
    code, text, _ = run(capsys, "layers", *args)
    assert code == 0 and all(r["name"] in text for r in rows)
    if which == "unseen":
        assert "attention" in text  # why attention's layers have no group


# --- evaluate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["zoo", "unseen"])
def test_evaluate_json(
    which: str, capsys: pytest.CaptureFixture[str], unseen_args: list[str], tmp_path: Path
) -> None:
    args = ["--model", ZOO_MODEL] if which == "zoo" else unseen_args
    plan = _write_plan(tmp_path / "plan.json", _zoo_plan() if which == "zoo" else _unseen_plan())
    code, out, _ = run(capsys, "evaluate", *args, "--plan", plan, "--json", "--runs", "30")
    assert code == 0
    result = json.loads(out)
    assert EVAL_KEYS <= result.keys() and EVAL_KEYS <= result["dense"].keys()
    assert result["macs"] < result["dense"]["macs"]
    assert result["params_total"] < result["dense"]["params_total"]
    assert result["latency_threads"] == 1
    code, text, _ = run(capsys, "evaluate", *args, "--plan", plan)  # the human table
    assert (
        code == 0
        and "Latency, median" in text
        and "MAC ratio" in text
        and "measured ORT speedup" in text
    )
    assert {"ratio", "low", "high", "within_noise", "per_round", "p90", "rounds"} <= result[
        "speedup"
    ].keys()
    assert (
        result["speedup"]["rounds"] >= 5 and result["speedup"]["low"] <= result["speedup"]["ratio"]
    )


def test_evaluate_without_labels_reports_agreement(
    capsys: pytest.CaptureFixture[str], unseen_data: Callable[[str, bool], Path], tmp_path: Path
) -> None:
    plan = _write_plan(tmp_path / "plan.json", _unseen_plan())
    code, out, _ = run(
        capsys,
        "evaluate",
        "--model",
        f"{UNSEEN_PATH}:{UNSEEN}",
        "--data",
        str(unseen_data(UNSEEN, False)),
        "--plan",
        plan,
        "--json",
        "--runs",
        "30",
    )
    assert code == 0
    result = json.loads(out)
    assert (
        result["labels"] is False
        and result["dense"]["accuracy"] == 1.0
        and 0 <= result["accuracy"] <= 1
    )


# --- sensitivity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "method"), [("zoo", "l1-unstructured"), ("unseen", "l1-structured")]
)
def test_sensitivity(
    which: str,
    method: str,
    capsys: pytest.CaptureFixture[str],
    unseen_args: list[str],
    subject: Callable[..., object],
    tmp_path: Path,
) -> None:
    args = ["--model", ZOO_MODEL] if which == "zoo" else unseen_args
    out = tmp_path / "sens.csv"
    code, _, _ = run(
        capsys, "sensitivity", *args, "--method", method, "--ratios", "0.3,0.6", "--out", str(out)
    )
    assert code == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert {"layer", "ratio", "accuracy", "loss"} <= rows[0].keys()
    subj = subject(args[1], args[3] if len(args) > 2 else None)
    units = (
        list(subj.inventory.groups)
        if method.endswith("-structured") and "un" not in method
        else subj.layer_names
    )
    assert sorted({r["layer"] for r in rows}) == sorted(units)
    assert len(rows) == 3 * len(units)
    dense = [float(r["accuracy"]) for r in rows if float(r["ratio"]) == 0]
    assert len(set(dense)) == 1  # ratio 0 is the dense model, the same on every row
    json_out = tmp_path / "sens.json"
    code, _, _ = run(
        capsys, "sensitivity", *args, "--method", method, "--ratios", "0.5", "--out", str(json_out)
    )
    assert code == 0 and len(json.loads(json_out.read_text())) == 2 * len(units)


# --- export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["zoo", "unseen"])
def test_export_bundle(
    which: str,
    capsys: pytest.CaptureFixture[str],
    unseen_args: list[str],
    subject: Callable[..., object],
    tmp_path: Path,
) -> None:
    args = ["--model", ZOO_MODEL] if which == "zoo" else unseen_args
    plan = _zoo_plan() if which == "zoo" else _unseen_plan()
    out = tmp_path / "bundle"
    code, _, _ = run(
        capsys,
        "export",
        *args,
        "--plan",
        _write_plan(tmp_path / "p.json", plan),
        "--out",
        str(out),
        "--runs",
        "30",
    )
    assert code == 0
    for name in ("plan.json", "model.onnx", "metrics.json", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "model.pt2").is_file() or (out / "model_state.pt").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert EVAL_KEYS <= metrics.keys() and EVAL_KEYS <= metrics["dense"].keys()
    assert PruningPlan.load(out / "plan.json").layers == plan.layers

    subj = subject(args[1], args[3] if len(args) > 2 else None)
    x, y = subj.data.test.x.numpy(), subj.data.test.y.numpy()
    logits = OrtModel(out / "model.onnx")(x)
    assert metrics["accuracy"] == float((logits.argmax(1) == y).mean())
    assert "<table" in (out / "report.html").read_text()


# --- user mistakes: exit 2, one line ------------------------------------------------------------


def test_unknown_layer_in_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = _write_plan(
        tmp_path / "p.json",
        PruningPlan(method="l1-unstructured", layers={"hidden.9": LayerRule(0.5)}),
    )
    for cmd in ("evaluate", "export"):
        extra = ["--out", str(tmp_path / "o")] if cmd == "export" else []
        line = user_error(capsys, cmd, "--model", ZOO_MODEL, "--plan", plan, *extra)
        assert "hidden.9" in line and "p.json" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("ratio", [1.5, -0.2, "half", True])
def test_bad_ratio_in_plan(
    ratio: object, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = json.loads(
        PruningPlan(method="l1-unstructured", layers={"hidden.0": LayerRule(0.5)}).to_json()
    )
    doc["layers"]["hidden.0"] = ratio
    line = user_error(
        capsys, "evaluate", "--model", ZOO_MODEL, "--plan", _write_plan(tmp_path / "p.json", doc)
    )
    assert repr(ratio) in line


@pytest.mark.parametrize("ratios", ["0.2,1.5", "0.1,x", "-0.1"])
def test_bad_sensitivity_ratios(
    ratios: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = user_error(
        capsys,
        "sensitivity",
        "--model",
        ZOO_MODEL,
        "--ratios",
        ratios,
        "--out",
        str(tmp_path / "s.csv"),
    )
    assert any(part in line for part in ratios.split(","))


def test_missing_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert "nope.json" in user_error(
        capsys, "evaluate", "--model", ZOO_MODEL, "--plan", f"{missing}.json"
    )
    assert "nope.npz" in user_error(
        capsys, "layers", "--model", ZOO_MODEL, "--data", f"{missing}.npz"
    )
    assert "nope.py" in user_error(
        capsys, "layers", "--model", f"{missing}.py:build", "--data", "zoo:digits-flat"
    )
    line = user_error(
        capsys, "layers", "--model", f"{UNSEEN_PATH}:no_such_function", "--data", ZOO_MODEL
    )
    assert "no_such_function" in line


def test_wrong_input_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((8, 5), np.float32), y=np.zeros(8, np.int64))
    for model in (ZOO_MODEL, f"{UNSEEN_PATH}:{UNSEEN}"):
        line = user_error(capsys, "evaluate", "--model", model, "--data", str(bad))
        assert "shape" in line and re.search(r"\b5\b", line), line  # names the offending shape


def test_unknown_method(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    line = user_error(
        capsys,
        "sensitivity",
        "--model",
        ZOO_MODEL,
        "--method",
        "l3-magic",
        "--out",
        str(tmp_path / "s.csv"),
    )
    assert "l3-magic" in line and "l1-unstructured" in line
    doc = json.loads(
        PruningPlan(method="l1-unstructured", layers={"hidden.0": LayerRule(0.5)}).to_json()
    )
    doc["method"] = "l3-magic"
    line = user_error(
        capsys, "evaluate", "--model", ZOO_MODEL, "--plan", _write_plan(tmp_path / "p.json", doc)
    )
    assert "l3-magic" in line and "2:4" in line


def test_unknown_zoo_model(capsys: pytest.CaptureFixture[str]) -> None:
    line = user_error(capsys, "layers", "--model", "zoo:imagenet-giant")
    assert "imagenet-giant" in line and "digits-cnn" in line


def test_structured_plan_on_attention(
    capsys: pytest.CaptureFixture[str], unseen_args: list[str], tmp_path: Path
) -> None:
    plan = PruningPlan(method="l1-structured", layers={"encoder.layers.0.linear2": LayerRule(0.5)})
    line = user_error(
        capsys, "evaluate", *unseen_args, "--plan", _write_plan(tmp_path / "p.json", plan)
    )
    assert "encoder.layers.0.linear2" in line and "attention" in line


def test_output_layer_structured(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = PruningPlan(method="l2-structured", layers={"classifier": LayerRule(0.5)})
    line = user_error(
        capsys, "evaluate", "--model", ZOO_MODEL, "--plan", _write_plan(tmp_path / "p.json", plan)
    )
    assert "classifier" in line


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["prune"],
        ["layers"],
        ["evaluate", "--model", ZOO_MODEL, "--bogus"],
        ["evaluate", "--model", ZOO_MODEL, "--runs", "0"],
    ],
)
def test_bad_command_lines(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    user_error(capsys, *argv)


def test_model_without_data(capsys: pytest.CaptureFixture[str]) -> None:
    line = user_error(capsys, "layers", "--model", f"{UNSEEN_PATH}:{UNSEEN}")
    assert "--data" in line


def _serving(port: int) -> list[int]:
    """Pids of live processes whose command line serves ``port`` (the server and any child)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = next(
                (
                    line
                    for line in (proc / "status").read_text().splitlines()
                    if line.startswith("State:")
                ),
                "",
            )
        except OSError:
            continue
        if b"--server.port" in cmd and str(port).encode() in cmd and "zombie" not in state:
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_app_stops_on_a_signal_and_leaves_no_server_behind(sig: signal.Signals) -> None:
    """`pruning-explorer app` becomes the server (no child): SIGTERM or Ctrl-C stops it; no
    watcher."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("pruning-explorer")
    env = {**os.environ, "PRUNING_EXPLORER_WARM": "0"}
    proc = subprocess.Popen(
        [str(exe), "app", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
    )
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/_stcore/health", timeout=1
                ) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the server never became healthy")
        assert _serving(port) == [proc.pid]  # the command replaced itself with the server
        cmd = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmd[cmd.index(b"--server.fileWatcherType") + 1] == b"none"
        assert cmd[cmd.index(b"--server.runOnSave") + 1] == b"false"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert not _serving(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
