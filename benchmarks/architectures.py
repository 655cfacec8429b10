"""Every architecture of the test matrix at a realistic size, through the doors, timed.

For each architecture of ``tests/models/architectures.py`` built at its realistic size (224 px
images, 128 tokens; random weights with batch-norm statistics from a few batches of random data)
this prints: how long a new user waits for the model to open (``Subject``: load, layer inventory
with DepGraph, one trial removal) through the ``PATH.py:FUNC`` entrypoint and through the ONNX
file torch's TorchScript exporter writes; the dense ONNX Runtime latency (CPU, 1 thread, batch 1);
the measured latency ratio of a structured plan removing 30% of the channels
(``l2-structured`` on every layer that can lose channels; heads as whole heads) and its MAC
ratio; and the ONNX parity of that pruned model (ONNX Runtime against torch, relative to the output
scale).

The ratio is measured as the app and the CLI measure it (``explorer.runtime.measure_speedup``):
dense and pruned alternating in one window (7 rounds of 15 runs each), the median of the
per-round ratios with the rounds' range, "within noise" when that range covers 1.0; the dense
latency is the median of the dense runs of that window.

    python benchmarks/architectures.py                 # every architecture (about an hour)
    python benchmarks/architectures.py resnet vit      # some of them
    python benchmarks/architectures.py --round-to 16 mobilenet_v2   # kept channels rounded up

Each architecture runs in its own process (the largest hold ~500 MB of weights and exports).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH_PATH = ROOT / "tests" / "models" / "architectures.py"
ROUNDS, RUNS_PER_ROUND = 7, 15


def _architectures():  # noqa: ANN202
    name = "_bench_architectures"
    spec = importlib.util.spec_from_file_location(name, ARCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def measure(name: str, round_to: int | None = None) -> dict:
    """One architecture's row (run in a child process)."""
    import numpy as np
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    arch = _architectures()
    from explorer.inputs import run_model
    from explorer.plan import LayerRule, PruningPlan
    from explorer.runtime import OrtModel, export_onnx, measure_latency, measure_speedup
    from explorer.subject import Subject
    from explorer.tolerance import relative_error

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    data = tmp / "data.npz"
    np.savez(data, **arch.make_data(name, n=8, real=True))
    # The entrypoint the user gives: a file whose function builds the model at its real size.
    entry = tmp / "model.py"
    entry.write_text(
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('a', {str(ARCH_PATH)!r})\n"
        "a = importlib.util.module_from_spec(spec)\n"
        "sys.modules['a'] = a\n"
        "spec.loader.exec_module(a)\n"
        f"def build():\n    return a.build({name!r}, real=True)\n"
    )
    t0 = time.perf_counter()
    subject = Subject(f"{entry}:build", str(data), threads=1, runs=30)
    entry_s = time.perf_counter() - t0
    row = {"name": name, "params": subject.inventory.total_params, "entry_load_s": entry_s}

    # The ONNX file torch's TorchScript exporter writes, opened through the .onnx door.
    onnx_path = tmp / "user.onnx"
    x = subject.example_input
    export_onnx(subject.model, x, onnx_path)
    t0 = time.perf_counter()
    try:
        onnx_subject = Subject(str(onnx_path), str(data), threads=1, runs=30)
        row["onnx_load_s"] = time.perf_counter() - t0
        row["onnx_groups"] = len(onnx_subject.inventory.groups)
        del onnx_subject
    except Exception as e:  # reported in the table, not hidden
        row["onnx_load_s"], row["onnx_error"] = (
            time.perf_counter() - t0,
            f"{type(e).__name__}: {str(e)[:120]}",
        )

    layers = {
        layer.name: LayerRule(0.3) for layer in subject.inventory.layers if layer.group is not None
    }
    row["structured_layers"] = f"{len(layers)}/{len(subject.inventory.layers)}"
    dense_path = export_onnx(subject.model, x, tmp / "dense.onnx")
    dense = OrtModel(dense_path, threads=1)
    feeds = x.numpy()
    row["dense_ms"] = measure_latency(dense, feeds, runs=30).median_ms
    if layers:
        plan = PruningPlan(method="l2-structured", layers=layers, round_to=round_to)
        pruned = subject.prune(plan)
        pruned_session = OrtModel(export_onnx(pruned, x, tmp / "pruned.onnx"), threads=1)
        speedup = measure_speedup(
            dense, pruned_session, feeds, runs=ROUNDS * RUNS_PER_ROUND, rounds=ROUNDS
        )
        row["ratio"], row["low"], row["high"] = (
            speedup.ratio,
            speedup.median.low,
            speedup.median.high,
        )
        row["within_noise"] = speedup.within_noise
        row["dense_ms"] = speedup.dense.median_ms
        from explorer.inspect import count_macs

        row["mac_ratio"] = subject.inventory.total_macs / max(
            sum(count_macs(pruned, x).values()), 1
        )
        batch = subject.data.test.x[:4]
        with torch.no_grad():
            ours = run_model(pruned, batch).numpy()
        row["parity"] = relative_error(pruned_session(batch.numpy()), ours)
    return row


def _fmt(row: dict) -> str:
    ratio = (
        f"{row['ratio']:.2f}x ({row['low']:.2f}-{row['high']:.2f}"
        + (", within noise)" if row["within_noise"] else ")")
        if "ratio" in row
        else "-"
    )
    mac = f"{row['mac_ratio']:.2f}x" if "mac_ratio" in row else "-"
    parity = f"{row['parity']:.1e}" if "parity" in row else "-"
    onnx = f"{row['onnx_load_s']:.1f}" + (" (error)" if "onnx_error" in row else "")
    return (
        f"| {row['name']} | {row['params'] / 1e6:.1f} M | {row['entry_load_s']:.1f} | {onnx} | "
        f"{row['structured_layers']} | {row['dense_ms']:.1f} | {ratio} | {mac} | {parity} |"
    )


def main(names: list[str], round_to: int | None = None) -> None:
    arch = _architectures()
    names = names or list(arch.ARCHS)
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(
        f"ONNX Runtime CPU, 1 thread, batch 1; ratio: dense/pruned latency, {ROUNDS} interleaved "
        f"rounds of {RUNS_PER_ROUND} runs (median of the per-round ratios, their range); plan: "
        "l2-structured 30% on every layer that can lose channels"
        + (f", kept channels rounded up to a multiple of {round_to}" if round_to else "")
        + "\n"
    )
    print(
        "| architecture | params | open, entrypoint (s) | open, .onnx (s) | structured layers | "
        "dense (ms) | "
        "30% structured: measured ratio | MAC ratio | ONNX parity |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", name, *([str(round_to)] if round_to else [])],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
            print(f"| {name} | failed: {tail} |||||||")
            continue
        row = json.loads(lines[-1])
        print(_fmt(row), flush=True)
        for key in ("onnx_error",):
            if key in row:
                print(f"|  | {key}: {row[key]} |||||||")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        sys.path.insert(0, str(ROOT))
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)))
    elif len(sys.argv) > 2 and sys.argv[1] == "--round-to":
        main(sys.argv[3:], int(sys.argv[2]))
    else:
        main(sys.argv[1:])
