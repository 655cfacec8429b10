"""One real-browser test: Debian's chromium opens the Prune page's URL, moves a slider, sees a
metric change."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from appserver import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402

pytestmark = pytest.mark.browser


def _metric(page, label: str) -> str:
    card = page.locator('[data-testid="stMetric"]').filter(has=page.get_by_text(label, exact=True))
    return card.locator('[data-testid="stMetricValue"]').inner_text()


@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing (make test installs it)"
)
def test_move_a_slider_and_see_the_metric_change(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    with (
        serve(cwd=tmp_path) as url,
        sync_api.sync_playwright() as pw,
    ):  # any working directory works
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            # A visitor's first request to a fresh server opens the Prune page's URL directly: it
            # must
            # still go through app.py's router (Streamlit's legacy pages/ folder would run it
            # alone).
            page.goto(f"{url}/prune")
            sync_api.expect(page.get_by_role("heading", name="Prune", exact=True)).to_be_visible(
                timeout=120_000
            )
            sync_api.expect(page.get_by_role("link", name="Model", exact=True)).to_be_visible()
            nonzero = page.locator('[data-testid="stMetric"]').filter(
                has=page.get_by_text("Nonzero params", exact=True)
            )
            sync_api.expect(nonzero.locator('[data-testid="stMetricValue"]')).to_have_text(
                "390,890", timeout=120_000
            )

            slider = page.get_by_role("slider", name=re.compile("features.11"))
            slider.focus()
            for _ in range(10):
                slider.press("ArrowRight")
            # Presses that land during a rerun may be merged: read where the slider ended up.
            page.wait_for_timeout(1000)
            page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
                timeout=120_000
            )
            percent = int(slider.input_value())
            assert 0 < percent <= 10
            # That share of features.11's 294,912 weights become zeros in the really pruned model.
            sync_api.expect(nonzero.locator('[data-testid="stMetricValue"]')).to_have_text(
                f"{390_890 - round(percent / 100 * 294_912):,}", timeout=120_000
            )
            assert _metric(page, "Parameters") == "390,890"
            page.screenshot(path=tmp_path / "prune.png")
        finally:
            browser.close()


@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing (make test installs it)"
)
def test_a_browser_open_before_the_server_gets_the_first_page(tmp_path: Path) -> None:
    """The user's browser is open already and asks for the page the moment the server answers,
    while the server's warm-up is still importing the app: the first page shows its numbers, no
    exception (two threads importing ``explorer`` at once met a partly initialised module)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto("about:blank")
            with serve(cwd=tmp_path) as url:
                page.goto(url, wait_until="commit")
                values = page.locator('[data-testid="stMetricValue"]')
                sync_api.expect(values.first).to_be_visible(timeout=120_000)
                sync_api.expect(
                    page.get_by_role("heading", name="Model", exact=True)
                ).to_be_visible()
                assert page.locator('[data-testid="stException"]').count() == 0
                assert "390,890" in page.locator('[data-testid="stMain"]').inner_text()
        finally:
            browser.close()
