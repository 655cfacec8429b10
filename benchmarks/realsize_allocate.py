"""Allocation at real size: the four kinds of target on a 224-px model, from an empty cache and
again with the curves cached (reopening the page).

ResNet-18 (or ``--model``) from tests/models/realsize.py on 256 fixed random images without labels
(accuracy is agreement with the dense model). Each target runs ``explorer.allocate.allocate``
(sensitivity curves, savings, knapsack rounds measured on the pruned model, the baselines for
sparsity, and the verification) with the progress messages printed as they come (they carry the
ETA), then once more with everything the first run cached. ``--curve-images N`` scans the curves
on N of the images (a seeded subset) and verifies on all: the table then says whether the plan's
agreement on the subset predicted that on all (``inside`` its 95 % interval).

    python benchmarks/realsize_allocate.py [--model resnet18] [--images 256] [--workers N]
        [--curve-images N] [--targets sparsity,macs,size,latency]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _realsize import MODELS, realsize

from explorer import sensitivity as sens
from explorer.allocate import Target, allocate
from explorer.distributed import executor
from explorer.subject import Subject

TARGETS = (
    ("sparsity", 0.5, "l1-unstructured"),
    ("macs", 0.7, "l1-structured"),
    ("size", 0.7, "l1-structured"),
    ("latency", 0.8, "l1-structured"),
)


class Printer:
    """Prints a progress message every ``every`` seconds (with the time since the start)."""

    def __init__(self, every: float = 15.0) -> None:
        self.start = time.perf_counter()
        self.last = -every
        self.every = every

    def __call__(self, fraction: float, message: str) -> None:
        now = time.perf_counter() - self.start
        if now - self.last >= self.every or fraction >= 1:
            self.last = now
            print(f"      {now:6.0f} s  {100 * fraction:5.1f}%  {message[:110]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, help="scan on a local Ray with N workers")
    parser.add_argument("--curve-images", type=int, help="curves on N of the images")
    parser.add_argument("--targets", default="sparsity,macs,size,latency")
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at"
        " start"
    )
    with tempfile.TemporaryDirectory(prefix="realsize-") as tmp:
        os.environ[sens.CACHE_ENV] = str(Path(tmp) / "cache")  # an empty cache
        data = realsize().write_data(Path(tmp) / "images.npz", args.images)
        subject = Subject(f"{MODELS}:{args.model}", str(data))
        subject.dense()
        ex = executor(workers=args.workers)
        print(
            f"== {args.model} at 224x224, {args.images} images (agreement with the dense model)"
            + (f", scans on Ray with {args.workers} workers" if args.workers else "")
            + (f", curves on {args.curve_images} of the images" if args.curve_images else "")
        )
        rows = []
        wanted = args.targets.split(",")
        try:
            for kind, value, method in (t for t in TARGETS if t[0] in wanted):
                target = Target(kind, value)
                print(f"  {target.describe()} ({method}), empty cache:", flush=True)
                on = {"executor": ex, "curve_images": args.curve_images}
                t0 = time.perf_counter()
                result = allocate(subject, target, method, on_progress=Printer(), **on)
                cold = time.perf_counter() - t0
                t0 = time.perf_counter()
                allocate(subject, target, method, **on)
                warm = time.perf_counter() - t0
                rows.append((target.describe(), method, result, cold, warm))
        finally:
            ex.close()
        print(
            f"\n  {'target':<28} {'method':<16} {'achieved':>8} {'met':>4} {'rounds':>6}"
            f" {'predicted':>9} {'verified':>8} {'subset':>7} {'inside':>6} {'cold s':>7}"
            f" {'cached s':>8}"
        )
        for what, method, r, cold, warm in rows:
            sub = r.curves_on
            print(
                f"  {what:<28} {method:<16} {r.achieved:>8.3f} {'yes' if r.met else 'NO':>4}"
                f" {r.rounds:>6} {100 * r.predicted_accuracy:>8.2f}%"
                f" {100 * (r.verified_accuracy or 0):>7.2f}%"
                f" {(f'{100 * sub.accuracy:.2f}%' if sub and sub.accuracy is not None else '-'):>7}"
                f" { ({True: 'yes', False: 'NO', None: '-'}[r.representative]):>6}"
                f" {cold:>7.0f} {warm:>8.0f}"
            )
            if sub is not None:
                print(f"      {sub.describe(r.verified_accuracy, 'agreement')}")
    print(f"\nload average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
