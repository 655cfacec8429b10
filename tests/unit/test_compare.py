"""The comparison of two configurations: the curves' prediction of accuracy (dense minus each
unit's own drop at its ratio), checked against the scan it reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from explorer.compare import metric_rows, ratio_rows
from explorer.subject import Subject

CNN = "zoo:digits-cnn"


def test_predicted_accuracy_is_dense_minus_the_curves_drops(
    subject: Callable[..., Subject],
) -> None:
    """The comparison's prediction, against the scan it reads (one layer: exactly its point)."""
    from explorer.compare import predict_accuracy
    from explorer.sensitivity import scan

    subj = subject(CNN)
    curves = scan(subj, "l1-unstructured", [0.25, 0.5])
    dense = float(curves.loc[curves.ratio == 0, "accuracy"].iloc[0])
    at = {(r.layer, r.ratio): r.accuracy for r in curves.itertuples()}
    assert predict_accuracy({"features.7": 0.5}, curves) == pytest.approx(at[("features.7", 0.5)])
    both = predict_accuracy({"features.3": 0.25, "features.7": 0.5}, curves)
    drops = max(0.0, dense - at[("features.3", 0.25)]) + max(0.0, dense - at[("features.7", 0.5)])
    assert both == pytest.approx(max(0.0, dense - drops))
    assert predict_accuracy({"features.7": 0.9}, curves) is None  # beyond the scan
    assert predict_accuracy({}, curves) == pytest.approx(dense)


def test_metric_and_ratio_rows() -> None:
    rows = {
        r["metric"]: r
        for r in metric_rows({"accuracy": 0.9, "macs": 100}, {"accuracy": 0.8, "macs": 50})
    }
    assert rows["accuracy (%)"]["B - A"] == pytest.approx(-10.0) and rows["MACs"]["B - A"] == -50
    assert ratio_rows(["a", "b"], {"a": 0.5}, {"b": 0.25}) == [
        {"layer": "a", "A (%)": 50.0, "B (%)": 0.0, "B - A (points)": -50.0},
        {"layer": "b", "A (%)": 0.0, "B (%)": 25.0, "B - A (points)": 25.0},
    ]
