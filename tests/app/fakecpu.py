"""A made-up CPU for AppTests of latency (never real wall-clock values): timings decided by the
channel counts of the model timed, patched in where the app measures speedups.

On it, latency follows the conv channels, but a conv whose output channels are no multiple of 16
costs 40% more than dense, as ONNX Runtime's blocked convolutions do on an AVX-512 CPU.
"""

from __future__ import annotations

import onnx
import pytest
import streamlit as st
from onnx import numpy_helper
from torch import nn

from explorer import rounding
from explorer.runtime import Speedup, speedup_of

FAST = 16


def _share(widths: list[int], dense_widths: list[int]) -> float:
    slow = sum(1 for w in widths if w % FAST)
    return sum(widths) / sum(dense_widths) * (1 + 0.4 * slow)


def timing(share: float, rounds: int = 5) -> Speedup:
    """An interleaved timing whose rounds saw ``share`` of the dense latency, -4% to +4%."""
    dense = [[1.0] * 3 for _ in range(rounds)]
    pruned = [[share * (1 + 0.02 * (r - rounds // 2))] * 3 for r in range(rounds)]
    return speedup_of([dense, pruned], 0, 1, threads=1)


def _onnx_widths(path: str) -> list[int]:
    graph = onnx.load(path).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    return [
        int(weights[n.input[1]].shape[0])
        for n in graph.node
        if n.op_type == "Conv" and n.input[1] in weights
    ]


def clear_caches() -> None:
    """Forget evaluations and slowdowns measured on the made-up CPU (the caches outlive a test)."""
    import ui.cache
    import ui.live

    st.cache_data.clear()
    ui.cache._slowdowns.clear()
    ui.live._finished.clear()  # the Prune page's finished live evaluations
    ui.live.evaluator.clear()


def install(
    monkeypatch: pytest.MonkeyPatch, dense_widths: list[int], share: float | None = None
) -> None:
    """Patch the app's timings: every speedup from the channel counts of the file timed (or a
    fixed ``share`` of the dense latency). Call :func:`clear_caches` before and after."""

    def measure_speedup(dense, pruned, x, **kwargs) -> Speedup:  # noqa: ANN001, ANN003
        return timing(
            share
            if share is not None
            else _share(_onnx_widths(pruned.session._model_path), dense_widths)
        )

    def time_with_dense(subject, models: list[nn.Module], rounds: int = 5) -> list[Speedup]:  # noqa: ANN001
        return [
            timing(
                share
                if share is not None
                else _share(
                    [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)],
                    dense_widths,
                )
            )
            for model in models
        ]

    monkeypatch.setattr("explorer.subject.measure_speedup", measure_speedup)
    monkeypatch.setattr(rounding, "time_with_dense", time_with_dense)
    monkeypatch.setattr(rounding, "fast_multiple", lambda: FAST)
    monkeypatch.setattr("ui.controls.fast_multiple", lambda: FAST)
