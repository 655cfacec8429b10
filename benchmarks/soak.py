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

With ``--minutes M`` it does instead what an engineer does for M minutes, in one real browser
session: round after round, upload a residual CNN (.pt2, a new variant of its weights each round
for the first rounds, then the earlier ones again) and its .npz, scan, allocate, edit, recover
(1 epoch + int8), export and download the bundle, open the Weights page and run the next Learn
experiment. The server's RSS is sampled every second; the curve (the largest RSS of every minute)
and the peak are printed, with what each round did.

    python benchmarks/soak.py --minutes 40 [--variants 6]
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
            (
                f"{self.sessions} concurrent browser sessions x {self.moves} slider moves ="
                f" {len(lat)} moves in {self.wall_s:.1f} s, {len(self.errors)} error(s)"
            ),
            (
                "per-move latency (press -> expected number on screen): median"
                f" {statistics.median(lat):.0f} ms, p95 {float(np.percentile(lat, 95)):.0f} ms, max"
                f" {max(lat):.0f} ms"
                if lat
                else "no moves"
            ),
            (
                f"server RSS: start {self.rss_at(0):.0f} MB, half-way {self.rss_at(0.5):.0f} MB, "
                f"end {self.rss_at(1):.0f} MB, peak {self.peak_rss_mb:.0f} MB"
            ),
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
    """Nonzero parameters after l1-unstructured at ``percent`` on ``layers`` (no zeros when
    dense)."""
    ratio = percent / 100
    return total - sum(round(ratio * weights[name]) for name in layers)


async def _session(
    browser,
    url: str,
    index: int,
    slider_name: str,
    layers: list[str],
    moves: int,  # noqa: ANN001
    total: int,
    weights: dict[str, int],
    result: SoakResult,
    timeout_ms: int,
) -> None:
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    page = await context.new_page()
    try:
        # Through the router (app.py), as a user does: a direct /prune URL is served by streamlit's
        # legacy pages/ discovery without app.py's session set-up.
        await page.goto(url)
        await expect(page.get_by_role("heading", name="Model", exact=True)).to_be_visible(
            timeout=180_000
        )
        await page.get_by_role("link", name="Prune", exact=True).click()
        nonzero = (
            page.locator('[data-testid="stMetric"]')
            .filter(has=page.get_by_text("Nonzero params", exact=True))
            .locator('[data-testid="stMetricValue"]')
        )
        await expect(nonzero).to_have_text(f"{total:,}", timeout=180_000)
        slider = page.get_by_role(
            "slider", name=re.compile("^" + re.escape(slider_name) + r"(\s|$)")
        )
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
                result.errors.append(
                    f"session {index} move {move}: expected slider {move} and nonzero {want}, "
                    f"shown slider {at} and nonzero {shown}"
                )
                return
            result.latencies_ms.append(1000 * (time.perf_counter() - t0))
            if await errors.count():
                result.errors.append(
                    f"session {index} move {move}: {await errors.first.inner_text()}"
                )
                return
    except Exception as e:  # a broken session is a finding, not a crash of the soak
        result.errors.append(f"session {index}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    finally:
        await context.close()


async def _drive(
    url: str, sessions: int, moves: int, model: str, result: SoakResult, timeout_ms: int
) -> None:
    from playwright.async_api import async_playwright

    weights = _weights(model)
    total_weights = _total_params(model)
    names = list(weights)
    plans = [
        (names[i], [names[i]]) if i < sessions - 1 and i < len(names) else (GLOBAL, names)
        for i in range(sessions)
    ]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            await asyncio.gather(
                *(
                    _session(
                        browser,
                        url,
                        i,
                        slider,
                        layers,
                        moves,
                        total_weights,
                        weights,
                        result,
                        timeout_ms,
                    )
                    for i, (slider, layers) in enumerate(plans)
                )
            )
        finally:
            await browser.close()


def _total_params(model: str) -> int:
    from explorer.models import load_model

    return sum(p.numel() for p in load_model(model).parameters())


def run_soak(
    sessions: int = 4, moves: int = 50, model: str = "zoo:digits-mlp", move_timeout_s: float = 90.0
) -> SoakResult:
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


@dataclass
class HourResult:
    """The long soak: RSS samples and what each round did."""

    minutes: float
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)
    rounds: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def peak_rss_mb(self) -> float:
        return max((mb for _, mb in self.rss_mb), default=0.0)

    def curve(self) -> list[tuple[int, float]]:
        """(minute, largest RSS in that minute)."""
        by_minute: dict[int, float] = {}
        for t, mb in self.rss_mb:
            by_minute[int(t // 60)] = max(by_minute.get(int(t // 60), 0.0), mb)
        return sorted(by_minute.items())

    def report(self) -> str:
        lines = [
            f"{len(self.rounds)} rounds in {self.minutes:.1f} min, {len(self.errors)} error(s); "
            f"server RSS peak {self.peak_rss_mb:.0f} MB"
        ]
        lines += ["minute  RSS (MB, largest of the minute)"]
        lines += [f"{m:>6}  {mb:7.0f}  {'#' * int(mb / 25)}" for m, mb in self.curve()]
        lines += [f"round {i + 1}: {r}" for i, r in enumerate(self.rounds)]
        lines += [f"error: {e}" for e in self.errors[:10]]
        return "\n".join(lines)


def run_hour(minutes: float, variants: int = 6) -> HourResult:
    """Drive one browser session through the engineer's steps for ``minutes``, sampling the RSS
    (side effects: a server subprocess, a browser, files in a temporary folder; all removed)."""
    import tempfile

    import hour
    from playwright.sync_api import expect, sync_playwright

    result = HourResult(minutes=0.0)
    with tempfile.TemporaryDirectory(prefix="explorer-soak-") as tmp_name:
        tmp = Path(tmp_name)
        files = [hour.residual_files(tmp / "files", v) for v in range(variants)]
        proc, url = start_server(120.0, tmp, {"PRUNING_EXPLORER_CACHE": str(tmp / "cache")})
        stop = threading.Event()
        t_start = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                result.rss_mb.append((time.monotonic() - t_start, rss_mb(proc.pid)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(
                    viewport={"width": 1400, "height": 1000}, accept_downloads=True
                )
                page.goto(url)
                expect(page.get_by_role("heading", name="Model", exact=True)).to_be_visible(
                    timeout=hour.LONG
                )
                n = 0
                while time.monotonic() - t_start < 60 * minutes:
                    model, data = files[n % variants]
                    t0 = time.monotonic()
                    try:
                        hour.open_page(page, "Model")
                        hour.upload(page, model, data)
                        hour.open_page(page, "Sensitivity")
                        hour.scan(page)
                        hour.open_page(page, "Prune")
                        hour.allocate(page)
                        hour.press(page, "stages.0.conv.0", "ArrowRight", 2)
                        hour.open_page(page, "Recover")
                        hour.recover(page, epochs=1, int8="auto")
                        hour.open_page(page, "Export")
                        hour.build_and_download(page, tmp)
                        hour.open_page(page, "Weights")
                        hour.open_page(page, "Learn")
                        learn = page.get_by_role("button", name="Run the experiment")
                        ran = "no Learn experiment left to run"
                        if learn.count():
                            learn.first.click()
                            hour.idle(page)
                            ran = "a Learn experiment"
                        errors = page.locator(
                            '[data-testid="stException"], [data-testid="stAlertContentError"]'
                        )
                        if errors.count():
                            result.errors.append(
                                f"round {n + 1}: {errors.first.inner_text()[:200]}"
                            )
                        result.rounds.append(
                            f"{model.name}: upload, scan, allocate, edit, recover, export, "
                            f"weights, {ran} ({time.monotonic() - t0:.0f} s, RSS "
                            f"{rss_mb(proc.pid):.0f} MB)"
                        )
                    except Exception as e:  # a broken round is a finding; go on with the next
                        result.errors.append(
                            f"round {n + 1}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                        )
                        page.goto(url)
                    n += 1
                browser.close()
            if proc.poll() is not None:
                result.errors.append(f"the server exited with {proc.returncode}")
        finally:
            result.minutes = (time.monotonic() - t_start) / 60
            stop.set()
            sampler.join()
            stop_server(proc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--moves", type=int, default=50)
    parser.add_argument("--model", default="zoo:digits-mlp")
    parser.add_argument(
        "--minutes", type=float, help="the long soak: an engineer's session of this many minutes"
    )
    parser.add_argument(
        "--variants", type=int, default=6, help="with --minutes: distinct model files uploaded"
    )
    args = parser.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"{CHROMIUM} is missing (apt-get install chromium)")
    if args.minutes:
        print(run_hour(args.minutes, args.variants).report())
    else:
        print(run_soak(args.sessions, args.moves, args.model).report())


if __name__ == "__main__":
    main()
