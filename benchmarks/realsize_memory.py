"""Server memory at real size: a ResNet-50 at 224x224 through every page, peak RSS printed.

The app runs in this process (Streamlit's AppTest runs app.py as the server does, with the same
caches), on tests/models/realsize.py's ResNet-50 and 256 fixed random images without labels. Each
step does what a user does there: Model; Weights; Sensitivity (the data-free tier, the estimate,
then a measured scan at one ratio); Prune (a slider moved with an unstructured method, then with a
structured one; each evaluated in full); Recover; Learn; Export (the bundle built). After each
step: the resident memory (VmRSS) and its peak so far (VmHWM).

    python benchmarks/realsize_memory.py [--model resnet50] [--images 256] [--limit-gb 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _realsize import MODELS, realsize

ROOT = Path(__file__).resolve().parents[1]


def status(field: str) -> float:
    """A /proc/self/status field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--limit-gb", type=float, default=4.0)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="realsize-memory-")
    data = realsize().write_data(Path(tmp) / "images.npz", args.images)
    os.environ.update(
        {
            "PRUNING_EXPLORER_MODEL": f"{MODELS}:{args.model}",
            "PRUNING_EXPLORER_DATA": str(data),
            "PRUNING_EXPLORER_CACHE": str(Path(tmp) / "cache"),
            "PRUNING_EXPLORER_LIVE_INLINE_SECONDS": "100000",
        }
    )  # AppTest does not tick fragments
    sys.path.insert(0, str(ROOT))
    from streamlit.testing.v1 import AppTest

    print(
        f"{os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at"
        f" start; {args.model} at 224x224, {args.images} images; RSS of the process that runs"
        " the app"
    )
    print(f"  {'step':<52} {'seconds':>8} {'RSS MB':>8} {'peak MB':>8}")
    start_rss = status("VmRSS")
    print(
        f"  {'python, before the app':<52} {0:>8.0f} {start_rss:>8.0f} {status('VmHWM'):>8.0f}",
        flush=True,
    )
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=7200)

    def step(name: str, action) -> None:  # noqa: ANN001
        t0 = time.perf_counter()
        action()
        if at.exception:
            raise SystemExit(f"{name}: {at.exception}")
        errors = [e.value for e in at.error]
        print(
            f"  {name:<52} {time.perf_counter() - t0:>8.0f} {status('VmRSS'):>8.0f}"
            f" {status('VmHWM'):>8.0f}" + (f"  error shown: {errors[0][:80]}" if errors else ""),
            flush=True,
        )

    def page(name: str) -> None:
        at.switch_page(f"pages/{name}.py").run()

    step("Model page (load, dense measurement)", lambda: at.run())
    step("Weights page", lambda: page("weights"))
    step("Sensitivity page (data-free tier, estimate)", lambda: page("sensitivity"))

    def scan() -> None:
        at.multiselect(key="sensitivity.ratios").set_value([50]).run()
        next(b for b in at.button if b.label == "Run scan").click().run()

    step("  scan: every layer at 50%", scan)
    step("Prune page (live evaluator: one export)", lambda: page("prune"))
    names = [s.key for s in at.slider if s.key.startswith("prune.ratio.") and not s.disabled]
    step(
        "  l1-unstructured: a slider to 50%, full evaluation",
        lambda: at.slider(key=names[len(names) // 2]).set_value(50).run(),
    )

    def structured() -> None:
        at.selectbox(key="prune.method").set_value("l1-structured").run()
        movable = [s.key for s in at.slider if s.key.startswith("prune.ratio.") and not s.disabled]
        at.slider(key=movable[len(movable) // 2]).set_value(50).run()

    step("  l1-structured: a slider to 50%, full evaluation", structured)
    step("Recover page", lambda: page("recover"))
    step("Learn page", lambda: page("learn"))
    step("Export page", lambda: page("export"))

    def bundle() -> None:
        next(
            b for b in at.button if "bundle" in b.label.lower() or "build" in b.label.lower()
        ).click().run()

    step("  export bundle built", bundle)
    peak = status("VmHWM")
    print(
        f"\npeak RSS {peak:.0f} MB ({peak / 1024:.2f} GB):"
        f" {'under' if peak < args.limit_gb * 1024 else 'OVER'} the {args.limit_gb:g} GB limit;"
        f" load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    return 0 if peak < args.limit_gb * 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
