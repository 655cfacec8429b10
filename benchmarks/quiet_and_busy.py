"""The README's user-facing timings, each measured twice in one run: on the machine as it is
(quiet when nothing else runs), then with a background load started here (one busy-loop process
per core, always on: a machine shared with another heavy job).

Runs each benchmark as its own process (a fresh server, cold imports) and prints its output under
the load average before it. The benchmarks:
``first_seconds.py`` (a freshly started server to its first real page, in chromium),
``live_rerun.py`` (the Prune page's reruns, AppTest) and ``realsize_live.py`` on ResNet-18 at
224 px (a slider move to its first measured numbers and to the full evaluation).

    python benchmarks/quiet_and_busy.py [--only first_seconds,live_rerun,realsize_live]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHMARKS: dict[str, list[str]] = {  # name: its arguments
    "first_seconds": ["--no-screenshots"],
    "live_rerun": ["--moves", "20"],
    "realsize_live": ["--models", "resnet18", "--moves", "8", "--old", "0"],
}


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(i * i for i in range(20_000))


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _run(name: str) -> list[str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / f"{name}.py"), *BENCHMARKS[name]],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line.rstrip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode:
        lines.append(f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    lines.append(f"({time.perf_counter() - start:.0f} s in all)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    cores = os.cpu_count() or 1
    for label in ("quiet", "busy"):
        stop = mp.Event()
        burners = []
        if label == "busy":
            burners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(cores)]
            for p in burners:
                p.start()
            time.sleep(20)  # let the load average show it
        what = "as it is" if label == "quiet" else f"{cores} busy-loop processes on {cores} cores"
        print(f"=== {label} machine ({what}): load average {_load()}", flush=True)
        for name in names:
            print(f"--- {name} (load average before: {_load()})", flush=True)
            for line in _run(name):
                print(f"    {line}", flush=True)
        print(f"=== end of {label}: load average {_load()}\n", flush=True)
        stop.set()
        for p in burners:
            p.join()


if __name__ == "__main__":
    main()
