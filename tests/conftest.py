"""Test-wide settings: deterministic seeds, and caches kept out of the user's home."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

# Caches written by the library (sensitivity curves...) go to a throw-away folder.
os.environ.setdefault("PRUNING_EXPLORER_CACHE", tempfile.mkdtemp(prefix="explorer-test-cache-"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
