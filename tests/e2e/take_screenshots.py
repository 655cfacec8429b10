"""Take a PNG of every page of the app with headless chromium into assets/screenshots/.

Usage: python tests/e2e/take_screenshots.py   (needs /usr/bin/chromium and playwright)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

sys.path.insert(0, str(Path(__file__).parent))
from appserver import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402

from explorer.models import ZOO  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "assets" / "screenshots"
WIDTH = 1400


def open_page(page: Page, title: str) -> None:
    page.get_by_role("link", name=title, exact=True).click()
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=60_000)


def settle(page: Page) -> None:
    """Wait until the script run is over and the charts had time to draw."""
    page.wait_for_timeout(700)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        timeout=600_000
    )
    page.wait_for_timeout(1500)


def shoot(page: Page, name: str, width: int = WIDTH) -> None:
    """Screenshot the whole page (the main area scrolls inside the app: the viewport grows to
    fit)."""
    if width != WIDTH:
        page.set_viewport_size({"width": width, "height": 1000})
        page.wait_for_timeout(1500)
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": width, "height": max(1000, int(height) + 40)})
    page.wait_for_timeout(1500)
    page.screenshot(path=OUT / name)
    page.set_viewport_size({"width": WIDTH, "height": 1000})


def move_slider(page: Page, label: str, steps: int) -> None:
    """Move the slider labelled ``label`` by ``steps`` (left when negative) with the keyboard."""
    slider = page.get_by_role("slider", name=label)
    slider.focus()
    for _ in range(abs(steps)):
        slider.press("ArrowRight" if steps > 0 else "ArrowLeft")
    settle(page)


def choose(page: Page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    page.get_by_test_id("stSelectbox").filter(has_text=re.compile(f"^{re.escape(label)}")).click()
    page.get_by_role("option", name=option, exact=True).click()
    settle(page)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with serve(cwd=OUT.parents[1]) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
        page.goto(url)
        expect(page.get_by_role("heading", name="Model", exact=True)).to_be_visible(timeout=120_000)
        settle(page)
        shoot(page, "model.png")

        open_page(page, "Prune")
        settle(page)
        for layer, steps in (("features.3", 30), ("features.7", 50), ("features.11", 60)):
            move_slider(page, layer, steps)
        choose(page, "Method", "l2-structured")
        for layer, steps in (("features.3", -30), ("features.7", -30), ("features.11", -20)):
            move_slider(page, layer, steps)
        shoot(page, "prune.png")
        shoot(page, "prune-1024.png", 1024)  # lock, skip, cards and tables at a narrow width

        open_page(page, "Recover")
        settle(page)
        choose(page, "int8 quantization", "auto")
        settle(page)
        page.get_by_role("button", name="Run", exact=True).click()
        settle(page)
        shoot(page, "recover.png")
        shoot(page, "recover-1024.png", 1024)

        open_page(page, "Weights")
        settle(page)
        choose(page, "Layer", "features.7")
        shoot(page, "weights.png")

        open_page(page, "Sensitivity")
        page.get_by_role("button", name="Run scan").click()
        settle(page)
        shoot(page, "sensitivity.png")

        open_page(page, "Learn")
        settle(page)
        page.get_by_role("button", name="Run the experiment").nth(
            4
        ).click()  # zeros vs removed channels
        settle(page)
        shoot(page, "learn.png")

        open_page(page, "Export")
        page.get_by_role("button", name="Build the export").click()
        settle(page)
        shoot(page, "export.png")

        # Whole blocks, on the residual digits model: one removed on the Prune page, then every
        # block measured removed alone on the Sensitivity page.
        open_page(page, "Model")
        choose(page, "Zoo model", "zoo:digits-resnet: " + ZOO["digits-resnet"].description)
        page.get_by_test_id("stBaseButton-primaryFormSubmit").click()
        settle(page)
        open_page(page, "Prune")
        settle(page)
        page.get_by_test_id("stMultiSelect").filter(has_text="Remove whole blocks").click()
        page.get_by_role("option", name=re.compile(r"^layer2\.1 ")).click()
        page.keyboard.press("Escape")
        settle(page)
        shoot(page, "prune-blocks.png")
        open_page(page, "Sensitivity")
        page.get_by_role("tab", name="Whole blocks").click()
        page.get_by_role("button", name=re.compile("^Measure 3 blocks removed")).click()
        settle(page)
        shoot(page, "sensitivity-blocks.png")
        browser.close()
    for png in sorted(OUT.glob("*.png")):
        print(png)


if __name__ == "__main__":
    main()
