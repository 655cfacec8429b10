"""Dense vs pruned on every zoo model: measured ORT latency next to MACs and sizes.

For each zoo model and each method, the plan prunes every layer it can at RATIO (structured: every
dependency group; unstructured and 2:4: every layer). Dense and pruned are measured side by side
in one run, interleaved, REPEATS times; the figures are medians over the repeats (each repeat
itself the median of 50 timed runs after warm-up, 1 intra-op thread, batch 1).

    python benchmarks/zoo_latency.py [--repeats 5] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import statistics

from explorer import PruningPlan, Subject, get_method
from explorer.models import ZOO

METHODS = ["l1-structured", "l1-unstructured", "2:4"]


def plan_for(subject: Subject, method: str, ratio: float) -> PruningPlan:
    if get_method(method).structured:
        names = [layer.name for layer in subject.inventory.layers if layer.group]
    else:
        names = subject.layer_names
    return PruningPlan.uniform(method, names, ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    print(f"ratio {args.ratio}, {args.repeats} interleaved repeats, ORT CPU, 1 thread, batch 1\n")
    header = (f"{'model':<15} {'method':<16} {'dense ms':>9} {'pruned ms':>9} {'speedup':>8} {'MAC ratio':>9} "
              f"{'ONNX KB':>15} {'gzip KB':>15} {'accuracy':>15}")
    print(header)
    print("-" * len(header))
    for name in ZOO:
        subject = Subject(f"zoo:{name}")
        for method in METHODS:
            plan = plan_for(subject, method, args.ratio)
            pruned_model = subject.prune(plan)
            dense_ms, pruned_ms = [], []
            for _ in range(args.repeats):
                dense_m = subject.measure(subject.model)
                pruned_m = subject.measure(pruned_model)
                dense_ms.append(dense_m.latency_ms_median)
                pruned_ms.append(pruned_m.latency_ms_median)
            d, p = statistics.median(dense_ms), statistics.median(pruned_ms)
            print(f"{name:<15} {method:<16} {d:>9.3f} {p:>9.3f} {d / p:>7.2f}x {dense_m.macs / pruned_m.macs:>8.2f}x "
                  f"{dense_m.onnx_bytes / 1024:>7.0f}->{pruned_m.onnx_bytes / 1024:<6.0f} "
                  f"{dense_m.onnx_gzip_bytes / 1024:>7.0f}->{pruned_m.onnx_gzip_bytes / 1024:<6.0f} "
                  f"{100 * dense_m.accuracy:>6.2f}->{100 * pruned_m.accuracy:<6.2f}")
    print("\nUnstructured and 2:4 zeros leave ONNX Runtime's dense CPU kernels with the same work: "
          "expect ~1.0x; only the gzip size drops.")


if __name__ == "__main__":
    main()
