"""A real browser on a 224-px model: moving a slider shows measured numbers on the first images,
refined in place, then the full evaluation (tests/models/realsize.py's narrow ResNet-18)."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from appserver import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402

pytestmark = pytest.mark.browser
MODELS = Path(__file__).resolve().parents[1] / "models"
IMAGES = 512

# Records every metric label and caption the page ever shows, however briefly.
OBSERVE = """() => {
  window.__seen = new Set();
  const note = () => document.querySelectorAll('[data-testid="stMetric"]').forEach(
      m => window.__seen.add(m.innerText.replace(/\\s+/g, ' ')));
  new MutationObserver(note).observe(
      document.body, {subtree: true, childList: true, characterData: true});
}"""


def _realsize():
    spec = importlib.util.spec_from_file_location("_realsize_e2e", MODELS / "realsize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing (make test installs it)"
)
def test_a_slider_on_a_224_px_model_shows_numbers_that_refine(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    realsize = _realsize()
    data = realsize.write_data(tmp_path / "images.npz", IMAGES)
    conv = realsize.narrow_resnet().layer1[0].conv1.weight.numel()
    env = {
        "PRUNING_EXPLORER_MODEL": f"{MODELS / 'realsize.py'}:narrow_resnet",
        "PRUNING_EXPLORER_DATA": str(data),
        "PRUNING_EXPLORER_LIVE_INLINE_SECONDS": "0",
        "PRUNING_EXPLORER_CACHE": str(tmp_path / "cache"),
    }
    with serve(timeout=120, cwd=tmp_path, env=env) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            page.goto(f"{url}/prune")
            sync_api.expect(page.get_by_role("heading", name="Prune", exact=True)).to_be_visible(
                timeout=120_000
            )
            nonzero = page.locator('[data-testid="stMetric"]').filter(
                has=page.get_by_text("Nonzero params", exact=True)
            )
            sync_api.expect(nonzero).to_be_visible(timeout=120_000)
            dense_nonzero = int(
                nonzero.locator('[data-testid="stMetricValue"]').inner_text().replace(",", "")
            )
            page.evaluate(OBSERVE)

            slider = page.get_by_role("slider", name=re.compile(r"layer1\.0\.conv1 "))
            slider.focus()
            for _ in range(30):
                slider.press("ArrowRight")
            page.wait_for_timeout(1000)
            page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
                timeout=120_000
            )
            percent = int(slider.input_value())
            assert 0 < percent <= 30
            # The full evaluation: timed latency, and the cards lose "(so far)".
            latency = page.locator('[data-testid="stMetric"]').filter(
                has=page.get_by_text("Latency, median", exact=True)
            )
            sync_api.expect(latency.locator('[data-testid="stMetricValue"]')).to_have_text(
                re.compile(r"\d+\.\d+ ms"), timeout=120_000
            )
            sync_api.expect(nonzero.locator('[data-testid="stMetricValue"]')).to_have_text(
                f"{dense_nonzero - round(percent / 100 * conv):,}", timeout=120_000
            )
            sync_api.expect(page.get_by_text("Agreement", exact=True)).to_be_visible()
            seen = page.evaluate("() => Array.from(window.__seen)")
            partial = [s for s in seen if "(so far)" in s]
            assert partial, f"no partial numbers were shown: {seen}"
            assert any(re.search(rf"first \d+ of {IMAGES} images; 95 % CI", s) for s in partial), (
                partial
            )
            page.screenshot(path=tmp_path / "live.png", full_page=True)
        finally:
            browser.close()
