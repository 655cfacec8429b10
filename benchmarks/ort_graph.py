"""An ONNX file with ops our interpreter does not run (InstanceNormalization, Resize,
com.microsoft.Gelu): what the tool measures on it, and how fast.

Trains ``tests/models/ort_graph.py``'s digits CNN (seed 0), then prints: the dense numbers of the
user's own file; each unstructured method at 50% of every layer (accuracy, gzip size, latency next
to the dense file's, measured in the same run); the time of one evaluation as the Prune page does
it (prune, write the user's graph back, score and time it in ONNX Runtime; median of repeats); the
sensitivity scan against Distiller's loop, side by side; and an allocation for 70% sparsity.

Usage: python benchmarks/ort_graph.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from explorer import sensitivity as sens
from explorer.allocate import allocate
from explorer.methods import available_methods, get_method
from explorer.plan import LayerRule, PruningPlan
from explorer.sensitivity.engines import engine_for
from explorer.subject import Subject

ROOT = Path(__file__).resolve().parents[1]


def _write_model(out: Path) -> tuple[Path, Path]:
    spec = importlib.util.spec_from_file_location(
        "_ort_graph", ROOT / "tests" / "models" / "ort_graph.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=10, help="evaluations timed for the live figure"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ort-graph-") as tmp:
        model, data = _write_model(Path(tmp))
        t0 = time.perf_counter()
        subject = Subject(str(model), str(data))
        load = time.perf_counter() - t0
        dense, _ = subject.dense()
        print(
            f"model: digits CNN with {list(subject.model.ort_ops)} run in ONNX Runtime; "
            f"{len(subject.layer_names)} layers {subject.layer_names}; loaded in {load:.2f} s"
        )
        print(
            f"dense (your own file): accuracy {100 * dense.accuracy:.2f}%, gzip"
            f" {dense.onnx_gzip_bytes:,} B, latency median {dense.latency_ms_median:.4f} ms (batch"
            " 1, 1 thread)"
        )
        print(f"structured methods: off ({subject.inventory.structured_error[:80]}...)")

        print("\nevery layer at 50% (speedup: dense and pruned timed alternately in one window)")
        for method in [m for m in available_methods() if not get_method(m).structured]:
            why = [get_method(method).applies_to(n, subject.inventory) for n in subject.layer_names]
            if any(why):  # a method that cannot prune a layer here says why, as the app does
                print(f"  {method:<20} off: {next(w for w in why if w)}")
                continue
            plan = PruningPlan(
                method=method, layers={n: LayerRule(0.5) for n in subject.layer_names}
            )
            ev = subject.evaluate(plan)
            pruned = ev.pruned
            assert ev.speedup is not None
            print(
                f"  {method:<20} accuracy {100 * pruned.accuracy:6.2f}%  gzip"
                f" {pruned.onnx_gzip_bytes:>8,} B"
                f" ({pruned.onnx_gzip_bytes / dense.onnx_gzip_bytes:.0%} of dense)  speedup"
                f" {ev.speedup.describe()}"
            )

        rng = np.random.default_rng(0)
        times = []
        for _ in range(args.repeats):
            ratios = {n: float(rng.integers(1, 19)) / 20 for n in subject.layer_names}
            plan = PruningPlan(
                method="l1-unstructured", layers={n: LayerRule(r) for n, r in ratios.items()}
            )
            t0 = time.perf_counter()
            subject.evaluate(plan)
            times.append(time.perf_counter() - t0)
        print(
            "\none evaluation (prune, write back, score, timed alternately with dense): median"
            f" {statistics.median(times):.3f} s over {args.repeats} new plans"
        )

        ratios = [0.1, 0.3, 0.5, 0.7, 0.9]
        t0 = time.perf_counter()
        fast = sens.scan(subject, "l1-unstructured", ratios, cache=False)
        t_fast = time.perf_counter() - t0
        t0 = time.perf_counter()
        slow = sens.reference_scan(subject, "l1-unstructured", ratios)
        t_slow = time.perf_counter() - t0
        same = int((np.abs(fast.accuracy.to_numpy() - slow.accuracy.to_numpy()) < 1e-9).sum())
        print(
            f"\nsensitivity, {len(fast)} points:"
            f" {engine_for(subject, get_method('l1-unstructured')).name} {t_fast:.2f} s vs"
            f" Distiller's loop {t_slow:.2f} s ({t_slow / t_fast:.1f}x); {same}/{len(fast)}"
            " accuracies identical"
        )

        found = allocate(subject, ("sparsity", 0.7), "l1-unstructured")
        print(
            f"\nallocation for 70% sparsity: achieved {100 * found.achieved:.1f}%"
            f" ({'met' if found.met else 'missed'}), accuracy dense"
            f" {100 * found.dense_accuracy:.2f}%, predicted {100 * found.predicted_accuracy:.2f}%,"
            f" verified {100 * found.verified_accuracy:.2f}%"
        )
        print(f"  plan: {found.plan.to_dict()['layers']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
