"""Uploads for the Model page: the user's model and data files, kept in the cache folder.

Uploaded files are stored by content hash (``explorer.sessions.store_upload``:
``<cache>/uploads/<hash>/<name>``), so they survive a reload and a server restart along with the
session that opened them, and the same file uploaded twice is stored once. Each session also
keeps the file's original name: pages, plans, reports and commands name the file by it, never by
its path on this server.

Limits: an upload larger than ``limit_mb()`` (200 MB unless ``PRUNING_EXPLORER_MAX_UPLOAD_MB`` or
streamlit's ``server.maxUploadSize`` says otherwise) is refused; a .zip of images is unpacked only
inside its own folder (no absolute paths, no ``..``, no links) and within the same limit.
Uploaded files are read by the library's safe loaders (nothing is unpickled). A python entrypoint
is never uploaded: it is typed in the spec box, which says that it runs the user's own code.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import streamlit as st

from explorer.errors import DataError, ExplorerError, ModelLoadError
from explorer.models.loaders import PICKLE_SUFFIXES, SAVE_ADVICE
from explorer.sessions import store_upload, uploads_dir
from ui.state import Keys

__all__ = [
    "DATA_TYPES",
    "MODEL_TYPES",
    "OwnInputs",
    "display",
    "limit_mb",
    "own_inputs",
    "portable",
    "resolve",
    "save_upload",
    "uploaded_name",
]

LIMIT_ENV = "PRUNING_EXPLORER_MAX_UPLOAD_MB"
DEFAULT_LIMIT_MB = 200
MODEL_TYPES = ["onnx", "pt2"]
DATA_TYPES = ["npz", "csv", "zip"]
MAX_ZIP_FILES = 50_000


@dataclass(frozen=True)
class OwnInputs:
    """What the user gave in the "Your own" form (uploads win over typed specs)."""

    model_file: Any  # streamlit UploadedFile or None
    data_file: Any
    model_spec: str
    data_spec: str


def limit_mb() -> int:
    """The upload size limit in MB: ``PRUNING_EXPLORER_MAX_UPLOAD_MB``, else streamlit's
    ``server.maxUploadSize`` (200 by default)."""
    raw = os.environ.get(LIMIT_ENV)
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value > 0:
            return value
    try:
        return int(st.get_option("server.maxUploadSize"))
    except Exception:  # outside a streamlit runtime
        return DEFAULT_LIMIT_MB


def uploaded_name(spec: str | None) -> str | None:
    """The original file name of an uploaded ``spec`` (a path in the cache's upload folder), else
    None.

    A .zip of images is named by its folder (the archive unpacked): ``digits`` for ``digits.zip``.
    """
    if not spec:
        return None
    names = st.session_state.get(Keys.UPLOAD_NAMES) or {}
    if spec in names:
        return names[spec]
    try:
        inside = Path(spec).resolve().is_relative_to(uploads_dir().resolve())
    except (OSError, ValueError):
        return None
    return Path(spec).name if inside else None


def display(spec: str | None) -> str | None:
    """How a spec is shown: an uploaded file by its name, not by its path on this server."""
    name = uploaded_name(spec)
    return f"{name} (uploaded)" if name else spec


def portable(spec: str | None) -> str | None:
    """The spec as another machine can use it: an uploaded file by its original name."""
    return uploaded_name(spec) or spec


def _safe_name(name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return base[:120] or "upload"


def _unzip(data: bytes, dest: Path, shown: str, limit: int) -> None:
    """Unpack an archive of images into ``dest``, refusing anything that would land outside it."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"{shown}: not a readable .zip archive ({e})") from None
    if len(members) > MAX_ZIP_FILES:
        raise DataError(
            f"{shown}: {len(members):,} files in the archive, more than {MAX_ZIP_FILES:,}"
        )
    total = sum(m.file_size for m in members)
    if total > limit * 2**20:
        raise DataError(
            f"{shown}: unpacks to {total / 2**20:.0f} MB, more than the {limit} MB limit"
        )
    for m in members:
        parts = PurePosixPath(m.filename.replace("\\", "/")).parts
        if m.filename.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
            raise DataError(
                f"{shown}: refused: the archive entry {m.filename!r} points outside its folder"
            )
        if (m.external_attr >> 16) & 0o170000 == 0o120000:
            raise DataError(
                f"{shown}: refused: the archive entry {m.filename!r} is a symbolic link"
            )
        if m.is_dir() or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with archive.open(m) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"{shown}: cannot unpack {m.filename!r} ({e})") from None


def _image_root(folder: Path) -> Path:
    """The folder holding the class subfolders: skip single wrapping folders (``digits/``)."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if (
            len(entries) == 1
            and entries[0].is_dir()
            and any(q.is_dir() for q in entries[0].iterdir())
        ):
            folder = entries[0]
        else:
            return folder


def save_upload(file: Any, kind: Literal["model", "data"]) -> str:
    """Keep an uploaded file in the cache folder and return its spec (a path).

    Side effects: writes ``<cache>/uploads/<content hash>/<name>`` (a .zip of images is unpacked
    there, once) and records the original file name in the session (``uploaded_name``).

    Raises:
        ModelLoadError / DataError: too large, a pickle, an unsupported type, or a bad archive.
    """
    error = ModelLoadError if kind == "model" else DataError
    name = _safe_name(getattr(file, "name", "upload"))
    shown = getattr(file, "name", name)
    suffix = Path(name).suffix.lower()
    limit = limit_mb()
    size = int(getattr(file, "size", 0) or 0)
    if size > limit * 2**20:
        raise error(
            f"{shown}: {size / 2**20:.1f} MB, more than the {limit} MB upload limit "
            f"(set {LIMIT_ENV} or streamlit's server.maxUploadSize to change it)"
        )
    if suffix in PICKLE_SUFFIXES:
        advice = (
            SAVE_ADVICE
            if kind == "model"
            else "save the arrays with numpy.savez(path, x=x, y=y) or as CSV"
        )
        raise error(
            f"{shown}: refused: a {suffix} file is a pickle, and unpickling runs code from the"
            f" file; {advice}"
        )
    allowed = MODEL_TYPES if kind == "model" else DATA_TYPES
    if suffix.lstrip(".") not in allowed:
        raise error(
            f"{shown}: a {kind} upload must be one of {', '.join('.' + t for t in allowed)}"
        )
    data = file.getvalue()
    if len(data) > limit * 2**20:
        raise error(f"{shown}: {len(data) / 2**20:.1f} MB, more than the {limit} MB upload limit")
    original = PurePosixPath(str(shown).replace("\\", "/")).name or name
    if suffix == ".zip":
        folder = uploads_dir() / hashlib.sha256(data).hexdigest()[:16]
        dest = folder / Path(name).stem
        if not dest.is_dir():
            part = folder / f".{dest.name}.part"
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(parents=True)
            try:
                _unzip(data, part, shown, limit)
            except ExplorerError:
                shutil.rmtree(part, ignore_errors=True)
                raise
            part.rename(dest)
        spec, original = str(_image_root(dest)), Path(original).stem
    else:
        spec = str(store_upload(data, name))
    names = dict(st.session_state.get(Keys.UPLOAD_NAMES) or {})
    names[spec] = original
    st.session_state[Keys.UPLOAD_NAMES] = names
    return spec


def own_inputs(current_model: str | None, current_data: str | None) -> OwnInputs:
    """Draw the "Your own" fields (inside the page's form): uploads, and the spec boxes.

    The two text inputs come in this order: the model spec, then the data spec.
    """
    limit = limit_mb()
    model_file = st.file_uploader(
        "Upload a model (.onnx, or a .pt2 saved with torch.export.save)",
        type=MODEL_TYPES
        + ["pt", "pth"],  # accepted so that a pickle gets our message on how to save it
        key=Keys.MODEL_UPLOAD,
        max_upload_size=limit,
        help=(
            f"Up to {limit} MB. Kept on this server (in its cache folder) with your session, so a"
            " reload or a restart brings it back; plans and commands name it by its file name."
        ),
    )
    model_spec = st.text_input(
        "...or a model spec: PATH.onnx, PATH.pt2, or PATH.py:FUNC (this runs your own code)",
        value=current_model or "",
        placeholder="path/to/model.py:build or package.module:build",
        help=(
            "PATH.py:FUNC imports the file and calls FUNC() on this server: it runs your own code."
            " FUNC returns a torch.nn.Module with its weights loaded (torch.load(...,"
            " weights_only=True))."
        ),
    )
    data_file = st.file_uploader(
        "Upload data (.npz with x and y, .csv with a 'label' column, or a .zip of class folders of"
        " images)",
        type=DATA_TYPES,
        key=Keys.DATA_UPLOAD,
        max_upload_size=limit,
        help=(
            "Without labels, accuracy becomes agreement with the dense model. Images are resized "
            "to the model's input."
        ),
    )
    data_spec = st.text_input(
        "...or a data spec: PATH.npz, PATH.csv, an image folder, PATH.py:FUNC or zoo:NAME",
        value=current_data or "",
        placeholder="path/to/data.npz, path/to/images/ or zoo:digits-32",
    )
    return OwnInputs(model_file, data_file, model_spec.strip(), data_spec.strip())


def resolve(inputs: OwnInputs) -> tuple[str, str | None]:
    """The (model spec, data spec) to open; uploads are saved first (see ``save_upload``).

    Raises:
        ExplorerError: an upload is refused, or no model was given.
    """
    model = (
        save_upload(inputs.model_file, "model")
        if inputs.model_file is not None
        else inputs.model_spec
    )
    data = (
        save_upload(inputs.data_file, "data") if inputs.data_file is not None else inputs.data_spec
    )
    if not model:
        raise ModelLoadError("give a model: upload a file or type a model spec")
    return model, data or None
