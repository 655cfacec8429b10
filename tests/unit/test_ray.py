"""Scans and allocations on Ray give exactly the local points (a local Ray with 2 CPUs); without Ray
the flags say how to install it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from explorer import sensitivity as sens
from explorer.allocate import allocate
from explorer.cli import main
from explorer.distributed import LocalExecutor, RayExecutor, RayUnavailable, executor
from explorer.sensitivity.engines import ort_suffix
from explorer.subject import Subject

RATIOS = (0.3, 0.6)


@pytest.fixture(scope="module")
def ray_executor() -> RayExecutor:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield executor(workers=2)
    finally:
        ray.shutdown()


@pytest.mark.parametrize(
    ("model", "method", "labels"),
    [
        ("zoo:digits-cnn", "l1-unstructured", True),
        ("zoo:digits-resnet", "l1-structured", True),
        ("tabular_mlp", "2:4", False),
    ],
)
def test_ray_scan_gives_the_local_points(
    model: str,
    method: str,
    labels: bool,
    ray_executor: RayExecutor,
    subject: Callable[..., Subject],
    unseen_subject: Callable[..., Subject],
) -> None:
    subj = subject(model) if model.startswith("zoo:") else unseen_subject(model, labels=labels)
    local = sens.scan(subj, method, RATIOS, cache=False)
    remote = sens.scan(subj, method, RATIOS, cache=False, executor=ray_executor)
    pd.testing.assert_frame_equal(local, remote, check_exact=True)


def test_ray_splits_the_data_in_chunks_as_the_local_run(
    ray_executor: RayExecutor, subject: Callable[..., Subject], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ort_suffix, "_CAPTURE_BYTES", 64 * 2**10)  # a few samples per chunk
    subj = subject("zoo:digits-resnet")
    layers = subj.layer_names[:4]
    seen: list[str] = []
    local = sens.scan(subj, "l1-unstructured", RATIOS, layers=layers, cache=False)
    remote = sens.scan(
        subj,
        "l1-unstructured",
        RATIOS,
        layers=layers,
        cache=False,
        executor=ray_executor,
        on_progress=lambda f, m: seen.append(m),
    )
    pd.testing.assert_frame_equal(local, remote, check_exact=True)
    assert any("tasks on 2 workers" in m for m in seen)


def test_ray_allocation_is_the_local_one(
    ray_executor: RayExecutor,
    subject: Callable[..., Subject],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(sens.CACHE_ENV, str(tmp_path))  # no cached curves: both scan
    subj = subject("zoo:digits-cnn")
    local = allocate(subj, ("sparsity", 0.6), verify=False)
    sens.clear_cache()
    remote = allocate(subj, ("sparsity", 0.6), verify=False, executor=ray_executor)
    assert remote.plan.to_dict() == local.plan.to_dict()
    assert remote.predicted_accuracy == local.predicted_accuracy


def test_cli_workers(
    ray_executor: RayExecutor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sensitivity", "--model", "zoo:digits-mlp", "--ratios", "0.5"]
    assert main([*args, "--out", str(tmp_path / "local.csv")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "ray.csv")]) == 0
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()


def test_without_ray_the_flags_say_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    with pytest.raises(RayUnavailable, match=r"pip install 'pruning-explorer\[ray\]'"):
        executor(workers=2)
    code = main(
        [
            "sensitivity",
            "--model",
            "zoo:digits-mlp",
            "--workers",
            "2",
            "--out",
            str(tmp_path / "x.csv"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "--workers" in err
        and "pip install 'pruning-explorer[ray]'" in err
        and "Traceback" not in err
    )
    assert isinstance(executor(), LocalExecutor)  # without the flags nothing changes
