"""Structured pruning that is never silently slower, on a MobileNetV2 at 96 px.

``tests/models/mobilenet_v2.py``: inverted residuals, depthwise convolutions, linear bottlenecks
coupled through residual adds (seeded random weights: accuracy is chance, latency is what counts).
Every speedup is dense and pruned timed alternately in one window (median of the per-round ratios,
their range in brackets; ``explorer.runtime.measure_speedup``).

1. 30% of the channels of every group: as the ratio gives them (counts like 101 of 144), then
   rounded up to multiples of 8 and of 16 (the plan's ``round_to``). FIGURE 1: with the CPU's fast
   multiple (``explorer.latency.fast_multiple``) the plan measures at least 1.2x faster than dense.
2. ``--explain``: why the unrounded plan is slower (``explorer.rounding.explain_slowdown``: the
   width of each group timed alone against dense), and the rounded plan it offers, measured.
3. ``allocate --target-latency 0.7`` (the CLI's defaults: kept channels rounded to the fast
   multiple, met only when every interleaved round is within the target). FIGURE 2: met, measured.

    python benchmarks/mobile_latency.py [--ratio 0.3] [--target 0.7] [--explain] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from explorer import PruningPlan, Subject
from explorer.allocate import allocate
from explorer.latency import fast_multiple
from explorer.rounding import explain_slowdown

HERE = Path(__file__).resolve().parent.parent / "tests" / "models" / "mobilenet_v2.py"
MODEL, DATA = f"{HERE}:mobilenet_v2", f"{HERE}:data"


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--explain", action="store_true", help="also explain the unrounded plan (slow: every group)"
    )
    args = parser.parse_args()
    print(f"load average before: {_load()} (1, 5, 15 min) on {os.cpu_count()} cores")
    start = time.perf_counter()
    subject = Subject(MODEL, DATA, threads=args.threads)
    dense, _ = subject.dense()
    fast = fast_multiple()
    print(
        f"MobileNetV2 96x96 px: {len(subject.inventory.layers)} layers, "
        f"{len(subject.inventory.groups)} groups, "
        f"{dense.macs:,} MACs, dense {dense.latency_ms_median:.3f} ms (ORT CPU, batch 1, "
        f"{args.threads} thread(s)); "
        f"fast multiple on this CPU: {fast} (loaded in {time.perf_counter() - start:.1f} s)\n"
    )
    names = [n for members in subject.inventory.groups.values() for n in members]
    plan = PruningPlan.uniform("l1-structured", names, args.ratio, model=MODEL)
    print(f"[1] l1-structured {args.ratio:.0%} of every group")
    print(f"{'kept channels':<28} {'MAC ratio':>9}  speedup vs dense (interleaved, rounds)")
    results = {}
    for round_to in (None, 8, 16):
        ev = subject.evaluate(plan.with_round_to(round_to))
        results[round_to] = ev
        assert ev.speedup is not None
        label = (
            "as the ratio gives them"
            if round_to is None
            else f"rounded up to multiples of {round_to}"
        )
        verdict = (
            "slower" if ev.speedup.slower else "faster" if ev.speedup.faster else "within noise"
        )
        print(f"{label:<28} {ev.mac_ratio:>8.2f}x  {ev.speedup.describe()}: {verdict}")
    best = results[fast].speedup
    assert best is not None
    holds = best.faster and best.ratio >= 1.2
    print(
        f"FIGURE 1: rounded to the CPU's fast multiple ({fast}): {best.ratio:.2f}x faster than "
        "dense, every round "
        f"{'above' if best.faster else 'NOT all above'} 1.0x (target: at least 1.2x) -> "
        f"{'HOLDS' if holds else 'DOES NOT HOLD'}"
    )
    print(f"load average: {_load()}\n")

    if args.explain:
        print("[2] the unrounded plan, explained")
        t = time.perf_counter()
        found = explain_slowdown(subject, results[None])
        if found is None:
            print("  it did not measure slower than dense in every round: nothing to explain")
        else:
            for line in found.lines():
                print(f"  {line}")
        print(f"  ({time.perf_counter() - t:.0f} s; load average {_load()})\n")

    print(f"[3] allocate --target-latency {args.target} (l1-structured, the CLI's defaults)")
    t = time.perf_counter()
    result = allocate(subject, ("latency", args.target), "l1-structured")
    share = result.speedup.latency_share if result.speedup is not None else None
    print(
        f"  plan: {len(result.plan.layers)} layers, kept channels rounded to multiples of "
        f"{result.plan.round_to}"
    )
    print(
        f"  achieved {100 * result.achieved:.1f}% of the dense latency in the slowest round"
        + (
            f" (median {100 * share.value:.1f}%, rounds "
            f"{100 * share.low:.1f}-{100 * share.high:.1f}%)"
            if share
            else ""
        )
        + f", {result.rounds} knapsack round(s), {time.perf_counter() - t:.0f} s"
    )
    if result.evaluation is not None and result.evaluation.speedup is not None:
        print(
            f"  verified: {result.evaluation.speedup.describe()} faster than dense, MAC ratio "
            f"{result.evaluation.mac_ratio:.2f}x"
        )
    print(
        f"FIGURE 2: latency <= {args.target:.0%} of dense in every interleaved round -> "
        f"{'MET' if result.met else 'NOT MET'}"
    )
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
