"""Soak: the real server, 4 concurrent browser sessions, 50 slider moves each on the Prune page.

Each session moves its own slider (three single layers and "All layers"), so each has its own
plan; after every move it must show the "Nonzero params" its own plan gives (computed here from
the layer sizes), so another session's plan showing up would fail the test (cross-talk). No
session may show an exception or an error, and the server's memory must level off: its RSS over
the second half of the run may grow by at most a small bound. The figures (peak RSS, per-move
latency median and p95) are printed; ``benchmarks/soak.py`` prints the same on its own.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SOAK_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
SESSIONS, MOVES = 4, 50
GROWTH_MB = 150  # allowed RSS growth from half-way to the end (caches fill, then level off)
PEAK_MB = 2500  # far above what the MLP app needs; a leak per move would cross it

pytestmark = [pytest.mark.soak, pytest.mark.browser]


def _soak_module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("_soak_benchmark", SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(1200)
def test_four_sessions_fifty_moves_each() -> None:
    soak = _soak_module()
    if not os.access(soak.CHROMIUM, os.X_OK):
        pytest.skip(f"{soak.CHROMIUM} is missing (make test installs it)")
    pytest.importorskip("playwright.async_api")
    result = soak.run_soak(sessions=SESSIONS, moves=MOVES, model="zoo:digits-mlp")
    print("\n" + result.report())
    assert not result.errors, "\n".join(result.errors)
    assert len(result.latencies_ms) == SESSIONS * MOVES
    assert result.peak_rss_mb < PEAK_MB
    assert result.rss_at(1.0) - result.rss_at(0.5) < GROWTH_MB, result.report()
