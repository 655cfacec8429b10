"""int8 on a CPU without VNNI, measured: ONNX Runtime run on an emulated Haswell (AVX2, no VNNI).

The machines we test on may have AVX-512 VNNI; CI may not. This script quantizes the zoo CNN with
both recipes here, then runs each int8 model's fused kernels and its exact int8 arithmetic (the QDQ
graph unfolded, ``explorer.quantize.simulated_logits``) under ``qemu-x86_64 -cpu Haswell`` (Debian's
qemu-user), whose CPUID reports AVX2 and no VNNI, so ONNX Runtime's MLAS picks the AVX2 u8s8
kernels whose 16-bit intermediate sums saturate. Emulation is slow: a few dozen samples, and
expect tens of minutes.

    apt-get install -y qemu-user
    python benchmarks/int8_without_vnni.py [--samples 24] [--cpu Haswell]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from explorer.quantize import RECIPES, quantize_onnx
from explorer.runtime import export_onnx
from explorer.subject import Subject

RUNNER = textwrap.dedent("""
    import sys, numpy as np, onnxruntime as ort
    def session(path, level):
        o = ort.SessionOptions(); o.graph_optimization_level = level; o.intra_op_num_threads = 1
        o.log_severity_level = 3
        return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    folder = sys.argv[1]
    d = np.load(f"{folder}/data.npz"); x, y = d["x"], d["y"]
    full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    fp = session(f"{folder}/fp32.onnx", full).run(None, {"input": x})[0]
    print(f"fp32 {(fp.argmax(1) == y).mean():.4f}", flush=True)
    for recipe in sys.argv[2:]:
        path = f"{folder}/{recipe}.onnx"
        fused = session(path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, {"input": x})[0]
        exact = session(path, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, {"input": x})[0]
        print(f"{recipe} {(fused.argmax(1) == y).mean():.4f} {(exact.argmax(1) == y).mean():.4f} "
              f"{(fused.argmax(1) == exact.argmax(1)).mean():.4f}", flush=True)
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--cpu", default="Haswell", help="qemu CPU model without VNNI")
    parser.add_argument("--model", default="zoo:digits-cnn")
    args = parser.parse_args()
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("needs Debian's qemu-user (apt-get install -y qemu-user)")
    print(
        f"load average {os.getloadavg()[0]:.2f}; {args.model}, {args.samples} test samples, "
        f"ONNX Runtime under qemu-x86_64 -cpu {args.cpu}"
    )
    with tempfile.TemporaryDirectory(prefix="explorer-novnni-") as tmp:
        folder = Path(tmp)
        subject = Subject(args.model)
        fp32 = export_onnx(subject.model, subject.example_input, folder / "fp32.onnx")
        assert subject.data.train is not None
        for recipe in RECIPES:
            quantize_onnx(
                fp32,
                folder / f"{recipe}.onnx",
                "static",
                subject.data.train.x.numpy(),
                recipe=recipe,
            )
        np.savez(
            folder / "data.npz",
            x=subject.data.test.x.numpy()[: args.samples],
            y=subject.data.test.y.numpy()[: args.samples],
        )
        (folder / "run.py").write_text(RUNNER)
        start = time.perf_counter()
        out = subprocess.run(
            [
                qemu,
                "-cpu",
                args.cpu,
                sys.executable,
                "-u",
                str(folder / "run.py"),
                str(folder),
                *RECIPES,
            ],
            capture_output=True,
            text=True,
            timeout=4 * 3600,
        )
        lines = [line for line in out.stdout.splitlines() if line.strip()]
    print(f"emulated run: {time.perf_counter() - start:.0f} s")
    print(f"{'recipe':<20} {'fused int8':>11} {'exact int8':>11} {'agreement':>10}")
    for line in lines:
        name, *values = line.split()
        if name == "fp32":
            print(f"{'fp32':<20} {100 * float(values[0]):10.1f}%")
        else:
            fused, exact, agree = map(float, values)
            verdict = "saturates" if agree < 0.99 else "exact"
            print(
                f"{name:<20} {100 * fused:10.1f}% {100 * exact:10.1f}% {100 * agree:9.1f}% "
                f" {verdict}"
            )
    if out.returncode:
        print(out.stderr[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
