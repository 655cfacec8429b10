"""Packing an export bundle into one zip, and the CLI command that reproduces an export."""

from __future__ import annotations

import io
import shlex
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def export_command(
    model: str,
    data: str | None = None,
    plan_file: str = "plan.json",
    out_dir: str = "export",
    recovery: Mapping[str, Any] | None = None,
) -> str:
    """The shell command that rebuilds the bundle from a saved plan (arguments shell-quoted).

    ``recovery``: the recovery stages to run again before export, as the Recover page's settings
    (``recalibrate``: whether batch norm was recalibrated, ``epochs``, ``distill``,
    ``temperature``, ``alpha``, ``patience``, ``int8``: None or an int8 mode).
    """
    parts = ["pruning-explorer", "export", "--model", model]
    if data:
        parts += ["--data", data]
    parts += ["--plan", plan_file, "--out", out_dir]
    if recovery:
        epochs = int(recovery.get("epochs") or 0)
        recalibrate = bool(recovery.get("recalibrate"))
        if epochs:
            parts += ["--finetune-epochs", str(epochs)]
            if not recalibrate:
                parts.append("--no-recalibrate-bn")
            if recovery.get("distill"):
                parts += [
                    "--distill",
                    "--temperature",
                    f"{float(recovery.get('temperature', 2.0)):g}",
                    "--alpha",
                    f"{float(recovery.get('alpha', 0.5)):g}",
                ]
            if recovery.get("patience"):
                parts += ["--patience", str(int(recovery["patience"]))]
        elif recalibrate:
            parts.append("--recalibrate-bn")
        if recovery.get("int8"):
            parts += ["--quantize", "int8"]
            if recovery["int8"] != "auto":
                parts += ["--int8-mode", str(recovery["int8"])]
    return shlex.join(parts)
