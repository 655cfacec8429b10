"""Live figure of the Prune page: time one rerun after moving one per-layer slider.

Each move sets a new ratio on one layer of zoo:digits-cnn, so every rerun prunes, exports, and
measures a configuration never seen before (no cache hit): the rerun runs the whole page script
(app.py, the page, the evaluation, the history and its Pareto plot) through Streamlit's AppTest,
in this process, as the server would. Reruns that hit the cache (a configuration seen before) are
timed separately. Prints the median and p95 per method kind, and the CPU time per rerun (which
other processes on the machine do not inflate the way they inflate wall time).

Usage: python benchmarks/live_rerun.py [--moves 40] [--model zoo:digits-cnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app.py"


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def open_prune(model: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    if model != "zoo:digits-cnn":
        at.selectbox[0].set_value(model)
        at.button[0].click().run()
    at.switch_page("pages/prune.py").run()
    if at.exception:
        raise SystemExit(f"the Prune page failed: {at.exception}")
    return at


def moves(layers: list[str], n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` (layer, percent) moves, each giving a ratio vector not seen before."""
    rng = np.random.default_rng(seed)
    current = dict.fromkeys(layers, 0)
    seen = {tuple(current.values())}
    out = []
    while len(out) < n:
        layer = layers[len(out) % len(layers)]
        value = int(rng.integers(1, 90))
        trial = {**current, layer: value}
        if tuple(trial.values()) in seen:
            continue
        seen.add(tuple(trial.values()))
        current = trial
        out.append((layer, value))
    return out


def run(
    at: AppTest, method: str, layers: list[str], n: int, seed: int
) -> tuple[list[float], list[float], list[float]]:
    """Wall times of reruns after fresh moves, their CPU times (every thread of this process), and
    wall times of reruns revisiting earlier values (cache hits)."""
    at.selectbox(key="prune.method").set_value(method).run()
    fresh, cpu, cached = [], [], []
    plan = moves(layers, n, seed)
    for layer, value in plan:
        at.slider(key=f"prune.ratio.{layer}").set_value(value)
        t0, c0 = time.perf_counter(), time.process_time()
        at.run()
        fresh.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if at.exception:
            raise SystemExit(f"rerun failed: {at.exception}")
    # Walk back over the same vectors: every configuration is in the cache now.
    for layer, value in reversed(plan[:-1]):
        at.slider(key=f"prune.ratio.{layer}").set_value(value)
        t0 = time.perf_counter()
        at.run()
        cached.append(time.perf_counter() - t0)
    return fresh, cpu, cached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--moves", type=int, default=40, help="slider moves per method (each a new plan)"
    )
    parser.add_argument("--model", default="zoo:digits-cnn")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    at = open_prune(args.model)
    print(
        "app start and first Prune page (model load + dense measurement):"
        f" {time.perf_counter() - t0:.2f} s"
    )
    sys.path.insert(0, str(APP.parent))
    import ui.cache  # the app's own module, as loaded by the run above

    subject = ui.cache.subject(args.model, None)
    structured = [layer.name for layer in subject.inventory.layers if layer.group is not None]
    print(
        f"{args.model}: {len(subject.layer_names)} layers; {args.moves} fresh moves per method, "
        "one slider at a time\n"
    )
    import torch

    print(
        f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other work slows"
        f" every figure); torch intra-op threads in the app: {torch.get_num_threads()}"
    )
    print(
        f"{'method':<18} {'reruns':>6} {'median s':>9} {'p95 s':>7} {'max s':>7} {'cpu med s':>10}"
        f"   cached: {'median s':>8} {'p95 s':>6}"
    )
    worst_median = worst_p95 = 0.0
    for i, (method, layers) in enumerate(
        (("l1-unstructured", subject.layer_names), ("l2-structured", structured))
    ):
        fresh, cpu, cached = run(at, method, layers, args.moves, seed=i)
        worst_median = max(worst_median, statistics.median(fresh))
        worst_p95 = max(worst_p95, p95(fresh))
        print(
            f"{method:<18} {len(fresh):>6} {statistics.median(fresh):>9.3f} {p95(fresh):>7.3f}"
            f" {max(fresh):>7.3f} {statistics.median(cpu):>10.3f}   cached:"
            f" {statistics.median(cached):>8.3f} {p95(cached):>6.3f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    ok = worst_median <= 0.5 and worst_p95 <= 1.0
    print(
        f"\nlive rerun (new configuration): median {worst_median:.3f} s, p95 {worst_p95:.3f} s "
        f"(target: median <= 0.5 s, p95 <= 1 s): {'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
