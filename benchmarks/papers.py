"""Two published pruning results reproduced on the zoo, our numbers next to the paper's:

(a) Han et al. 2015, Tables 1-3: iterative magnitude pruning with retraining of LeNet-300-100 and
    LeNet-5 (``zoo:mnist-lenet300``, ``zoo:mnist-lenet5``), by the paper's rule (per-layer threshold
    = quality parameter x the layer's weight std; explorer/papers.py says how q and the rounds are
    chosen);
(b) MNIST-1D's lottery-ticket notebook: iterative magnitude pruning with rewinding against random
    pruning on its MLP (``zoo:mnist1d-mlp``'s architecture), 1501 steps at lr 0.02.

Each claim ends in HOLDS or DOES NOT HOLD with the measured reason. The paper's numbers are those of
../shared/research/state-of-the-art-2026-12.md, section 6.

    python benchmarks/papers.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from explorer.papers import HAN, LOTTERY, han_iterative, lottery_mnist1d
from explorer.subject import Subject

# Half the zoo's Adam rate; a tenth (2e-3 / 10, the paper's rule) recovered less in 2 epochs.
RETRAIN_LR = 1e-3


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} cores"


def _verdicts(verdicts: list[tuple[str, bool, str]]) -> None:
    for claim, ok, why in verdicts:
        print(f"{'HOLDS' if ok else 'DOES NOT HOLD':<14} {claim}: {why}")


def han(name: str, rounds: int, epochs: int) -> None:
    subject = Subject(f"zoo:{name}", runs=30)
    paper = HAN[name]
    result = han_iterative(subject, rounds=rounds, epochs=epochs, lr=RETRAIN_LR)
    layers = subject.layer_names
    print(
        f"\nzoo:{name}: {len(subject.data.train):,} training digits (the paper: 60,000); {rounds}"
        f" rounds, {epochs} epoch(s) of retraining each at lr {RETRAIN_LR:g}"
    )
    print(
        "quality parameter q per layer (largest q whose pruning alone keeps validation accuracy"
        " within 1 point): " + ", ".join(f"{n} {result.quality[n]:g}" for n in layers)
    )
    print(
        f"{'round':<6} {'params':>9} {'compression':>12} {'test error':>11}  "
        + "  ".join(f"{n:>7}" for n in layers)
    )
    for r in result.rounds:
        print(
            f"{r['round']:<6} {r['params']:>9,} {r['compression']:>11.1f}x"
            f" {100 * r['error']:>10.2f}%  "
            + "  ".join(f"{100 * r['kept'][n]:>6.1f}%" for n in layers)
        )
    f = result.final
    print(f"{'':<22} {'ours':>16} {'paper':>16}")
    rows = [
        ("dense error", f"{100 * result.dense_error:.2f}%", f"{100 * paper['dense_error']:.2f}%"),
        ("pruned error", f"{100 * f['error']:.2f}%", f"{100 * paper['pruned_error']:.2f}%"),
        (
            "parameters",
            f"{f['params_total']:,} -> {f['params']:,}",
            f"{paper['params'][0] // 1000}K -> {paper['params'][1] // 1000}K",
        ),
        ("compression", f"{f['compression']:.1f}x", f"{paper['compression']}x"),
    ]
    rows += [
        (f"weights kept, {n}", f"{100 * f['kept'][n]:.1f}%", f"{100 * paper['kept'][n]:.0f}%")
        for n in layers
    ]
    for label, ours, theirs in rows:
        print(f"{label:<22} {ours:>16} {theirs:>16}")
    _verdicts(result.verdicts())
    n = len(subject.data.test)
    se = (result.dense_error * (1 - result.dense_error) / n) ** 0.5
    print(
        f"(one test digit is {100 / n:.1f} points of error here; the binomial standard error of the"
        f" dense error is {100 * se:.2f} points)"
    )
    print(f"time {result.seconds:.0f} s")


def lottery(trials: int, sparsities: tuple[float, ...]) -> None:
    result = lottery_mnist1d(trials=trials, sparsities=sparsities, random_at=(0.9, 0.95))
    s = result.settings
    print(
        f"\nMNIST-1D lottery tickets: MLP 40-{s['hidden']}-{s['hidden']}(residual)-10, {s['steps']}"
        f" steps of {s['batch']} at lr {s['lr']} (Adam), test every {s['eval_every']} steps;"
        f" {s['train']:,} training and {s['test']:,} test signals; {trials} trial(s); magnitude"
        " rounds at "
        + ", ".join(f"{x:.0%}" for x in sparsities if x)
        + " (the notebook: 100 rounds on a linear ramp; it prunes "
        "biases too, we prune weights only)"
    )
    print(f"{'':<22} {'best test accuracy (last), ours per trial':>44} {'paper, trials 0/1':>20}")

    def line(label: str, criterion: str, sp: float, paper: tuple[float, float] | None) -> None:
        rows = [
            r for r in result.rows if r["criterion"] == criterion and abs(r["sparsity"] - sp) < 1e-9
        ]
        ours = " / ".join(f"{100 * r['best']:.1f} ({100 * r['last']:.1f})" for r in rows)
        theirs = f"{paper[0]} / {paper[1]}" if paper else ""
        print(f"{label:<22} {ours:>44} {theirs:>20}")

    line("dense", "dense", 0.0, LOTTERY["magnitude"][0.0])
    for sp in sparsities:
        if sp:
            line(f"magnitude {sp:.0%}", "magnitude", sp, LOTTERY["magnitude"].get(sp))
    for sp in (0.9, 0.95):
        line(f"random {sp:.0%}", "random", sp, LOTTERY["random"].get(sp))
    _verdicts(result.verdicts())
    print(f"time {result.seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and one trial (a smoke run)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread is as fast, and steady on a busy machine
    start = time.perf_counter()
    print(f"load average {_load()}; {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        "== (a) Han et al. 2015, Tables 1-3: iterative pruning with retraining, a per-layer"
        " threshold q x std of the layer's weights"
    )
    for name in ("mnist-lenet300", "mnist-lenet5"):
        han(name, rounds=2 if args.quick else 4, epochs=1 if args.quick else 2)
    print(
        "\n== (b) MNIST-1D lottery-ticket notebook: iterative magnitude pruning with rewinding vs"
        " random pruning"
    )
    lottery(
        1 if args.quick else 2,
        (0.0, 0.9, 0.95) if args.quick else (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
    )
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load average at the end {_load()}")


if __name__ == "__main__":
    main()
