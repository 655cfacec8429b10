"""Packing an export bundle into one zip, and the CLI command that reproduces an export."""

from __future__ import annotations

import io
import shlex
import zipfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["export_command", "zip_bundle"]


def zip_bundle(files: Mapping[str, str | Path]) -> bytes:
    """A zip (deflated) holding every file of ``files`` (role -> path) under its own file name.

    Reads the files; writes nothing to disk.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files.values():
            zf.write(path, arcname=Path(path).name)
    return buf.getvalue()


def export_command(model: str, data: str | None = None, plan_file: str = "plan.json",
                   out_dir: str = "export") -> str:
    """The shell command that rebuilds the bundle from a saved plan (arguments shell-quoted)."""
    parts = ["pruning-explorer", "export", "--model", model]
    if data:
        parts += ["--data", data]
    parts += ["--plan", plan_file, "--out", out_dir]
    return shlex.join(parts)
