"""Whole blocks removed: each residual block measured removed alone, then a plan removing the two
that cost least, evaluated (accuracy, MACs, and the speedup timed alternately with the dense model).

On zoo:digits-resnet (trained, 360 labelled test digits) and on ResNet-18 at 224 px
(tests/models/realsize.py: seeded weights, 256 unlabelled images, so accuracy is agreement with
the dense model). The block scan runs from an empty cache (each point: the model with one block
replaced by the identity, exported to ONNX, scored in ONNX Runtime), then again from the cache.

    python benchmarks/blocks.py [--models digits-resnet,resnet18]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

MODELS = Path(__file__).resolve().parents[1] / "tests" / "models" / "realsize.py"


def _subject(name: str, tmp: Path):  # noqa: ANN202
    from explorer.subject import Subject

    if name.startswith("digits"):
        return Subject(f"zoo:{name}")
    spec = importlib.util.spec_from_file_location("_realsize_bench", MODELS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_realsize_bench"] = module
    spec.loader.exec_module(module)
    data = module.write_data(tmp / "images.npz")
    return Subject(f"{MODELS}:{name}", str(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-resnet,resnet18")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="explorer-bench-blocks-") as tmp:
        os.environ["PRUNING_EXPLORER_CACHE"] = tmp  # an empty cache: every point is measured
        from explorer.plan import PruningPlan
        from explorer.sensitivity import block_scan

        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"2 cores, load average {load} (1, 5, 15 min) at start; ORT latency 1 thread")
        for name in args.models.split(","):
            subject = _subject(name, Path(tmp))
            what = "accuracy" if subject.data.has_labels else "agreement"
            dense = subject.dense()[0]
            print(
                f"\n== {name}: {len(subject.blocks)} removable blocks of"
                f" {dense.params_total / 1e6:.2f} M parameters; dense {what}"
                f" {100 * dense.accuracy:.2f} %, {len(subject.data.test)} test samples"
            )
            t0 = time.perf_counter()
            frame = block_scan(subject)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            block_scan(subject)
            again = time.perf_counter() - t0
            removed = frame[frame["ratio"] == 1.0]
            total = subject.inventory.total_macs
            print(f"  block            {what} removed   drop (points)  params saved  MACs saved")
            for row in removed.itertuples():
                print(
                    f"  {row.layer:<16} {100 * row.accuracy:14.2f} %"
                    f" {100 * (dense.accuracy - row.accuracy):14.2f}"
                    f" {row.params:13,} {100 * row.macs / total:10.1f} %"
                )
            print(
                f"  block scan: {len(removed)} points in {first:.1f} s from an empty cache,"
                f" {again:.2f} s from the cache"
            )
            cheapest = removed.sort_values("accuracy", ascending=False)["layer"].head(2).tolist()
            result = subject.evaluate(PruningPlan(method="l1-unstructured", blocks=tuple(cheapest)))
            sp = result.speedup
            print(
                f"  plan removing {cheapest}: {what} {100 * result.pruned.accuracy:.2f} %"
                f" (dense {100 * result.dense.accuracy:.2f} %), MACs"
                f" {result.pruned.macs / result.dense.macs:.2f}x of dense, measured speedup"
                f" {sp.ratio:.2f}x (rounds {sp.median.low:.2f}-{sp.median.high:.2f}x"
                f"{', within noise' if sp.within_noise else ''})"
            )
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"\nload average at end {load}")


if __name__ == "__main__":
    main()
