"""Many users: the shared base model never changes, and two sessions never see each other's
numbers."""

from __future__ import annotations

import torch
from apphelpers import metrics, open_app

from explorer.evaluate import evaluate_torch
from explorer.models import load_model
from explorer.plan import LayerRule, PruningPlan


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_cached_base_model_is_bit_identical_after_many_plans() -> None:
    import ui.cache

    at = open_app("prune")
    shared = ui.cache.subject("zoo:digits-cnn", None)
    before = _state(shared.model)
    moves = 0
    for method in (
        "l1-unstructured",
        "random-unstructured",
        "2:4",
        "l1-structured",
        "l2-structured",
    ):
        at.selectbox(key="prune.method").set_value(method).run()
        for layer, value in (
            ("features.3", 30),
            ("features.7", 55),
            ("features.11", 80),
            ("features.0", 45),
        ):
            at.slider(key=f"prune.ratio.{layer}").set_value(value).run()
            moves += 1
        at.radio(key="prune.scope").set_value("global").run()
        at.slider(key="prune.global").set_value(65).run()
        at.radio(key="prune.scope").set_value("local").run()
        assert not at.exception
    keys = [e["key"] for e in at.session_state["history"]]
    assert len(keys) == len(set(keys)) >= moves // 2  # distinct plans, each evaluated for real
    assert ui.cache.subject("zoo:digits-cnn", None) is shared  # the one shared Subject
    after = _state(shared.model)
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name
    shipped = load_model("zoo:digits-cnn").state_dict()
    for name, tensor in shipped.items():
        assert torch.equal(tensor, after[name]), name
    assert all(not p.requires_grad for p in shared.model.parameters())


def _expected(plan: PruningPlan) -> dict[str, str]:
    """The numbers of ``plan`` computed without the app: an independent oracle."""
    import ui.cache

    subject = ui.cache.subject("zoo:digits-cnn", None)
    pruned = subject.prune(plan)
    accuracy, _ = evaluate_torch(pruned, subject.data.test)
    nonzero = sum(int(torch.count_nonzero(p)) for p in pruned.parameters())
    total = sum(p.numel() for p in pruned.parameters())
    return {
        "Accuracy": f"{100 * accuracy:.2f} %",
        "Nonzero params": f"{nonzero:,}",
        "Parameters": f"{total:,}",
    }


def test_two_sessions_never_see_each_others_numbers() -> None:
    alice, bob = open_app("prune"), open_app("prune")
    bob.selectbox(key="prune.method").set_value("l2-structured").run()
    for a, b in ((20, 25), (50, 40), (70, 60)):
        alice.slider(key="prune.ratio.features.11").set_value(a).run()
        bob.slider(key="prune.ratio.features.7").set_value(b).run()
        alice.run()  # a rerun after the other session worked must still show alice's plan
        want_a = _expected(PruningPlan("l1-unstructured", {"features.11": LayerRule(a / 100)}))
        want_b = _expected(PruningPlan("l2-structured", {"features.7": LayerRule(b / 100)}))
        got_a, got_b = metrics(alice), metrics(bob)
        for key, value in want_a.items():
            assert got_a[key] == value, (key, a)
        for key, value in want_b.items():
            assert got_b[key] == value, (key, b)
        assert got_a["Parameters"] != got_b["Parameters"]
    assert all("l1-unstructured" in e["summary"] for e in alice.session_state["history"])
    assert all("l2-structured" in e["summary"] for e in bob.session_state["history"])
    assert alice.slider(key="prune.ratio.features.7").value == 0
    assert bob.slider(key="prune.ratio.features.11").value == 0
