"""How long each Learn experiment takes from a cold start (empty sensitivity cache), and its
verdict.

python benchmarks/learn.py
"""

from __future__ import annotations

import os
import tempfile

# A fresh on-disk cache: the sensitivity experiment must really scan.
os.environ["PRUNING_EXPLORER_CACHE"] = tempfile.mkdtemp(prefix="explorer-learn-bench-")

from explorer import Subject  # noqa: E402
from explorer.learn import EXPERIMENTS, run_experiment  # noqa: E402


def main() -> None:
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; limit per experiment:"
        " 60 s"
    )
    print(f"{'experiment':<16} {'model':<16} {'seconds':>8}  verdict")
    for key, experiment in EXPERIMENTS.items():
        result = run_experiment(key, Subject(experiment.model))
        verdict = {True: "holds", False: "does not hold", None: "-"}[result.holds]
        print(f"{key:<16} {experiment.model:<16} {result.seconds:>8.1f}  {verdict}")


if __name__ == "__main__":
    main()
