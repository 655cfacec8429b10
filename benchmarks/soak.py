"""Soak: the real streamlit server, concurrent browser sessions, slider moves on the Prune page.

Starts ``python -m streamlit run app.py`` on a free loopback port, opens SESSIONS browser sessions
at once (Debian's chromium through Playwright, one browser context each) and, in every session,
presses the right-arrow key MOVES times on its own slider (session 0: the first layer, 1: the
second, ..., the last: "All layers"), waiting after each press until the session's "Nonzero params"
card shows the value its own plan must give (the l1-unstructured zeros: the sum over its layers of
round(ratio * weights)). Another session's plan showing up there would be cross-talk. The server's
resident memory is sampled from /proc every 0.25 s. Prints the peak RSS and the per-move latency
(press to the expected number on screen) median and p95.

    python benchmarks/soak.py [--sessions 4] [--moves 50] [--model zoo:digits-mlp]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from appserver import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the browser test's server and browser)
from appserver import start as start_server  # noqa: E402
from appserver import stop as stop_server  # noqa: E402

GLOBAL = "All layers"


@dataclass
class SoakResult:
    sessions: int
    moves: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)
    wall_s: float = 0.0

    @property
    def peak_rss_mb(self) -> float:
        return max((mb for _, mb in self.rss_mb), default=0.0)

    def rss_at(self, fraction: float) -> float:
        """RSS at ``fraction`` of the run (0: start, 1: end)."""
        if not self.rss_mb:
            return 0.0
        return self.rss_mb[min(int(fraction * (len(self.rss_mb) - 1)), len(self.rss_mb) - 1)][1]

    def report(self) -> str:
        lat = self.latencies_ms
        lines = [
            f"{self.sessions} concurrent browser sessions x {self.moves} slider moves = {len(lat)} moves "
            f"in {self.wall_s:.1f} s, {len(self.errors)} error(s)",
            f"per-move latency (press -> expected number on screen): median {statistics.median(lat):.0f} ms, "
            f"p95 {float(np.percentile(lat, 95)):.0f} ms, max {max(lat):.0f} ms" if lat else "no moves",
            f"server RSS: start {self.rss_at(0):.0f} MB, half-way {self.rss_at(0.5):.0f} MB, "
            f"end {self.rss_at(1):.0f} MB, peak {self.peak_rss_mb:.0f} MB",
        ]
        lines += [f"error: {e}" for e in self.errors[:10]]
        return "\n".join(lines)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` and its children, from /proc."""
    total_kb = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def _weights(model: str) -> dict[str, int]:
    """Weight count of every prunable layer of ``model``, in inventory order."""
    from explorer.subject import Subject

    inventory = Subject(model).inventory
    return {layer.name: int(np.prod(layer.shape)) for layer in inventory.layers}


def expected_nonzero(total: int, weights: dict[str, int], layers: list[str], percent: int) -> int:
    """Nonzero parameters after l1-unstructured at ``percent`` on ``layers`` (no zeros when dense)."""
    ratio = percent / 100
    return total - sum(round(ratio * weights[name]) for name in layers)


async def _session(browser, url: str, index: int, slider_name: str, layers: list[str], moves: int,  # noqa: ANN001
                   total: int, weights: dict[str, int], result: SoakResult, timeout_ms: int) -> None:
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    page = await context.new_page()
    try:
        # Through the router (app.py), as a user does: a direct /prune URL is served by streamlit's
        # legacy pages/ discovery without app.py's session set-up.
        await page.goto(url)
        await expect(page.get_by_role("heading", name="Model", exact=True)).to_be_visible(timeout=180_000)
        await page.get_by_role("link", name="Prune", exact=True).click()
        nonzero = page.locator('[data-testid="stMetric"]').filter(
            has=page.get_by_text("Nonzero params", exact=True)).locator('[data-testid="stMetricValue"]')
        await expect(nonzero).to_have_text(f"{total:,}", timeout=180_000)
        slider = page.get_by_role("slider", name=re.compile("^" + re.escape(slider_name) + r"(\s|$)"))
        errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
        for move in range(1, moves + 1):
            await slider.focus(timeout=timeout_ms)
            t0 = time.perf_counter()
            await slider.press("ArrowRight", timeout=timeout_ms)
            want = f"{expected_nonzero(total, weights, layers, move):,}"
            try:
                await expect(slider).to_have_value(str(move), timeout=timeout_ms)
                await expect(nonzero).to_have_text(want, timeout=timeout_ms)
            except AssertionError:
                shown, at = await nonzero.inner_text(), await slider.input_value()
                result.errors.append(f"session {index} move {move}: expected slider {move} and nonzero {want}, "
                                     f"shown slider {at} and nonzero {shown}")
                return
            result.latencies_ms.append(1000 * (time.perf_counter() - t0))
            if await errors.count():
                result.errors.append(f"session {index} move {move}: {await errors.first.inner_text()}")
                return
    except Exception as e:  # a broken session is a finding, not a crash of the soak
        result.errors.append(f"session {index}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    finally:
        await context.close()


async def _drive(url: str, sessions: int, moves: int, model: str, result: SoakResult, timeout_ms: int) -> None:
    from playwright.async_api import async_playwright

    weights = _weights(model)
    total_weights = _total_params(model)
    names = list(weights)
    plans = [(names[i], [names[i]]) if i < sessions - 1 and i < len(names) else (GLOBAL, names)
             for i in range(sessions)]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            await asyncio.gather(*(
                _session(browser, url, i, slider, layers, moves, total_weights, weights, result, timeout_ms)
                for i, (slider, layers) in enumerate(plans)))
        finally:
            await browser.close()


def _total_params(model: str) -> int:
    from explorer.models import load_model

    return sum(p.numel() for p in load_model(model).parameters())


def run_soak(sessions: int = 4, moves: int = 50, model: str = "zoo:digits-mlp",
             move_timeout_s: float = 90.0) -> SoakResult:
    """Run the soak (side effects: a server subprocess and a browser, both stopped at the end)."""
    result = SoakResult(sessions=sessions, moves=moves)
    proc, url = start_server(90.0, ROOT, {"PRUNING_EXPLORER_MODEL": model})
    stop = threading.Event()
    t_start = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            result.rss_mb.append((time.monotonic() - t_start, rss_mb(proc.pid)))
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        asyncio.run(_drive(url, sessions, moves, model, result, int(1000 * move_timeout_s)))
        if proc.poll() is not None:
            result.errors.append(f"the server exited with {proc.returncode}")
    finally:
        result.wall_s = time.monotonic() - t_start
        stop.set()
        sampler.join()
        stop_server(proc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--moves", type=int, default=50)
    parser.add_argument("--model", default="zoo:digits-mlp")
    args = parser.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"{CHROMIUM} is missing (apt-get install chromium)")
    print(run_soak(args.sessions, args.moves, args.model).report())


if __name__ == "__main__":
    main()
