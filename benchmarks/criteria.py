"""Every criterion side by side: accuracy before any recovery at 50, 70 and 90% on every zoo model,
and OWL's layer-wise ratios against our curve-based allocation at the same sparsity.

Unstructured and N:M criteria prune every layer they apply to at the ratio (N:M: the 2:4 pattern
whatever the ratio, shown once); structured criteria remove that share of the channels of every
dependency group. Accuracy is on the zoo model's test split, in PyTorch, right after pruning.
Data-aware criteria read the model's calibration split (the zoo's training data).

    python benchmarks/criteria.py [--ratios 0.5,0.7,0.9] [--models digits-mlp,...]
"""

from __future__ import annotations

import argparse
import os
import time

from explorer import PruningPlan, Subject, get_method
from explorer.allocate import allocate
from explorer.evaluate import evaluate_torch
from explorer.methods import available_methods
from explorer.models import ZOO


def plan_for(subject: Subject, method: str, ratio: float) -> PruningPlan:
    m = get_method(method)
    names = [n for n in subject.layer_names if m.applies_to(n, subject.inventory) is None]
    return PruningPlan.uniform(method, names, ratio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.5,0.7,0.9")
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--allocation-sparsity", type=float, default=0.8)
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; accuracy before any"
        " recovery\n"
    )
    methods = [m for m in available_methods() if not m.startswith("toy-")]
    for name in args.models.split(","):
        subject = Subject(f"zoo:{name}")
        dense = evaluate_torch(subject.model, subject.data.test)[0]
        print(f"== zoo:{name} (dense {100 * dense:.2f}%)")
        print(
            f"{'method':<24} {'kind':<16}"
            + "".join(f"{f'{r:.0%}':>9}" for r in ratios)
            + "   seconds"
        )
        for method in methods:
            m = get_method(method)
            start = time.perf_counter()
            cells = []
            for r in ratios if m.kind != "semi-structured" else ratios[:1]:
                plan = plan_for(subject, method, r)
                if not plan.layers:
                    cells.append("n/a")
                    continue
                try:
                    cells.append(
                        f"{100 * evaluate_torch(subject.prune(plan), subject.data.test)[0]:.2f}%"
                    )
                except Exception as e:  # a criterion that cannot run here: say why, keep going
                    cells.append(type(e).__name__)
            if m.kind == "semi-structured":
                cells = [cells[0], "(2:4)", ""][: len(ratios)]
            print(
                f"{method:<24} {m.kind:<16}"
                + "".join(f"{c:>9}" for c in cells)
                + f"   {time.perf_counter() - start:6.1f}"
            )
        s = args.allocation_sparsity
        print(f"\n  {s:.0%} sparsity, layer-wise ratios compared on the test split (no recovery):")
        for method in ("l1-unstructured", "wanda-unstructured"):
            found = allocate(subject, ("sparsity", s), method, verify=False)
            ranked = ", ".join(
                f"{k} {100 * v:.2f}%"
                for k, v in sorted(found.candidates.items(), key=lambda kv: -kv[1])
            )
            print(f"  {method:<20} kept {found.chosen}: {ranked}")
        print()
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
