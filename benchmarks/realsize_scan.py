"""Sensitivity at real size: our scan against Distiller's loop, and on Ray with 1 and 2 workers.

ResNet-18 at 224x224 (tests/models/realsize.py) on 256 fixed random images without labels
(accuracy is agreement with the dense model), l1-unstructured at 9 ratios (0.1 ... 0.9) on every
layer (21 x 9 points). Distiller's loop (explorer.sensitivity.reference_scan): for each layer and
ratio a fresh copy, prune it, evaluate every image in PyTorch. Ours (explorer.sensitivity.scan,
cache off, engine built inside the timing): ONNX Runtime runs only the graph after the pruned
layer, fed with captured inner tensors. Then ours on a local Ray with 1 and with 2 workers
(Ray's start-up is not timed; the engine and the workers' sessions are). Every point of every run
is compared with Distiller's loop (within one image: ONNX Runtime rounds differently from
PyTorch) and the Ray points with the local ones (identical).

    python benchmarks/realsize_scan.py [--model resnet18] [--layers 21] [--ratios 0.1,...,0.9]
                                       [--no-reference] [--no-ray]

``--layers K`` scans K layers spread over the depth (all by default); the Distiller loop takes
about one full evaluation per point, so on a busy machine a subset may be all there is time for.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _realsize import MODELS, realsize

from explorer import sensitivity as sens
from explorer.distributed import executor
from explorer.sensitivity.engines import forget_engines
from explorer.subject import Subject

METHOD = "l1-unstructured"


def timed(fn):  # noqa: ANN001, ANN201
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def compare(a: pd.DataFrame, b: pd.DataFrame, n: int) -> str:
    diff = np.abs(a.accuracy.to_numpy() - b.accuracy.to_numpy())
    same = int((diff == 0).sum())
    worst = float(diff.max()) * n
    loss = float(np.abs(a.loss.to_numpy() - b.loss.to_numpy()).max())
    return (
        f"{same}/{len(diff)} identical, worst {worst:.0f} image(s) of {n}, max |loss diff|"
        f" {loss:.1e}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--layers", type=int, help="layers spread over the depth (default: all)")
    parser.add_argument("--ratios", default=",".join(str(r) for r in sens.DEFAULT_RATIOS))
    parser.add_argument("--no-reference", action="store_true", help="skip Distiller's loop")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()}"
        f" cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at start"
    )
    with tempfile.TemporaryDirectory(prefix="realsize-") as tmp:
        data = realsize().write_data(Path(tmp) / "images.npz", args.images)
        subject = Subject(f"{MODELS}:{args.model}", str(data))
        names = subject.layer_names
        layers = (
            names
            if not args.layers
            else [names[round(i)] for i in np.linspace(0, len(names) - 1, args.layers)]
        )
        points = len(layers) * len(ratios)
        print(
            f"\n== {args.model} at 224x224: {len(layers)} of {len(names)} layers x {len(ratios)}"
            f" ratios = {points} points, {args.images} images (no labels: agreement with the dense"
            f" model), {METHOD}"
        )
        forget_engines(subject)
        ours, w_ours, c_ours = timed(
            lambda: sens.scan(subject, METHOD, ratios, layers, cache=False)
        )
        print(
            f"  ours ({sens.estimate(subject, METHOD, ratios, layers, cache=False).engine}):"
            f" {w_ours:.1f} s (cpu {c_ours:.1f} s), {w_ours / points:.2f} s per point",
            flush=True,
        )
        if not args.no_reference:
            ref, w_ref, c_ref = timed(lambda: sens.reference_scan(subject, METHOD, ratios, layers))
            print(
                f"  Distiller's loop: {w_ref:.1f} s (cpu {c_ref:.1f} s), {w_ref / points:.2f} s per"
                " point"
            )
            print(
                f"  -> ours is {w_ref / w_ours:.1f}x faster (cpu {c_ref / c_ours:.1f}x); points vs"
                f" Distiller's loop: {compare(ref, ours, args.images)}",
                flush=True,
            )
        if not args.no_ray:
            for workers in (1, 2):
                ex = executor(workers=workers)
                try:
                    forget_engines(subject)
                    on_ray, w_ray, _ = timed(
                        lambda ex=ex: sens.scan(
                            subject, METHOD, ratios, layers, cache=False, executor=ex
                        )
                    )
                finally:
                    ex.close()
                same = on_ray.equals(ours)
                print(
                    f"  Ray, {workers} worker(s): {w_ray:.1f} s; points"
                    f" {'identical to' if same else 'DIFFER from'} the local run",
                    flush=True,
                )
    print(f"\nload average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
