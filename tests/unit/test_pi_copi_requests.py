"""A co-PI request is scheduled as a run or refused with the reason, never acknowledged and dropped; the positive control."""

from __future__ import annotations

from agents.pi import transitions as t
from agents.pi.offline import OfflinePIMind
from agents.pi.state import ExperimentState
from agents.templates import load
from bus.schema import AnalysisDone, AnalysisReport, Budget, CoPINote, StartProject

_, CHAR_LM = load("char_lm")


def started(max_runs: int = 12, **budget: object) -> t.Step:
    body = StartProject(template="char_lm", template_object="p1/t.tar.gz", spec=CHAR_LM, seed=1,
                        budget=Budget(max_ideas=3, max_runs=max_runs, **budget), fast=True, profile="fast")  # type: ignore[arg-type]
    return t.start(None, body, "p1", 0.0)


async def say(step: t.Step, text: str, n: int = 1) -> t.Step:
    note = CoPINote(id=f"n{n}", text=text)
    reading = await OfflinePIMind(0).read_note(note, CHAR_LM)
    return t.note_read(step.state, note, reading, 1.0)


def answer(step: t.Step) -> str:
    [ack] = [b for b, to in step.sent if b.type == "note_ack"]
    return str(ack.understood)


async def test_an_lr_request_within_budget_becomes_an_experiment_with_that_override() -> None:
    step = await say(started(), "only vary the learning rate: try lr 0.001")
    [req] = [b for b, to in step.sent if b.type == "experiment_request"]
    assert req.idea.changes == {"lr": 0.001} and req.seeds == [0, 1, 2] and req.profile == "fast"
    assert step.state.constraints == {"allowed_knobs": ["lr"]}
    assert f"scheduled as experiment {req.experiment_id}" in answer(step) and "baseline lr=0.003" in answer(step)
    assert step.state.ideas[req.idea.id].asked_by_copi and step.state.ideas[req.idea.id].status == "running"


async def test_only_vary_the_learning_rate_runs_the_next_lr_value_and_smaller_goes_below_the_baseline() -> None:
    step = await say(started(), "only vary the learning rate")
    [req] = [b for b, to in step.sent if b.type == "experiment_request"]
    assert set(req.idea.changes) == {"lr"} and req.idea.changes["lr"] != 0.003
    step = await say(started(), "please try a smaller learning rate")
    [req] = [b for b, to in step.sent if b.type == "experiment_request"]
    assert req.idea.changes["lr"] < 0.003


async def test_a_request_past_the_budget_is_answered_with_the_budget_line() -> None:
    st = started().state
    for i in range(12 - st.runs_used):  # the other runs of the project, already spent
        st.experiments[f"x{i + 10}-filler"] = ExperimentState(experiment_id=f"x{i + 10}-filler", idea_id="filler", seeds=[0], round=0)
    step = await say(t.Step(st), "try lr 0.001")
    assert [b.type for b, _ in step.sent] == ["note_ack"]
    assert answer(step) == "a run with lr=0.001; refused a run with lr=0.001: budget spent: 12/12 runs; `lab say 'raise runs to 18'` to allow it"
    logged = [e.fields for e in step.effects if isinstance(e, t.Log) and e.event == "co-PI request refused"]
    assert logged and "budget spent: 12/12 runs" in logged[0]["reason"]
    # Raising the budget lets the same request run.
    raised = await say(step, "raise runs to 18", 2)
    assert raised.state.budget.max_runs == 18 and "raised from 12 to 18" in answer(raised)
    again = await say(raised, "try lr 0.001", 3)
    assert [b.type for b, _ in again.sent] == ["experiment_request", "note_ack"]


async def test_raise_runs_stays_within_the_hard_limit() -> None:
    step = started(max_runs=12)
    assert step.state.budget.max_runs_limit == 24  # twice the budget the project started with
    past = await say(step, "raise runs to 30")
    assert past.state.budget.max_runs == 12 and "hard limit is 24 runs" in answer(past)
    explicit = await say(started(max_runs=12, max_runs_limit=14), "raise the runs to 14")
    assert explicit.state.budget.max_runs == 14
    assert "hard limit is 14" in answer(await say(explicit, "raise runs to 15", 2))


async def test_a_request_identical_to_the_effective_baseline_is_refused() -> None:
    step = await say(started(), "try lr 0.003")
    assert [b.type for b, _ in step.sent] == ["note_ack"]
    assert "identical to the baseline as it runs under profile fast (lr=0.003)" in answer(step)


async def test_a_request_after_the_experiments_is_refused_with_the_stage() -> None:
    st = started().state
    st.stage = "review"
    step = await say(t.Step(st), "try lr 0.001")
    assert "refused" in answer(step) and "the experiments are over (stage review)" in answer(step)


def test_the_positive_control_runs_once_on_the_baselines_seeds_and_is_no_proposed_idea() -> None:
    step = started()
    requests = [b for b, _ in step.sent if b.type == "experiment_request"]
    assert [r.experiment_id for r in requests] == ["x01-baseline", "x02-positive-control"]
    base, pc = requests
    assert pc.idea.id == "positive-control" and pc.idea.changes == CHAR_LM.positive_control and pc.seeds == base.seeds
    assert "positive-control" not in step.state.ideas and step.state.runs_used == 2  # counted in the budget
    again = t.start(step.state, StartProject(template="char_lm", template_object="o", spec=CHAR_LM), "p1", 1.0)
    assert again.sent == []  # a redelivered start schedules nothing twice
    # It never reaches the paper as a proposed idea.
    st = step.state
    st.stage, st.round = "analysis", 0
    report = AnalysisReport(project="p1", primary_metric="val_loss", runs=[], comparisons=[], summary="", round=0)
    done = t.analysis_done(st, AnalysisDone(report=report), 2.0)
    drafts = [b for b, _ in done.sent if b.type == "draft_request"]
    assert drafts and all(i.id != "positive-control" for i in drafts[0].ideas)


def test_no_positive_control_without_one_declared_or_without_budget() -> None:
    plain = CHAR_LM.model_copy(update={"positive_control": {}})
    body = StartProject(template="char_lm", template_object="o", spec=plain, fast=True)
    assert [b.experiment_id for b, _ in t.start(None, body, "p1", 0.0).sent if b.type == "experiment_request"] == ["x01-baseline"]
    tight = started(max_runs=1)
    assert [b.experiment_id for b, _ in tight.sent if b.type == "experiment_request"] == ["x01-baseline"]
    assert any(isinstance(e, t.Log) and e.event == "positive control not run" for e in tight.effects)
