"""Wanda's input norms (``||X_j||`` of every layer, the calibration pass OWL's ratios and the
Wanda criteria read) at real size: from the unfolded patches (im2col, what they were) against
strided slices of the summed squares (``explorer.methods.calibration.feature_square_sums``),
interleaved in one process, on the same calibration images. Both must give the same norms.

    python benchmarks/calibration_norms.py [--models resnet18,mobilenet_v2] [--images 256]
        [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from _realsize import MODELS, realsize

from explorer.methods import calibration
from explorer.subject import Subject


def _unfolded(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The code before: the float32 sum over the im2col rows."""
    return calibration.unfold_input(module, x).pow(2).sum(0).double()


def _norms(subject: Subject, squares) -> tuple[dict[str, torch.Tensor], float]:
    """The norms with ``squares`` as the per-batch square sums, from a cleared cache, timed."""
    calibration._cache.clear()
    saved = calibration.feature_square_sums
    calibration.feature_square_sums = squares
    try:
        t0 = time.perf_counter()
        assert subject.calibration is not None
        norms = calibration.input_norms(subject.model, subject.calibration)
        return norms, time.perf_counter() - t0
    finally:
        calibration.feature_square_sums = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, load average {load}")
    with TemporaryDirectory(prefix="calibration-") as tmp:
        data = realsize().write_data(Path(tmp) / "images.npz", args.images)
        for name in args.models.split(","):
            subject = Subject(f"{MODELS}:{name}", str(data))
            assert subject.calibration is not None
            n = min(len(subject.calibration.x), calibration.SAMPLES)
            print(f"== {name} at 224x224, input norms of every layer over {n} calibration images")
            old, new = [], []
            for r in range(args.repeats):  # interleaved: each repeat runs both, order swapped
                order = [("im2col", _unfolded), ("slices", calibration.feature_square_sums)]
                for label, squares in order if r % 2 == 0 else order[::-1]:
                    norms, seconds = _norms(subject, squares)
                    (old if label == "im2col" else new).append((norms, seconds))
                print(
                    f"  repeat {r + 1}: im2col {old[-1][1]:6.2f} s   slices {new[-1][1]:6.2f} s"
                    f"   load {os.getloadavg()[0]:.2f}"
                )
            worst = max(
                float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())
                for (na, _), (nb, _) in zip(old, new, strict=True)
                for a, b in ((na[k], nb[k]) for k in na)
            )
            med_old = sorted(s for _, s in old)[len(old) // 2]
            med_new = sorted(s for _, s in new)[len(new) // 2]
            print(
                f"  median: im2col {med_old:.2f} s, slices {med_new:.2f} s"
                f" -> {med_old / med_new:.1f}x; largest relative difference of a norm {worst:.1e}"
                " (float32 sums before, float64 now)"
            )
    print(f"load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
