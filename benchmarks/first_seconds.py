"""The first seconds of a freshly started server, as a new user sees them in a real browser.

Starts the server as ``pruning-explorer app`` does (a fresh process, cold imports) while Debian's
chromium is open already, as a user's browser is (its own start is not the server's time), opens
the app as soon as the server answers, and prints when each thing became visible, counted from the
server's start: the server healthy, the app's own navigation, the Model page's
title, and its dense numbers (the first real page). Screenshots at 0.5 s, 1 s and 2 s after the
page was opened (and at the first real page) go to ``--out``; at each, the navigation shown is
listed, and a page list with Streamlit's legacy entries (``app``, ``export``, ... from the pages/
folder) is reported as a failure.

    python benchmarks/first_seconds.py [--out /tmp/first-seconds] [--model SPEC] [--legacy]
                                       [--no-screenshots]

Without numbers within 120 s it prints what the page shows instead (an exception, a spinner).

``--legacy`` starts it as plain ``streamlit run app.py`` instead, for comparison.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from appserver import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402
from appserver import stop as stop_server  # noqa: E402

LEGACY = {"app", "export", "learn", "model", "prune", "recover", "sensitivity", "weights"}
OURS = {"Model", "Weights", "Sensitivity", "Prune", "Recover", "Learn", "Export"}


def nav_links(page) -> list[str]:  # noqa: ANN001
    """Texts of the sidebar's navigation links shown right now."""
    labels = page.locator('[data-testid="stSidebarNavLink"] span[label]')
    return [labels.nth(i).get_attribute("label") or "" for i in range(labels.count())]


def run(out: Path, model: str, legacy: bool = False, no_shots: bool = False) -> list[str]:
    """Measure once; returns the lines of the report (side effects: a server, a browser, PNGs)."""
    from playwright.sync_api import sync_playwright

    from explorer.cli import app_command

    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    lines, legacy_seen = [], []
    cmd = app_command(port, "--server.address", "127.0.0.1")
    if legacy:  # the plain ``streamlit run app.py`` of before, for comparison
        cmd = [sys.executable, "-m", "streamlit", *cmd[4:]]
    with sync_playwright() as pw:
        # The user's browser is open already: its own start is not the server's time.
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto("about:blank")
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd="/",
            env={**os.environ, "PRUNING_EXPLORER_MODEL": model},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    time.sleep(0.05)
            healthy = time.monotonic() - t0
            lines.append(f"server healthy          {healthy:5.2f} s after its start")
            page.goto(url, wait_until="commit")
            opened = time.monotonic()
            shots = [] if no_shots else [0.5, 1.0, 2.0]
            seen: dict[str, float] = {}
            metric = page.locator('[data-testid="stMetricValue"]')
            while "numbers" not in seen and time.monotonic() - opened < 120:
                # What is on screen is checked first and timed when checked; the screenshots come
                # after, so that their own time (seconds on a busy machine) is never counted.
                checked = time.monotonic()
                links = nav_links(page)
                if LEGACY & set(links):
                    legacy_seen.append(f"{checked - opened:.1f} s: {links}")
                if "navigation" not in seen and OURS <= set(links):
                    seen["navigation"] = checked - t0
                if (
                    "title" not in seen
                    and page.get_by_role("heading", name="Model", exact=True).count()
                ):
                    seen["title"] = checked - t0
                if "title" in seen and metric.count():
                    seen["numbers"] = checked - t0
                    page.screenshot(path=out / "first-real-page.png")
                if shots and checked - opened >= shots[0]:
                    at = shots.pop(0)
                    page.screenshot(path=out / f"t{at:.1f}s.png")
                    links = nav_links(page)
                    lines.append(
                        f"screenshot at {at:.1f} s      navigation {links or '(none yet)'}"
                    )
                    if LEGACY & set(links):
                        legacy_seen.append(f"{at:.1f} s: {links}")
                page.wait_for_timeout(50)
            if "numbers" not in seen:  # say what is shown instead (an exception, a spinner)
                page.screenshot(path=out / "no-numbers.png")
                main_text = page.locator('[data-testid="stMain"]').inner_text()
                lines.append("no numbers; the page shows: " + " ".join(main_text.split())[:400])
        finally:
            browser.close()
            stop_server(proc)
        for what, label in (
            ("navigation", "app's navigation"),
            ("title", "Model page title"),
            ("numbers", "Model page numbers"),
        ):
            shown = f"{seen[what]:5.2f} s" if what in seen else "  never"
            lines.append(f"{label:<23} {shown} after the server's start")
        lines.append(
            "legacy page list: "
            + ("SEEN at " + "; ".join(legacy_seen[:3]) if legacy_seen else "never shown")
        )
        if not no_shots or "numbers" not in seen:
            lines.append(f"screenshots in {out}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/first-seconds"))
    parser.add_argument("--model", default="zoo:digits-cnn")
    parser.add_argument(
        "--legacy", action="store_true", help="start it as plain `streamlit run app.py`"
    )
    parser.add_argument(
        "--no-screenshots",
        action="store_true",
        help="only the timings (a screenshot can hold up the next look by a second under load)",
    )
    args = parser.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"{CHROMIUM} is missing (apt-get install chromium)")
    print("\n".join(run(args.out, args.model, args.legacy, args.no_screenshots)))


if __name__ == "__main__":
    main()
