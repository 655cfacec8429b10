"""What an engineer does in the app, as browser steps (Playwright, sync API): upload a model and its
data, scan, allocate, edit, recover, export, import a plan. Shared by the browser test of the first
hour (test_first_hour_browser.py) and the long soak (benchmarks/soak.py --minutes).

Every step waits until the script run it caused has finished; nothing here asserts on time.
"""

from __future__ import annotations

import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from playwright.sync_api import Page, expect

ROOT = Path(__file__).resolve().parents[2]
LONG = 600_000  # ms: the longest any one step may take on a busy machine


def residual_files(folder: Path, variant: int = 0) -> tuple[Path, Path]:
    """The engineer's own files: a residual CNN saved with ``torch.export.save`` (``variant`` > 0
    perturbs its weights, for a different file of the same shape) and an .npz with x, y, x_train,
    y_train (no validation split)."""
    sys.path.insert(0, str(ROOT / "tests" / "models"))
    from residual_net import residual_net

    from explorer.data import load_data

    data = load_data("zoo:digits-32")
    assert data.train is not None and data.train.y is not None
    model = residual_net()
    if variant:
        g = torch.Generator().manual_seed(variant)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=g))
    folder.mkdir(parents=True, exist_ok=True)
    model_path = folder / ("mynet.pt2" if not variant else f"mynet-{variant}.pt2")
    program = torch.export.export(
        model, (data.test.x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, model_path)
    data_path = folder / "digits.npz"
    if not data_path.exists():
        np.savez(
            data_path,
            x=data.test.x.numpy()[:200],
            y=data.test.y.numpy()[:200],
            x_train=data.train.x.numpy()[:256],
            y_train=data.train.y.numpy()[:256],
        )
    return model_path, data_path


def idle(page: Page, timeout: int = LONG) -> None:
    """Wait until the script run that the last action started is over."""
    page.wait_for_timeout(400)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        timeout=timeout
    )
    page.wait_for_timeout(300)


def open_page(page: Page, title: str) -> None:
    page.get_by_role("link", name=title, exact=True).click()
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=LONG)
    idle(page)


def choose(page: Page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    page.get_by_test_id("stSelectbox").filter(has_text=re.compile(f"^{re.escape(label)}")).click()
    page.get_by_role("option", name=option, exact=True).click()
    idle(page)


def _slider(page: Page, label: str):  # noqa: ANN202
    """The slider labelled ``label`` (during a rerun the faded old one may still be on the page:
    the last one is the live one)."""
    return page.get_by_role("slider", name=re.compile("^" + re.escape(label))).last


def press(page: Page, slider_label: str, key: str, times: int) -> None:
    """Press ``key`` on a slider ``times`` times, each once the run of the last press is over."""
    for _ in range(times):
        slider = _slider(page, slider_label)
        slider.focus()
        slider.press(key)
        idle(page)


def slider_value(page: Page, slider_label: str) -> int:
    return int(_slider(page, slider_label).input_value())


def upload(page: Page, model: Path, data: Path) -> None:
    """On the Model page: "Your own", both files, Open; waits for the model's dense numbers."""
    page.get_by_text("Your own", exact=True).click()
    idle(page)
    inputs = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
    inputs.nth(0).set_input_files(str(model))
    inputs.nth(1).set_input_files(str(data))
    idle(page)
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_role("heading", name=f"{model.name} (uploaded), dense")).to_be_visible(
        timeout=LONG
    )
    idle(page)


def scan(page: Page, keep: tuple[str, ...] = ("50",)) -> None:
    """On the Sensitivity page: keep only the ratios ``keep`` (percent), run the scan."""
    box = page.get_by_test_id("stMultiSelect")
    for tag in box.locator('[data-baseweb="tag"]').all():
        if tag.inner_text().strip() not in keep:
            tag.locator('[role="presentation"]').last.click()
            idle(page)
    page.get_by_role("button", name="Run scan").click()
    idle(page)
    expect(page.get_by_role("button", name="Download CSV")).to_be_visible(timeout=LONG)


def allocate(page: Page) -> str:
    """On the Prune page: the automatic allocation at its default target; returns its summary."""
    page.get_by_text("Start from an automatic allocation").click()
    page.get_by_role("button", name="Allocate", exact=True).click()
    summary = page.get_by_text(re.compile("^Achieved"))
    expect(summary).to_be_visible(timeout=LONG)
    text = summary.inner_text()
    page.get_by_role("button", name="Use this plan").click()
    idle(page)
    return text


def recover(page: Page, epochs: int = 2, int8: str = "auto") -> None:
    """On the Recover page: ``epochs`` of fine-tuning (from the default 5) and int8, then Run."""
    press(page, "Fine-tuning epochs", "ArrowLeft", 5 - epochs)
    choose(page, "int8 quantization", int8)
    page.get_by_role("button", name="Run", exact=True).click()
    idle(page)
    expect(page.get_by_role("link", name="Export the recovered model")).to_be_visible(timeout=LONG)


def export_choice(page: Page) -> str:
    """The label of the Export page's chosen "What to export"."""
    return page.get_by_test_id("stRadio").locator("label:has(input:checked)").inner_text()


def build_and_download(page: Page, folder: Path) -> dict[str, bytes]:
    """On the Export page: build the export (if needed), download bundle.zip; its files by name."""
    build = page.get_by_role("button", name="Build the export")
    if build.count():
        build.click()
        idle(page)
    with page.expect_download(timeout=LONG) as info:
        page.get_by_role("button", name="bundle.zip").click()
    path = folder / "bundle.zip"
    info.value.save_as(path)
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as z:
        return {name: z.read(name) for name in z.namelist()}


def import_plan(page: Page, plan: Path) -> None:
    """On the Export page: upload ``plan`` as a plan JSON file and restore it."""
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').last.set_input_files(str(plan))
    idle(page)
    page.get_by_role("button", name="Restore this plan").click()
    idle(page)
    expect(page.get_by_text(re.compile(f"^Restored {re.escape(plan.name)}"))).to_be_visible(
        timeout=LONG
    )
