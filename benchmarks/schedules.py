"""The schedules side by side at one final sparsity, with the same training budget.

Every layer pruned to the same ratio by L1 magnitude (SNIP by its own saliency, ranked globally to
the same total); each schedule trains 6 epochs in all. The final model of each is exported and
measured in ONNX Runtime (test accuracy, nonzero parameters); time is the schedule's own.

    python benchmarks/schedules.py [--sparsity 0.9]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from explorer.plan import LayerRule, PruningPlan
from explorer.schedules import ScheduleSpec, run_schedule
from explorer.subject import Subject

EPOCHS = 6
SPECS = [
    ScheduleSpec.make("one-shot", epochs=EPOCHS, lr=1e-3),
    ScheduleSpec.make("iterative", rounds=3, epochs=EPOCHS // 3),
    ScheduleSpec.make("gradual", epochs=EPOCHS),
    ScheduleSpec.make("snip", epochs=EPOCHS),
    ScheduleSpec.make(
        "lottery", rounds=2, epochs=EPOCHS // 3
    ),  # (rounds + 1) trainings of 2 epochs
    ScheduleSpec.make("regularized", epochs=EPOCHS - 2, finetune_epochs=2),
]
MODELS = ("zoo:mnist-lenet300", "zoo:mnist-lenet5")  # the two Han et al. prune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread is as fast, and steady on a busy machine
    one, five, fifteen = os.getloadavg()
    print(
        f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} cores;"
        f" {time.strftime('%Y-%m-%d %H:%M')}"
    )
    start = time.perf_counter()
    for spec_model in MODELS:
        subject = Subject(spec_model, runs=30)
        dense, _ = subject.dense()
        plan = PruningPlan(
            method="l1-unstructured",
            layers={n: LayerRule(args.sparsity) for n in subject.layer_names},
            model=spec_model,
        )
        print(
            f"\n== {spec_model}: every layer at {args.sparsity:.0%}, {EPOCHS} epochs of training"
            f" per schedule; dense {100 * dense.accuracy:.2f}%, {dense.params_nonzero:,} nonzero"
            " parameters"
        )
        print(
            f"{'schedule':<12} {'accuracy':>9} {'at the cut':>11} {'nonzero':>9} {'sparsity':>9}"
            f" {'seconds':>8}  how"
        )
        for spec in SPECS:
            result = run_schedule(subject, plan, spec)
            metrics = subject.measure(result.model)
            cuts = [s.accuracy for s in result.steps if s.phase in ("prune", "rewind")]
            cut = cuts[-1] if cuts else None
            shown = f"{100 * cut:.2f}%" if cut is not None else "-"
            print(
                f"{spec.name:<12} {100 * metrics.accuracy:>8.2f}% {shown:>11}"
                f" {metrics.params_nonzero:>9,} {100 * result.final.sparsity:>8.1f}%"
                f" {result.seconds:>8.1f}  {spec.describe()}"
            )
    one, five, fifteen = os.getloadavg()
    print(
        "\naccuracy: the final model in ONNX Runtime on the test split; at the cut: right after"
        " the (last) pruning or rewinding step, before retraining (PyTorch). total"
        f" {time.perf_counter() - start:.0f} s; load average at the end {one:.2f} {five:.2f}"
        f" {fifteen:.2f}"
    )


if __name__ == "__main__":
    main()
