"""The Prune page's latency: cards with the interleaved ratio and "within noise" by its rule, and a
structured plan that measures slower than dense explained, with the rounded plan one click away.
Timings come from a made-up CPU (tests/app/fakecpu.py), never from the clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from apphelpers import open_app
from fakecpu import clear_caches, install

CNN_WIDTHS = [32, 64, 128, 256]  # digits-cnn's convs


@pytest.fixture()
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    clear_caches()
    yield monkeypatch
    clear_caches()


def _cards(at) -> dict:  # noqa: ANN001
    return {m.label: m for m in at.metric}


@pytest.mark.parametrize(
    ("share", "description", "shown"), [(0.77, "vs dense", "1.30x"), (1.0, "within noise", "1.00x")]
)
def test_latency_cards_show_the_interleaved_ratio_and_the_noise_rule(
    fake_cpu: pytest.MonkeyPatch, share: float, description: str, shown: str
) -> None:
    install(fake_cpu, CNN_WIDTHS, share=share)
    at = open_app("prune")
    at.slider(key="prune.ratio.features.11").set_value(37).run()
    assert not at.exception
    for label in ("Latency, median", "Latency, p90"):
        card = _cards(at)[label]
        assert shown in card.delta and card.proto.delta_description == description
        assert "timed alternately in one window: 5 rounds" in card.help
    assert "within noise" in _cards(at)["Latency, median"].help  # the rule is explained


def test_slower_plan_is_explained_and_the_rounded_plan_is_one_click_away(
    fake_cpu: pytest.MonkeyPatch,
) -> None:
    install(fake_cpu, CNN_WIDTHS)
    at = open_app("prune")
    at.selectbox(key="prune.method").set_value("l1-structured").run()
    assert at.radio(key="prune.round_to").value == "off"
    for layer in ("features.0", "features.3", "features.7"):
        at.slider(key=f"prune.ratio.{layer}").set_value(30).run()  # keeps 23, 45, 90 channels
    assert not at.exception
    card = _cards(at)["Latency, median"]
    assert (
        card.delta.startswith("+") and card.proto.delta_description == "vs dense"
    )  # slower, in every round
    notes = [w.value for w in at.warning]
    assert any(
        n.startswith("**Slower than dense") and "features.0" in n and "23 of 32 channels" in n
        for n in notes
    ), notes
    offer = [m.value for m in at.markdown if m.value.startswith("The rounded plan")]
    assert offer and "multiples of 16" in offer[0] and "faster" in offer[0]
    at.button(key="prune.use_rounded").click().run()
    assert not at.exception
    assert at.radio(key="prune.round_to").value == 16
    assert [
        at.slider(key=f"prune.ratio.{n}").value for n in ("features.0", "features.3", "features.7")
    ] == [30] * 3
    assert at.session_state["drafts"]["zoo:digits-cnn|"].round_to == 16
    card = _cards(at)["Latency, median"]
    assert card.delta.startswith("-") and not any(
        w.value.startswith("**Slower") for w in at.warning
    )
    assert at.session_state["history"][-1]["summary"].endswith(
        "channels rounded to multiples of 16"
    )
