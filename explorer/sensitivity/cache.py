"""The on-disk cache of scanned points, and the hashes that key it.

The cache lives in ``$PRUNING_EXPLORER_CACHE`` (default ``~/.cache/pruning-explorer``), as CSV
tables with a JSON note of their key; nothing is pickled. A scan, a latency curve or anything else
made of (unit, ratio) points keys its table by the model's hash, the data's fingerprint, the
method and what else changes its numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from explorer.hashing import model_hash
from explorer.subject import Subject

__all__ = [
    "CACHE_ENV",
    "SCAN_VERSION",
    "PointCache",
    "cache_dir",
    "clear_cache",
    "model_hash",
    "ratio_key",
]

CACHE_ENV = "PRUNING_EXPLORER_CACHE"
SCAN_VERSION = 1  # bump when the numbers a scan produces change: old cache files are then ignored


def cache_dir() -> Path:
    """Where curves are cached: ``$PRUNING_EXPLORER_CACHE`` or ``~/.cache/pruning-explorer``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pruning-explorer")


def ratio_key(ratio: float) -> float:
    """A ratio as the cache keys it (rounded, so that 0.30000000000000004 is 0.3)."""
    return round(float(ratio), 6)


class PointCache:
    """One CSV of points (unit, ratio -> values) per key; merged on save, replaced atomically."""

    def __init__(
        self, kind: str, subject: Subject, method: str, columns: list[str], **extra: object
    ) -> None:
        self.key = {
            "kind": kind,
            "version": SCAN_VERSION,
            "model": model_hash(subject.model),
            "data": subject.data.fingerprint(),
            "method": method,
            **extra,
        }
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:20]
        self.path = cache_dir() / "sensitivity" / f"{kind}-{digest}.csv"
        self.columns = columns

    def load(self) -> dict[tuple[str, float], dict]:
        try:
            df = pd.read_csv(self.path, dtype={"layer": str, "members": str}, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError):
            return {}
        if list(df.columns) != self.columns:
            return {}
        return {(r["layer"], ratio_key(r["ratio"])): r for r in df.to_dict(orient="records")}

    def save(self, points: dict[tuple[str, float], dict]) -> None:
        """Merge ``points`` into the file. Failing to write a cache is not an error."""
        merged = self.load()
        merged.update(points)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                pd.DataFrame(list(merged.values()), columns=self.columns).to_csv(f, index=False)
            os.replace(tmp, self.path)
            self.path.with_suffix(".json").write_text(json.dumps(self.key, indent=2) + "\n")
        except OSError:
            pass


def clear_cache() -> int:
    """Delete every cached curve; returns how many files were removed."""
    folder = cache_dir() / "sensitivity"
    removed = 0
    for path in folder.glob("*") if folder.is_dir() else []:
        if path.suffix in (".csv", ".json", ".tmp"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
