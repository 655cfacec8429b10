"""Honest ratios under load: zeros stay ~1.0x "within noise" when dense and pruned are timed
alternately in one window, while timing them at different moments fakes speedups.

The benchmark starts its own background load: one busy-loop process per core, in bursts (busy
``--busy`` s, idle ``--idle`` s, so the machine's speed changes from one moment to the next as it
does when other work comes and goes). On zoo:digits-cnn with 50% of every
conv's weights zeroed (unstructured: ONNX Runtime's dense kernels do the same work, so the true
ratio is 1.0x), each trial measures the speedup twice:

- "separate": dense timed, then the pruned model timed ``--gap`` s later (each the median of the
  subject's timed runs), as a UI that measured the dense model once would;
- "interleaved": ``explorer.runtime.measure_speedup``, the app's and the CLI's rule (rounds of
  dense and pruned back to back, order alternating; median of per-round ratios; within noise when
  their range covers 1.0).

A structured 50% plan is measured the same way for contrast (a real speedup stays one).

    python benchmarks/noisy_speedup.py [--trials 12] [--busy 0.4] [--idle 0.4] [--gap 0.3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from explorer import PruningPlan, Subject
from explorer.runtime import OrtModel, export_onnx, measure_latency, measure_speedup


def _burner(stop: Any, busy: float, idle: float, seed: int) -> None:
    """Spin for ``busy`` seconds, rest ``idle`` seconds, until ``stop`` (an Event) is set."""
    time.sleep(seed * 0.07)  # the cores do not all start at once
    value = 1.0
    while not stop.is_set():
        end = time.perf_counter() + busy
        while time.perf_counter() < end:
            for _ in range(1000):
                value = value * 1.0000001 % 7.0
        stop.wait(idle)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--busy", type=float, default=0.4, help="seconds of each load burst")
    parser.add_argument("--idle", type=float, default=0.4, help="seconds between load bursts")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.3,
        help="seconds between the separate dense and pruned timings",
    )
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    subject = Subject("zoo:digits-cnn", runs=args.runs)
    convs = [layer.name for layer in subject.inventory.layers if layer.group]
    x = subject.example_input
    with tempfile.TemporaryDirectory(prefix="noisy-speedup-") as tmp:
        sessions = {"dense": OrtModel(export_onnx(subject.model, x, Path(tmp) / "dense.onnx"))}
        for name, method in (("zeros", "l1-unstructured"), ("channels", "l1-structured")):
            model = subject.prune(PruningPlan.uniform(method, convs, 0.5))
            sessions[name] = OrtModel(export_onnx(model, x, Path(tmp) / f"{name}.onnx"))
        cores = os.cpu_count() or 1
        print(
            f"zoo:digits-cnn, 50% of every conv; ORT CPU, 1 thread, batch 1, {args.runs} timed "
            "runs per model"
        )
        print(f"load average before: {_load()} (1, 5, 15 min) on {cores} cores")
        stop = mp.Event()
        burners = [
            mp.Process(target=_burner, args=(stop, args.busy, args.idle, i), daemon=True)
            for i in range(cores)
        ]
        for p in burners:
            p.start()
        try:
            time.sleep(3)  # let the load show in the load average
            print(
                f"background load: {cores} busy-loop process(es), bursts of {args.busy:.1f} s "
                "every "
                f"{args.busy + args.idle:.1f} s; load average now {_load()}\n"
            )
            print(
                f"{'trial':>5}  {'zeros: separate':>15}  {'zeros: interleaved (rounds)':<40}  "
                f"{'channels: interleaved (rounds)':<36}"
            )
            separate, interleaved, faked, noisy, channels = [], [], 0, 0, []
            feed = x.numpy()
            for trial in range(1, args.trials + 1):
                d = measure_latency(sessions["dense"], feed, runs=args.runs).median_ms
                time.sleep(args.gap)
                z = measure_latency(sessions["zeros"], feed, runs=args.runs).median_ms
                ratio = d / z
                separate.append(ratio)
                faked += abs(ratio - 1) > 0.10
                sp = measure_speedup(sessions["dense"], sessions["zeros"], feed, runs=args.runs)
                interleaved.append(sp.ratio)
                noisy += sp.within_noise
                sc = measure_speedup(sessions["dense"], sessions["channels"], feed, runs=args.runs)
                channels.append(sc)
                print(f"{trial:>5}  {ratio:>14.2f}x  {sp.describe():<40}  {sc.describe():<36}")
            print(f"\nload average under load: {_load()}")
        finally:
            stop.set()
            for p in burners:
                p.join(timeout=5)
    print(
        f"\nzeros, timed at different moments: {min(separate):.2f}x to {max(separate):.2f}x "
        f"(median {statistics.median(separate):.2f}x); {faked} of {args.trials} trials off by "
        "more than 10%"
    )
    print(
        f"zeros, interleaved: {min(interleaved):.2f}x to {max(interleaved):.2f}x "
        f"(median {statistics.median(interleaved):.2f}x); within noise in {noisy} of "
        f"{args.trials} trials"
    )
    print(
        "channels removed, interleaved: median "
        f"{statistics.median(s.ratio for s in channels):.2f}x; "
        f"faster in every round in {sum(s.faster for s in channels)} of {args.trials} trials"
    )
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
