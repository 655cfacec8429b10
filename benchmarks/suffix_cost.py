"""What one sensitivity point costs in the ONNX Runtime suffix engine, layer by layer.

ResNet-18 (or ``--model``) at 224x224 from tests/models/realsize.py on 256 fixed random images.
For ``--layers K`` layers spread over the depth, at one ratio (l1-unstructured, 0.5): the capture
pass (the dense model with the suffix's inputs as extra outputs), the suffix fed with the pruned
weight as a graph input (as the scan runs it, timed twice), the same suffix with the pruned
weight as a constant (so ONNX Runtime can fold and pre-pack it), and the "ideal": one dense pass
times the share of the model's MACs the suffix runs. A point near its ideal leaves nothing to
gain but running fewer MACs or scoring fewer images. Last, one PyTorch pass over the images (what
Distiller's loop runs per point) against the mean of the points here: the most the suffix engine
can be faster than that loop on these layers, capture passes aside.

    python benchmarks/suffix_cost.py [--model resnet18] [--images 256] [--layers 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _realsize import MODELS, realsize

from explorer.methods import get_method
from explorer.prune import pruned_weight
from explorer.runtime import INPUT_NAME, OUTPUT_NAME
from explorer.sensitivity.engines.ort_suffix import OrtSuffixEngine
from explorer.subject import Subject

BATCH = 32


def timed(session: object, feeds: list[dict[str, np.ndarray]]) -> float:
    start = time.perf_counter()
    for feed in feeds:
        session.run(None, feed)
    return time.perf_counter() - start


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--layers", type=int, default=5)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load average {load()} at start")
    with tempfile.TemporaryDirectory(prefix="suffix-cost-") as tmp:
        data = realsize().write_data(Path(tmp) / "images.npz", args.images)
        subject = Subject(f"{MODELS}:{args.model}", str(data))
        engine = OrtSuffixEngine(subject)
        graph = engine.graph
        x = subject.data.test.x.numpy()
        batches = [{INPUT_NAME: x[i : i + BATCH]} for i in range(0, len(x), BATCH)]
        dense = graph.capture(())
        timed(dense, batches)  # warm-up
        dense_s = timed(dense, batches)
        print(
            f"== {args.model} at 224x224, {len(x)} images in batches of {BATCH}, ONNX Runtime on"
            f" {graph.threads} threads: dense pass {dense_s:.2f} s ({1000 * dense_s / len(x):.1f}"
            " ms per image)"
        )
        print(
            f"  {'layer':<24} {'share':>5} {'capture s':>9} {'suffix (fed) s':>14}"
            f" {'again s':>7} {'constant s':>10} {'ideal s':>7}"
        )
        layers = engine.layers
        k = min(args.layers, len(layers))
        picks = [layers[round(j * (len(layers) - 1) / max(k - 1, 1))] for j in range(k)]
        method = get_method("l1-unstructured")
        points = []
        for name in picks:
            cut = graph.cut([name])
            if cut is None:
                continue
            needed = tuple(a for a in cut.activations if a != INPUT_NAME)
            capture = graph.capture(needed)
            start = time.perf_counter()
            acts = []
            for feed in batches:
                outs = capture.run(None, feed)
                acts.append({**feed, **dict(zip(needed, outs[1:], strict=True))})
            capture_s = time.perf_counter() - start
            (weight,) = cut.weights
            pruned = pruned_weight(method, subject.model, name, 0.5).numpy()
            fed = [{**{a: b[a] for a in cut.activations}, weight: pruned} for b in acts]
            timed(cut.suffix, fed)  # warm-up
            fed_s = timed(cut.suffix, fed)
            plan = graph.plan([name])
            assert plan is not None
            constant = _with_constant(graph, plan, weight, pruned)
            plain = [{a: b[a] for a in cut.activations} for b in acts]
            timed(constant, plain)
            constant_s = timed(constant, plain)
            again_s = timed(cut.suffix, fed)
            points.append(min(fed_s, again_s))
            print(
                f"  {name:<24} {plan.fraction:>5.2f} {capture_s:>9.2f} {fed_s:>14.2f}"
                f" {again_s:>7.2f} {constant_s:>10.2f} {dense_s * plan.fraction:>7.2f}"
            )
        model = subject.model.eval()
        with torch.no_grad():
            xt = subject.data.test.x
            model(xt[:BATCH])  # warm-up
            start = time.perf_counter()
            for i in range(0, len(xt), BATCH):
                model(xt[i : i + BATCH])
            torch_s = time.perf_counter() - start
        mean = sum(points) / len(points)
        print(
            f"  PyTorch pass ({torch.get_num_threads()} threads): {torch_s:.2f} s; mean point here"
            f" {mean:.2f} s -> at most {torch_s / mean:.1f}x Distiller's loop on these layers"
        )
    print(f"load average at end {load()}")
    return 0


def _with_constant(graph: object, plan: object, weight: str, value: np.ndarray) -> object:
    """The suffix session with ``weight`` an initializer holding ``value``."""
    dense = graph.dense_weights[weight]
    graph.dense_weights[weight] = value
    try:
        make: Callable[..., object] = graph._session
        return make(set(plan.nodes), plan.activations, [OUTPUT_NAME], set())
    finally:
        graph.dense_weights[weight] = dense


if __name__ == "__main__":
    sys.exit(main())
