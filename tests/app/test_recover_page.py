"""The Recover page: the Prune page's plan goes through BN recalibration, fine-tuning and int8;
every
stage is shown next to dense and recorded in the session history."""

from __future__ import annotations

from apphelpers import open_app


def test_recover_asks_for_a_plan_first() -> None:
    at = open_app("recover")
    assert any("set ratios on the Prune page" in i.value for i in at.info)


def test_loop_measures_every_stage_and_records_them() -> None:
    at = open_app("prune")
    at.selectbox(key="prune.method").set_value("l1-structured").run()
    for layer in ("features.3", "features.7", "features.11"):
        at.slider(key=f"prune.ratio.{layer}").set_value(50).run()
    assert not at.exception
    at.switch_page("pages/recover.py").run()
    assert not at.exception
    at.slider(key="recover.epochs").set_value(2).run()
    at.selectbox(key="recover.int8").set_value("static").run()
    at.button(key="recover.run").click().run(timeout=300)
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["stage"]) == [
        "dense",
        "pruned",
        "BN recalibrated",
        "fine-tuned",
        "int8 (static)",
    ]
    # Structured pruning shrank the model; int8 shrank the file again; the fine-tuned model kept its
    # zeros.
    assert table["params_nonzero"].iloc[1] < table["params_nonzero"].iloc[0]
    assert table["params_nonzero"].iloc[3] == table["params_nonzero"].iloc[1]
    # Recalibration and fine-tuning win back accuracy that pruning cost (measured, not assumed
    # equal).
    assert table["accuracy"].iloc[3] >= table["accuracy"].iloc[1]
    history = [e["summary"] for e in at.session_state["history"]]
    assert any(s.endswith("+ fine-tuned") for s in history)
    assert any("+ int8 (static)" in s for s in history)
    assert len(at.get("plotly_chart")) == 2  # stage bars and the fine-tuning curve


def test_a_schedule_runs_from_the_page_with_its_steps() -> None:
    at = open_app()
    at.selectbox[0].set_value("zoo:digits-mlp")  # the small MLP: seconds per epoch
    at.button[0].click().run()
    at.switch_page("pages/prune.py").run()
    at.selectbox(key="prune.method").set_value("l1-unstructured").run()
    for layer in ("hidden.0", "hidden.2"):
        at.slider(key=f"prune.ratio.{layer}").set_value(60).run()
    at.switch_page("pages/recover.py").run()
    assert not at.exception
    at.selectbox(key="recover.schedule").set_value("iterative").run()
    assert not at.exception
    at.number_input(key="recover.schedule.iterative.rounds").set_value(2).run()
    at.number_input(key="recover.schedule.iterative.epochs").set_value(1).run()
    at.button(key="recover.run").click().run(timeout=300)
    assert not at.exception, at.exception
    stages = list(at.dataframe[0].value["stage"])
    assert stages == ["dense", "pruned", "iterative"]
    steps = at.dataframe[1].value  # the schedule's steps, below the stages
    assert list(steps.loc[steps.phase == "prune", "round"]) == [1, 2]
    # the schedule ends at the one-shot plan's sparsity: the same nonzero weights as "pruned"
    assert (
        at.dataframe[0].value["params_nonzero"].iloc[2]
        == at.dataframe[0].value["params_nonzero"].iloc[1]
    )
    assert steps.phase.iloc[-1] == "final"
    assert (
        abs(steps.sparsity.iloc[-1] - steps.target.iloc[-1]) < 0.01
    )  # percent; whole weights per layer
    assert len(at.get("plotly_chart")) == 2  # stage bars and the schedule's steps
    assert any("+ iterative" in e["summary"] for e in at.session_state["history"])
    assert [b.label for b in at.get("download_button")] == ["Download the plan with this schedule"]
