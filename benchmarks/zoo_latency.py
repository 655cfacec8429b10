"""Dense vs pruned on every zoo model: measured ORT latency next to MACs and sizes.

For each zoo model and each method, the plan prunes every layer it can at RATIO (structured: every
dependency group; unstructured and 2:4: every layer). The speedup is ``Subject.evaluate``'s: dense
and pruned timed alternately in one window (7 rounds of 10 runs each, 1 intra-op thread, batch 1),
the median of the per-round ratios with their range; "~" marks a ratio within noise (the range
covers 1.0x). The latencies are the window's medians.

    python benchmarks/zoo_latency.py [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import os

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
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    print(
        f"ratio {args.ratio}, dense and pruned timed alternately (7 rounds x 10 runs), ORT CPU, 1"
        f" thread, batch 1; load average {os.getloadavg()[0]:.2f}\n"
    )
    header = (
        f"{'model':<15} {'method':<16} {'dense ms':>9} {'pruned ms':>9} {'speedup (rounds)':>24} "
        f"{'MAC ratio':>9} {'ONNX KB':>15} {'gzip KB':>15} {'accuracy':>15}"
    )
    print(header)
    print("-" * len(header))
    for name in ZOO:
        subject = Subject(f"zoo:{name}")
        for method in METHODS:
            ev = subject.evaluate(plan_for(subject, method, args.ratio))
            d, p, sp = ev.dense, ev.pruned, ev.speedup
            assert sp is not None
            speed = (
                f"{'~' if sp.within_noise else ' '}{sp.ratio:.2f}x"
                f" ({sp.median.low:.2f}-{sp.median.high:.2f})"
            )
            print(
                f"{name:<15} {method:<16} {d.latency_ms_median:>9.3f} {p.latency_ms_median:>9.3f}"
                f" {speed:>24} {ev.mac_ratio:>8.2f}x"
                f" {d.onnx_bytes / 1024:>7.0f}->{p.onnx_bytes / 1024:<6.0f}"
                f" {d.onnx_gzip_bytes / 1024:>7.0f}->{p.onnx_gzip_bytes / 1024:<6.0f}"
                f" {100 * d.accuracy:>6.2f}->{100 * p.accuracy:<6.2f}"
            )
    print(
        "\n~: within noise. Unstructured and 2:4 zeros leave ONNX Runtime's dense CPU kernels with"
        " the same work: expect ~1.0x; only the gzip size drops. Load average after:"
        f" {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
