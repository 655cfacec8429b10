"""Architectures users bring (tests/models/architectures.py) through the app's pages, as a new user
opens them: a Hugging Face ViT as ``PATH.py:FUNC``, a BERT as a ``.pt2`` (two named integer
inputs), a ShuffleNetV2 as a ``.pt2`` (groups refused through its channel shuffle, the others
prunable), and a BERT as the ONNX file torch's TorchScript exporter writes (its re-export follows
the attention mask and the batch size it is fed)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from apphelpers import ROOT, metrics, open_app

ARCH_PATH = ROOT / "tests" / "models" / "architectures.py"


def _architectures():  # noqa: ANN202
    name = "_explorer_app_architectures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ARCH_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _files(name: str, door: str, root: Path) -> tuple[str, str]:
    arch = _architectures()
    data = root / f"{name}.npz"
    np.savez(data, **arch.make_data(name))
    if door == "entry":
        return f"{ARCH_PATH}:{name}", str(data)
    model = arch.build(name)
    inputs = {k: torch.from_numpy(v) for k, v in arch.make_inputs(name, 2).items()}
    args, kwargs = ((), inputs) if "input_ids" in inputs else ((inputs["x"],), {})
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if door == "pt2":
            path = root / f"{name}.pt2"
            dims = {k: {0: batch} for k in kwargs} if kwargs else ({0: batch},)
            torch.export.save(
                torch.export.export(model, args, kwargs=kwargs, dynamic_shapes=dims), path
            )
        else:
            path = root / f"{name}.onnx"
            names = list(kwargs)
            torch.onnx.export(
                model,
                args,
                str(path),
                kwargs=kwargs,
                dynamo=False,
                input_names=names,
                output_names=["logits"],
                dynamic_axes={n: {0: "batch"} for n in [*names, "logits"]},
            )
    return str(path), str(data)


@pytest.mark.parametrize(
    ("name", "door"),
    [("vit", "entry"), ("bert", "pt2"), ("bert", "onnx"), ("shufflenet_v2", "pt2")],
)
def test_architecture_on_every_page(tmp_path: Path, name: str, door: str) -> None:
    model, data = _files(name, door, tmp_path)
    at = open_app(timeout=180)
    at.radio(key="model.source").set_value("Your own").run()
    at.text_input[0].input(model)
    at.text_input[1].input(data)
    at.button[0].click().run()
    assert not at.exception and not at.error, at.error
    caption = " ".join(c.value for c in at.caption)
    assert (
        "input_ids int64 (16,), attention_mask int64 (16,)"
        if name == "bert"
        else "x float32 (3, 32, 32)"
    ) in caption
    table = at.dataframe[0].value
    if name == "shufflenet_v2":  # refused groups say why; the branches' inner convs still prune
        notes = dict(zip(table["name"], table["note"], strict=False))
        assert (
            "channel shuffle" in notes["stage2.0.branch2.5"] and notes["stage2.0.branch2.0"] == ""
        )

    at.switch_page("pages/prune.py").run()
    assert not at.exception and not at.error
    at.selectbox(key="prune.method").set_value("l2-structured").run()
    movable = [s.key for s in at.slider if s.key.startswith("prune.ratio.") and not s.disabled]
    assert movable
    at.slider(key=movable[0]).set_value(50).run()
    assert not at.exception and not at.error, at.error
    assert "Accuracy" in metrics(at)

    for page in ("weights", "sensitivity", "recover"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, (page, at.exception)
    at.switch_page("pages/export.py").run()
    at.button[0].click().run(timeout=300)
    assert not at.exception and not at.error, at.error
