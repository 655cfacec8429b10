"""Reading a user's model file: one place for the errors every format shares."""

from __future__ import annotations

from pathlib import Path

from explorer.errors import ModelLoadError

__all__ = ["read_model_file"]


def read_model_file(path: Path) -> bytes:
    """The file's bytes; ModelLoadError naming the file when it cannot be read or is empty."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror})") from None
    if not data:
        raise ModelLoadError(f"{path}: the file is empty")
    return data
