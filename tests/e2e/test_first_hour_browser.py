"""The engineer's first hour in a real browser: upload a residual CNN (.pt2) and its .npz, scan,
allocate, edit, recover (2 epochs of fine-tuning + int8), export; reload the page and find
everything again; import the plan in a new browser context. The exported files must carry the
recovered numbers and name the uploads by their own names."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from appserver import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402

pytestmark = pytest.mark.browser


@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing (make test installs it)"
)
@pytest.mark.timeout(1800)
def test_the_engineers_first_hour(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    import hour

    model, data = hour.residual_files(tmp_path / "mine")
    cache = tmp_path / "cache"  # a server of its own: nothing cached from other tests
    with (
        serve(timeout=120, cwd=tmp_path, env={"PRUNING_EXPLORER_CACHE": str(cache)}) as url,
        sync_api.sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
            page.goto(url)
            sync_api.expect(page.get_by_role("heading", name="Model", exact=True)).to_be_visible(
                timeout=hour.LONG
            )
            hour.upload(page, model, data)
            assert "?session=" in page.url

            hour.open_page(page, "Sensitivity")
            hour.scan(page)
            hour.open_page(page, "Prune")
            summary = hour.allocate(page)
            assert "verified" in summary
            hour.press(page, "stages.0.conv.0", "ArrowRight", 3)  # edit the allocation by hand
            edited = hour.slider_value(page, "stages.0.conv.0")

            hour.open_page(page, "Recover")
            assert page.get_by_role("checkbox", name="Recalibrate BN").is_checked()  # a .pt2's BN
            hour.recover(page, epochs=2, int8="auto")

            hour.open_page(page, "Export")
            label = hour.export_choice(page)
            assert (
                label.startswith("The plan after the Recover page's run")
                and "fine-tuned 2 epoch(s)" in label
            )
            tuned, int8 = (
                float(v) for v in re.search(r"accuracy ([\d.]+) %, int8 ([\d.]+) %", label).groups()
            )
            command = (
                page.get_by_test_id("stCode")
                .filter(has_text="pruning-explorer export")
                .inner_text()
            )
            assert (
                "--model mynet.pt2 --data digits.npz" in command
                and "--finetune-epochs 2" in command
            )
            assert "--quantize int8" in command
            files = hour.build_and_download(page, tmp_path)
            metrics = json.loads(files["metrics.json"])
            assert f"{100 * metrics['accuracy']:.2f}" == f"{tuned:.2f}"  # the fine-tuned weights
            assert f"{100 * metrics['int8']['accuracy']:.2f}" == f"{int8:.2f}"
            assert metrics["recovery"]["recalibrated"] and len(metrics["recovery"]["history"]) == 3
            assert "model.int8.onnx" in files
            plan = json.loads(files["plan.json"])
            assert plan["model"] == "mynet.pt2" and metrics["data"] == "digits.npz"
            for name in ("plan.json", "metrics.json", "report.html"):
                assert str(cache) not in files[name].decode(), f"{name} names a server path"
            (tmp_path / "plan.json").write_bytes(files["plan.json"])

            # A reload: the same session, nothing lost.
            page.reload()
            sync_api.expect(page.get_by_role("heading", name="Export", exact=True)).to_be_visible(
                timeout=hour.LONG
            )
            hour.idle(page)
            assert hour.export_choice(page) == label
            assert page.get_by_role("button", name="bundle.zip").count()  # built once, still there
            sync_api.expect(
                page.get_by_test_id("stSidebar").get_by_text("mynet.pt2 (uploaded)")
            ).to_be_visible()
            hour.open_page(page, "Prune")
            assert hour.slider_value(page, "stages.0.conv.0") == edited

            # A new browser context (another machine, say): the plan imports onto the same files.
            other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            other.goto(url)
            sync_api.expect(other.get_by_role("heading", name="Model", exact=True)).to_be_visible(
                timeout=hour.LONG
            )
            assert other.url != page.url  # a session of its own
            hour.upload(other, model, data)
            hour.open_page(other, "Export")
            hour.import_plan(other, tmp_path / "plan.json")
            hour.open_page(other, "Prune")
            assert hour.slider_value(other, "stages.0.conv.0") == edited
            page.screenshot(path=tmp_path / "prune-after-reload.png")
        finally:
            browser.close()
