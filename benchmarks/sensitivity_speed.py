"""Sensitivity scan speed: our scan against Distiller's loop, side by side in one run.

Distiller's loop (``explorer.sensitivity.reference_scan``): for each layer and ratio, a fresh deep
copy of the model, prune that layer, evaluate the whole evaluation set in PyTorch. Ours
(``explorer.sensitivity.scan``, cache off): ONNX Runtime runs only the part of the graph after the
pruned layer, from that layer's cached inputs, with the masked weight fed as a graph input. The
time of ours includes building its engine (export, graph cuts, sessions) on every repeat.

For each model: ``l1-unstructured`` over every layer at 9 ratios (0.1 ... 0.9), the two scans
interleaved ``--repeats`` times; prints the median times, their ratio, and checks that every point
agrees within one sample (|accuracy difference| <= 1/N). Exit code 1 if a point disagrees.

    python benchmarks/sensitivity_speed.py [--repeats 3] [--models zoo:digits-cnn,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from explorer import Subject
from explorer import sensitivity as sens
from explorer.methods import get_method
from explorer.sensitivity.engines import engine_for, forget_engines

HERE = Path(__file__).resolve().parent
# (model spec, data spec): a zoo model, and a residual net the zoo does not have.
MODELS = {
    "zoo:digits-cnn": None,
    f"{HERE.parent / 'tests' / 'models' / 'residual_net.py'}:residual_net": "zoo:digits-32",
}
METHOD = "l1-unstructured"


def bench(model_spec: str, data_spec: str | None, repeats: int) -> bool:
    subject = Subject(model_spec, data_spec)
    n = len(subject.data.test)
    points = len(subject.layer_names) * len(sens.DEFAULT_RATIOS)
    name = model_spec if model_spec.startswith("zoo:") else Path(model_spec.split(":")[0]).stem
    print(
        f"\n== {name}: {len(subject.layer_names)} layers x {len(sens.DEFAULT_RATIOS)} ratios ="
        f" {points} points, {n} samples, {METHOD}"
    )
    ref_times, fast_times = [], []
    ref = fast = None
    for i in range(repeats):
        start = time.perf_counter()
        ref = sens.reference_scan(subject, METHOD, sens.DEFAULT_RATIOS)
        ref_times.append(time.perf_counter() - start)
        forget_engines(subject)  # ours pays for its engine (export, cuts, sessions) every time
        start = time.perf_counter()
        fast = sens.scan(subject, METHOD, sens.DEFAULT_RATIOS, cache=False)
        fast_times.append(time.perf_counter() - start)
        print(
            f"  repeat {i + 1}: Distiller loop {ref_times[-1]:7.2f} s   ours {fast_times[-1]:6.2f}"
            f" s   ({ref_times[-1] / fast_times[-1]:.1f}x)",
            flush=True,
        )
    assert ref is not None and fast is not None
    engine = engine_for(subject, get_method(METHOD))
    same_rows = list(ref.layer) == list(fast.layer) and list(ref.ratio) == list(fast.ratio)
    diff = np.abs(ref.accuracy.to_numpy() - fast.accuracy.to_numpy())
    worst = float(diff.max()) * n
    exact = int((diff == 0).sum())
    ok = same_rows and worst <= 1 + 1e-9
    t_ref, t_fast = statistics.median(ref_times), statistics.median(fast_times)
    print(f"  engine: {engine.name}")
    print(
        f"  median of {repeats}: Distiller loop {t_ref:.2f} s, ours {t_fast:.2f} s ->"
        f" {t_ref / t_fast:.1f}x faster"
    )
    print(
        f"  points: {exact}/{len(diff)} identical accuracy, worst difference {worst:.0f} sample(s)"
        f" of {n}, max |loss difference|"
        f" {np.abs(ref.loss.to_numpy() - fast.loss.to_numpy()).max():.2e} ->"
        f" {'OK' if ok else 'MISMATCH'}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", help="comma-separated model specs (default: the two built in)")
    args = parser.parse_args()
    models = MODELS if not args.models else {m: MODELS.get(m) for m in args.models.split(",")}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()}"
        f" cores, load average {os.getloadavg()[0]:.1f} at start"
    )
    ok = all([bench(spec, data, args.repeats) for spec, data in models.items()])
    print(
        f"\nload average {os.getloadavg()[0]:.1f} at end (other work on the machine slows both"
        " sides)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
