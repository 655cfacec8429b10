"""Live Prune page at real size: slider-to-first-numbers and full evaluation on 224-px models.

ResNet-18 and MobileNetV2 (tests/models/realsize.py: torchvision's layout, seeded random weights,
batch-norm statistics estimated on images) on 256 fixed random images without labels: accuracy is
top-1 agreement with the dense model (random labels would make accuracy meaningless). Each move
sets one layer (a random one) to a ratio never tried before, as a user dragging sliders does, and
starts a live run (explorer.live, what the Prune page runs in its worker thread); we time the first
measured numbers (accuracy on the first images, with their interval) and the full evaluation
(every image scored, gzip size, latency timed: the numbers of Subject.evaluate). Then the same
moves in quick succession, each superseding the last before it finished (the run is cancelled).
The old path, Subject.evaluate (export + score all + time), is timed on a few moves for comparison.

    python benchmarks/realsize_live.py [--models resnet18,mobilenet_v2] [--moves 12] [--old 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _realsize import MODELS, realsize

from explorer.live import LiveEvaluator
from explorer.plan import LayerRule, PruningPlan
from explorer.subject import Subject

IMAGES = 256


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def moves(subject: Subject, method: str, n: int, seed: int) -> list[PruningPlan]:
    """``n`` plans, each one slider away from the previous (a new ratio on one layer)."""
    rng = np.random.default_rng(seed)
    names = (
        subject.layer_names
        if method.endswith("unstructured")
        else [layer.name for layer in subject.inventory.layers if layer.group is not None]
    )
    ratios: dict[str, float] = {}
    out = []
    while len(out) < n:
        layer = names[int(rng.integers(len(names)))]
        ratio = round(float(rng.integers(5, 90)) / 100, 2)
        if ratios.get(layer) == ratio:
            continue
        ratios[layer] = ratio
        out.append(PruningPlan(method, {k: LayerRule(v) for k, v in ratios.items()}))
    return out


def bench(name: str, data: Path, n_moves: int, n_old: int) -> None:
    torch.set_num_threads(1)  # as the app runs (ui/cache.py)
    t0 = time.perf_counter()
    subject = Subject(f"{MODELS}:{name}", str(data))
    subject.dense()
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluator = LiveEvaluator(subject)
    prepared = time.perf_counter() - t0
    inv = subject.inventory
    print(
        f"\n== {name}: {inv.total_params / 1e6:.1f} M parameters, {inv.total_macs / 1e9:.2f} GMACs"
        f" per image at 224x224, {IMAGES} images (no labels: agreement with the dense model)"
    )
    print(
        f"  load + dense measurement {loaded:.1f} s; live evaluator (one export of the dense model)"
        f" {prepared:.1f} s; template: {'yes' if evaluator.template else evaluator.template_miss}"
    )
    dense = subject.dense()[0]
    print(
        f"  dense: agreement 100%, ORT latency {dense.latency_ms_median:.1f} ms (batch 1,"
        f" {dense.latency_threads} thread), ONNX {dense.onnx_bytes / 1e6:.1f} MB"
    )
    print(
        f"  {'method':<16} {'moves':>5} {'first median s':>15} {'p95 s':>6} {'full median s':>14}"
        f" {'p95 s':>6}  stages of the full evaluation (median s)"
    )
    for i, method in enumerate(("l1-unstructured", "l1-structured")):
        plans = moves(subject, method, n_moves + 1, seed=i)
        evaluator.evaluate(
            plans[0]
        )  # one untimed move: the per-image time is learnt, as in the app
        first, full, cpu_first, cpu_full, stages, written = [], [], [], [], {}, set()
        window = []  # the dense model's latency in each run's timing window
        for plan in plans[1:]:
            c0 = time.process_time()
            run = evaluator.start(plan)
            t0 = time.perf_counter()
            ref = run.wait(600, measured=True)
            first.append(time.perf_counter() - t0)
            cpu_first.append(time.process_time() - c0)
            ref = run.wait(600)
            full.append(time.perf_counter() - t0)
            cpu_full.append(time.process_time() - c0)
            if run.error is not None:
                raise run.error
            assert ref is not None and ref.final
            written.add(ref.written_by)
            window.append(ref.result.dense.latency_ms_median)
            for k, v in ref.stages.items():
                stages.setdefault(k, []).append(v)
        parts = " ".join(f"{k} {statistics.median(v):.2f}" for k, v in stages.items())
        print(
            f"  {method:<16} {len(first):>5} {statistics.median(first):>15.2f} {p95(first):>6.2f}"
            f" {statistics.median(full):>14.2f} {p95(full):>6.2f}  {parts} (file:"
            f" {', '.join(sorted(written))})",
            flush=True,
        )
        print(
            f"  {'':<16} cpu time (every thread of this process): first numbers median"
            f" {statistics.median(cpu_first):.2f} s, full evaluation median"
            f" {statistics.median(cpu_full):.2f} s"
        )
        print(
            f"  {'':<16} dense latency in the runs' timing windows: median"
            f" {statistics.median(window):.1f} ms (timed alone at load:"
            f" {dense.latency_ms_median:.1f} ms)"
        )
        # Dragging: each move supersedes the previous one after its first numbers.
        chained, run = [], None
        for plan in moves(subject, method, n_moves, seed=100 + i):
            if run is not None:
                run.cancel()
            t0 = time.perf_counter()
            run = evaluator.start(plan)
            run.wait(600, measured=True)
            chained.append(time.perf_counter() - t0)
        assert run is not None
        run.wait(600)
        print(
            f"  {'':<16} dragging (each move cancels the one before): first numbers median "
            f"{statistics.median(chained):.2f} s, p95 {p95(chained):.2f} s"
        )
        if n_old:
            old = []
            for plan in plans[1 : 1 + n_old]:
                t0 = time.perf_counter()
                subject.evaluate(plan)
                old.append(time.perf_counter() - t0)
            print(
                f"  {'':<16} before (Subject.evaluate: export, score all, time), {len(old)} moves:"
                f" median {statistics.median(old):.2f} s",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--moves", type=int, default=12)
    parser.add_argument("--old", type=int, default=3, help="moves timed on the old path (0: none)")
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} (1,"
        " 5, 15 min) at start; torch 1 intra-op thread (as the app), ONNX Runtime scoring on every"
        " core"
    )
    with tempfile.TemporaryDirectory(prefix="realsize-") as tmp:
        data = realsize().write_data(Path(tmp) / "images.npz", IMAGES)
        for name in args.models.split(","):
            bench(name, data, args.moves, args.old)
    print(f"\nload average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
