"""Uploads on the Model page: a model and data uploaded as files open like any spec; refusals are an
``st.error`` and the session keeps its model; uploaded files are kept in the cache folder by content
hash and come back with the session (a reload, a restart)."""

from __future__ import annotations

import gc
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from apphelpers import APP, metrics, open_app
from PIL import Image
from streamlit.testing.v1 import AppTest

from explorer.data import load_data
from explorer.models.zoo import build
from explorer.runtime import export_onnx
from explorer.sessions import uploads_dir

MODEL_UPLOAD, DATA_UPLOAD = "model.upload_model", "model.upload_data"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("uploads")
    test = load_data("zoo:digits-mlp").test
    onnx_path = export_onnx(build("digits-mlp").eval(), test.x[:1], root / "mlp.onnx")
    frame = pd.DataFrame(test.x.numpy()[:100], columns=[f"f{i}" for i in range(64)])
    frame["label"] = test.y.numpy()[:100]
    images = io.BytesIO()
    with zipfile.ZipFile(images, "w") as z:
        for i, (img, label) in enumerate(
            zip(test.x.numpy()[:60].reshape(-1, 8, 8), test.y.numpy()[:60], strict=False)
        ):
            png = io.BytesIO()
            Image.fromarray((img * 255).astype(np.uint8), mode="L").save(png, format="PNG")
            z.writestr(f"digits/{label}/{i}.png", png.getvalue())
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../escaped.png", b"x")
    return {
        "mlp.onnx": onnx_path.read_bytes(),
        "digits.csv": frame.to_csv(index=False).encode(),
        "digits.zip": images.getvalue(),
        "evil.zip": evil.getvalue(),
        "model.pt": torch.tensor([1.0]).numpy().tobytes(),
    }


def _own(at):  # noqa: ANN001, ANN202
    at.radio(key="model.source").set_value("Your own").run()
    return at


def test_spec_box_says_it_runs_your_own_code() -> None:
    at = _own(open_app())
    assert any("this runs your own code" in t.label for t in at.text_input)
    assert {u.key for u in at.file_uploader} == {MODEL_UPLOAD, DATA_UPLOAD}


def test_uploaded_onnx_and_csv_open_and_are_measured(files: dict[str, bytes]) -> None:
    at = _own(open_app())
    at.file_uploader(key=MODEL_UPLOAD).upload("mlp.onnx", files["mlp.onnx"])
    at.file_uploader(key=DATA_UPLOAD).upload("digits.csv", files["digits.csv"], "text/csv")
    at.button[0].click().run(timeout=120)
    assert not at.exception and not at.error, at.error
    model, data = at.session_state["model_spec"], at.session_state["data_spec"]
    folder = uploads_dir()
    assert model.endswith("mlp.onnx") and Path(model).is_relative_to(folder)
    assert data.endswith("digits.csv") and Path(data).is_relative_to(folder)
    assert metrics(at)["Parameters"] == "50,826"  # the zoo MLP's own count, measured on the upload
    # Shown by file name, not by the temporary path.
    assert [c.value for c in at.sidebar.code] == ["mlp.onnx (uploaded)", "digits.csv (uploaded)"]
    assert at.subheader[0].value == "mlp.onnx (uploaded), dense"


def test_uploaded_image_zip_becomes_an_image_folder(files: dict[str, bytes]) -> None:
    at = _own(open_app())
    at.text_input[0].input("zoo:digits-cnn")
    at.file_uploader(key=DATA_UPLOAD).upload("digits.zip", files["digits.zip"], "application/zip")
    at.button[0].click().run(timeout=120)
    assert not at.exception and not at.error, at.error
    data = Path(at.session_state["data_spec"])
    assert data.is_dir() and sorted(p.name for p in data.iterdir())[:2] == ["0", "1"]


@pytest.mark.parametrize(
    ("kind", "name", "culprit"),
    [
        ("model", "model.pt", "model.pt: refused"),
        ("data", "evil.zip", "outside its folder"),
        ("model", "big.onnx", "more than the 1 MB upload limit"),
    ],
)
def test_refused_uploads_are_an_error_and_the_session_keeps_its_model(
    kind: str, name: str, culprit: str, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNING_EXPLORER_MAX_UPLOAD_MB", "1")
    at = _own(open_app())
    content = files.get(name, bytes(2 * 2**20))
    if kind == "data":
        at.text_input[0].input("zoo:digits-mlp")
    at.file_uploader(key=MODEL_UPLOAD if kind == "model" else DATA_UPLOAD).upload(name, content)
    at.button[0].click().run(timeout=120)
    assert not at.exception
    assert at.error and culprit in at.error[0].value, [e.value for e in at.error]
    assert at.session_state["model_spec"] == "zoo:digits-cnn"
    assert metrics(at)["Parameters"] == "390,890"
    assert not list(Path("/").glob("escaped.png"))


def test_uploads_are_kept_by_content_and_come_back_with_the_session(
    files: dict[str, bytes],
) -> None:
    at = _own(open_app())
    at.file_uploader(key=MODEL_UPLOAD).upload(
        "my mlp.onnx", files["mlp.onnx"]
    )  # a name with a space
    at.file_uploader(key=DATA_UPLOAD).upload("digits.csv", files["digits.csv"], "text/csv")
    at.button[0].click().run(timeout=120)
    assert not at.exception and not at.error, at.error
    model, data = at.session_state["model_spec"], at.session_state["data_spec"]
    assert Path(model).read_bytes() == files["mlp.onnx"]
    assert Path(model).parent.name == hashlib.sha256(files["mlp.onnx"]).hexdigest()[:16]
    sid = (
        at.query_params["session"][0]
        if isinstance(at.query_params["session"], list)
        else at.query_params["session"]
    )
    del at
    gc.collect()
    assert Path(model).is_file() and Path(data).is_file()  # the session ended; its files stay
    again = AppTest.from_file(APP, default_timeout=120)
    again.query_params["session"] = sid  # a reload, or a new server, opens the same address
    again.run()
    assert not again.exception
    assert again.session_state["model_spec"] == model and again.session_state["data_spec"] == data
    assert [c.value for c in again.sidebar.code] == [
        "my mlp.onnx (uploaded)",
        "digits.csv (uploaded)",
    ]
    assert metrics(again)["Parameters"] == "50,826"
    other = _own(open_app())  # another user uploading the same file: stored once
    other.file_uploader(key=MODEL_UPLOAD).upload("my mlp.onnx", files["mlp.onnx"])
    other.file_uploader(key=DATA_UPLOAD).upload("digits.csv", files["digits.csv"], "text/csv")
    other.button[0].click().run(timeout=120)
    assert other.session_state["model_spec"] == model


def test_a_refused_upload_keeps_the_session_and_its_history(files: dict[str, bytes]) -> None:
    at = open_app("prune")
    movable = [s.key for s in at.slider if s.key.startswith("prune.ratio.") and not s.disabled]
    at.slider(key=movable[0]).set_value(20).run()
    assert not at.exception and not at.error
    history = len(at.session_state["history"])
    assert history >= 1
    at.switch_page("pages/model.py").run()
    _own(at).file_uploader(key=MODEL_UPLOAD).upload("model.pt", files["model.pt"])
    at.button[0].click().run(timeout=120)
    assert not at.exception and at.error and "refused" in at.error[0].value
    at.switch_page("pages/prune.py").run()
    assert not at.exception and not at.error
    assert len(at.session_state["history"]) == history
    assert at.slider(key=movable[0]).value == 20
