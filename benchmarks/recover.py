"""Recovery and int8 figures: prune, recover (BN recalibration + fine-tuning), quantize, measure.

Three figures, each printed with its verdict:

1. zoo:digits-mlp at 90% global unstructured sparsity (l1, all layers) recovers to within 1 point
   of dense test accuracy with at most 30 s of fine-tuning;
2. zoo:digits-cnn pruned structurally (l1-structured on every conv group) to at least 2x measured
   ONNX Runtime speedup recovers to within 1 point of dense;
3. the pruned + recovered + int8 model is at least 80% smaller (gzip bytes) than the dense fp32
ONNX.

Every accuracy is measured on the exported ONNX in ONNX Runtime on the test split (fine-tuning
only sees train, and val for choosing its checkpoint). Latency: batch 1, ``--threads`` intra-op
threads, dense and pruned timed alternately in ``--repeats`` rounds, medians of the rounds. The
fine-tuning time is the median of ``--repeats`` identical runs (same seed, same result).

Usage: python benchmarks/recover.py [--repeats 5] [--threads 1] [--runs 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from explorer.evaluate import Metrics
from explorer.plan import LayerRule, PruningPlan
from explorer.quantize import Int8Comparison, compare_int8, cpu_int8_support
from explorer.recover import FinetuneResult, finetune, recalibrate_bn
from explorer.runtime import OrtModel, measure_latency
from explorer.subject import Subject


@dataclass(frozen=True)
class Recipe:
    """The fine-tuning recipe (the library's defaults except for the epochs)."""

    epochs: int
    lr: float = 3e-3
    distill: bool = True
    temperature: float = 2.0
    alpha: float = 0.5

    def __str__(self) -> str:
        kd = (
            f", distilled from dense (T={self.temperature}, alpha={self.alpha})"
            if self.distill
            else ""
        )
        return f"{self.epochs} epochs, Adam lr {self.lr} cosine{kd}"


MLP_RECIPE = Recipe(epochs=60)
CNN_RECIPE = Recipe(epochs=10)
CNN_RATIO = 0.5  # of the output channels of every conv group
BN = {True: ", batch-norm statistics re-estimated first", False: " (no batch-norm layers)"}


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def run_finetune(
    subject: Subject, model: torch.nn.Module, recipe: Recipe, repeats: int
) -> tuple[FinetuneResult, float]:
    """Fine-tune ``repeats`` times (same seed); the result of the first and the median seconds."""
    results = [
        finetune(
            model,
            subject.data,
            recipe.epochs,
            lr=recipe.lr,
            distill_from=subject.model if recipe.distill else None,
            temperature=recipe.temperature,
            alpha=recipe.alpha,
        )
        for _ in range(repeats)
    ]
    first = results[0].model.state_dict()
    same = all(torch.equal(first[k], r.model.state_dict()[k]) for r in results[1:] for k in first)
    if not same:
        print(
            "  note: repeated fine-tuning runs gave different weights (non-deterministic kernels)"
        )
    return results[0], statistics.median(r.seconds for r in results)


def side_by_side_latency(
    paths: dict[str, Path], x: torch.Tensor, threads: int, runs: int, repeats: int
) -> dict[str, float]:
    """Median over ``repeats`` rounds of each model's median latency; models alternate within a
    round."""
    sessions = {name: OrtModel(path, threads=threads) for name, path in paths.items()}
    feed = x.numpy()
    rounds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, session in sessions.items():
            rounds[name].append(measure_latency(session, feed, runs=runs).median_ms)
    return {name: statistics.median(values) for name, values in rounds.items()}


def row(
    label: str,
    m: Metrics | None = None,
    *,
    accuracy: float | None = None,
    gzip: int | None = None,
    latency: float | None = None,
    nonzero: int | None = None,
) -> str:
    accuracy = m.accuracy if m is not None else accuracy
    gzip = m.onnx_gzip_bytes if m is not None else gzip
    nonzero = m.params_nonzero if m is not None else nonzero
    cells = [
        pct(accuracy) if accuracy is not None else "-",
        f"{gzip:,}" if gzip is not None else "-",
        f"{nonzero:,}" if nonzero is not None else "-",
        f"{latency:.3f}" if latency is not None else "-",
    ]
    return f"  {label:<40} {cells[0]:>9} {cells[1]:>12} {cells[2]:>10} {cells[3]:>10}"


HEADER = f"  {'':<40} {'accuracy':>9} {'gzip bytes':>12} {'nonzero':>10} {'ms median':>10}"


def mlp_figure(args: argparse.Namespace, tmp: Path) -> tuple[bool, Int8Comparison, Metrics]:
    subject = Subject("zoo:digits-mlp", threads=args.threads, runs=args.runs)
    plan = PruningPlan(
        method="l1-unstructured",
        scope="global",
        ratio=0.9,
        layers={n: LayerRule(0.9) for n in subject.layer_names},
        model=subject.model_spec,
    )
    dense, dense_logits = subject.dense()
    pruned = subject.prune(plan)
    pruned_m = subject.measure(pruned)
    result, seconds = run_finetune(subject, pruned, MLP_RECIPE, args.repeats)
    recovered_m = subject.measure(result.model, onnx_path=tmp / "mlp.onnx")
    cmp = compare_int8(
        tmp / "mlp.onnx",
        subject.data,
        tmp / "mlp.int8.onnx",
        reference=None,
        threads=args.threads,
        runs=args.runs,
    )
    print(f"\n[1] zoo:digits-mlp, global l1-unstructured 90% on {', '.join(subject.layer_names)}")
    print(
        f"  recipe: {MLP_RECIPE}{BN[result.recalibrated]}; "
        f"best epoch {result.best_epoch} of {len(result.history) - 1} ({result.stopped})"
    )
    print(HEADER)
    print(row("dense fp32", dense, latency=dense.latency_ms_median))
    print(row("pruned 90%", pruned_m, latency=pruned_m.latency_ms_median))
    print(row("pruned + fine-tuned", recovered_m, latency=recovered_m.latency_ms_median))
    print(
        row(
            f"pruned + fine-tuned + int8 ({cmp.mode})",
            accuracy=cmp.int8.accuracy,
            gzip=cmp.int8.onnx_gzip_bytes,
            latency=cmp.int8.latency_ms_median,
        )
    )
    drop = dense.accuracy - recovered_m.accuracy
    ok = drop <= 0.01 + 1e-9 and seconds <= 30
    holds = ok and recovered_m.params_nonzero <= pruned_m.params_nonzero
    print(
        f"  FIGURE 1: recovered to {pct(recovered_m.accuracy)} vs dense {pct(dense.accuracy)} "
        f"({-100 * drop:+.2f} points) in {seconds:.1f} s of fine-tuning (median of {args.repeats}; "
        f"torch {torch.get_num_threads()} threads); sparsity kept: "
        f"{recovered_m.params_nonzero:,} nonzero = {pruned_m.params_nonzero:,} after pruning "
        f"-> {'HOLDS' if holds else 'DOES NOT HOLD'}"
    )
    return holds, cmp, dense


def cnn_figure(args: argparse.Namespace, tmp: Path) -> tuple[bool, Int8Comparison, Metrics]:
    subject = Subject("zoo:digits-cnn", threads=args.threads, runs=args.runs)
    groups = [layer.name for layer in subject.inventory.layers if layer.group is not None]
    plan = PruningPlan.uniform("l1-structured", groups, CNN_RATIO, model=subject.model_spec)
    dense, _ = subject.dense()
    pruned = subject.prune(plan)
    pruned_m = subject.measure(pruned, onnx_path=tmp / "cnn.pruned.onnx")
    assert subject.data.train is not None
    t0 = time.perf_counter()
    bn_only = recalibrate_bn(pruned, subject.data.train)
    bn_seconds = time.perf_counter() - t0
    bn_m = subject.measure(bn_only)
    result, seconds = run_finetune(subject, pruned, CNN_RECIPE, args.repeats)
    recovered_m = subject.measure(result.model, onnx_path=tmp / "cnn.onnx")
    subject.measure(subject.model, onnx_path=tmp / "cnn.dense.onnx")
    cmp = compare_int8(
        tmp / "cnn.onnx", subject.data, tmp / "cnn.int8.onnx", threads=args.threads, runs=args.runs
    )
    lat = side_by_side_latency(
        {
            "dense": tmp / "cnn.dense.onnx",
            "recovered": tmp / "cnn.onnx",
            "int8": tmp / "cnn.int8.onnx",
        },
        subject.example_input,
        args.threads,
        args.runs,
        args.repeats,
    )
    speedup = lat["dense"] / lat["recovered"]
    shapes = {n: tuple(m.weight.shape[:2]) for n, m in result.model.named_modules() if n in groups}
    print(
        f"\n[2] zoo:digits-cnn, l1-structured {CNN_RATIO:.0%} of the channels of every conv group"
        f" ({', '.join(groups)})"
    )
    print(f"  conv (out, in) channels after pruning: {shapes}")
    print(
        f"  recipe: {CNN_RECIPE}{BN[result.recalibrated]}; "
        f"best epoch {result.best_epoch} of {len(result.history) - 1} ({result.stopped}), "
        f"{seconds:.1f} s (median of {args.repeats})"
    )
    print(HEADER)
    print(row("dense fp32", dense, latency=lat["dense"]))
    print(row("pruned", pruned_m, latency=pruned_m.latency_ms_median))
    print(
        row(f"pruned + BN recalibrated ({bn_seconds:.2f} s)", bn_m, latency=bn_m.latency_ms_median)
    )
    print(row("pruned + fine-tuned", recovered_m, latency=lat["recovered"]))
    print(
        row(
            f"pruned + fine-tuned + int8 ({cmp.mode})",
            accuracy=cmp.int8.accuracy,
            gzip=cmp.int8.onnx_gzip_bytes,
            latency=lat["int8"],
        )
    )
    drop = dense.accuracy - recovered_m.accuracy
    ok = drop <= 0.01 + 1e-9 and speedup >= 2.0
    print(
        f"  FIGURE 2: measured ORT speedup {speedup:.2f}x (batch 1, {args.threads} thread(s),"
        f" median of {args.repeats} alternating rounds of {args.runs} runs); recovered to"
        f" {pct(recovered_m.accuracy)} vs dense {pct(dense.accuracy)} ({-100 * drop:+.2f} points)"
        f" -> {'HOLDS' if ok else 'DOES NOT HOLD'}"
    )
    print(
        f"  int8 vs fp32 of the recovered model: {lat['recovered'] / lat['int8']:.2f}x faster, "
        f"accuracy {100 * (cmp.int8.accuracy - cmp.fp32.accuracy):+.2f} points"
    )
    return ok, cmp, dense


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="rounds for latency and fine-tuning time"
    )
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per latency measurement")
    args = parser.parse_args(argv)
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch"
        f" {torch.__version__}, {torch.get_num_threads()} intra-op threads"
    )
    print(f"int8 on this CPU: {cpu_int8_support().note}")
    with tempfile.TemporaryDirectory(prefix="recover-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ok1, mlp_int8, mlp_dense = mlp_figure(args, tmp)
        ok2, cnn_int8, cnn_dense = cnn_figure(args, tmp)
    print("\n[3] pruned + fine-tuned + int8 vs the dense fp32 ONNX (gzip bytes)")
    ok3 = True
    for name, cmp, dense in (
        ("digits-mlp", mlp_int8, mlp_dense),
        ("digits-cnn", cnn_int8, cnn_dense),
    ):
        saving = 1 - cmp.int8.onnx_gzip_bytes / dense.onnx_gzip_bytes
        ok3 &= saving >= 0.8
        print(
            f"  {name}: {cmp.int8.onnx_gzip_bytes:,} vs {dense.onnx_gzip_bytes:,} bytes:"
            f" {saving:.1%} smaller ({cmp.mode} int8; accuracy {pct(cmp.int8.accuracy)} vs dense"
            f" {pct(dense.accuracy)})"
        )
    print(f"  FIGURE 3: at least 80% smaller -> {'HOLDS' if ok3 else 'DOES NOT HOLD'}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0 if ok1 and ok2 and ok3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
