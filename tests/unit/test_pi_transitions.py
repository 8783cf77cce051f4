"""The PI's transitions alone: states and messages in, new states, effects and asks out; no bus, no mind, no clock.

Each test builds a ``ProjectState`` by calling the transitions themselves
(ideas are written by hand where a mind would propose them), so what is
checked is the decision each step makes, from data alone.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.minds.base import NoteReading
from agents.pi import transitions as t
from agents.pi.state import ProjectState
from agents.reviewer.checks import seed_plan_findings
from bus.errors import MindError, MindUnavailable
from bus.schema import (
    BASELINE,
    AnalysisDone,
    AnalysisReport,
    ArchiveRecord,
    Budget,
    Comparison,
    CoPINote,
    DraftReady,
    ExperimentPlanned,
    ExperimentResult,
    FinalInfo,
    Idea,
    IdeaOutcome,
    ItemResponse,
    MetaReview,
    MetricStat,
    NoveltyVerdict,
    Reference,
    ReferencesFound,
    ReviewDone,
    RevisionItem,
    RunRecord,
    StartProject,
    StepFailed,
    Usage,
    signature_of,
)
from bus.schema.analysis import SeedPlan
from tests.fakes import TOY_SPEC

T0 = 1000.0
DRAFT = DraftReady(round=0, tex="p1/paper.tex", markdown="p1/paper.md", bib="p1/references.bib")


def idea(n: int, **changes: Any) -> Idea:
    return Idea(id=f"i{n}", title=f"idea {n}", hypothesis="h", falsification="f", changes=changes or {"width": n})


def started(direction: str = "", **budget: Any) -> t.Step:
    body = StartProject(template="toy", template_object="p1/template.tar.gz", spec=TOY_SPEC, direction=direction, seed=7,
                        budget=Budget(**{"max_ideas": 2, "max_runs": 10, "max_revision_rounds": 1, "wall_time_s": 600, **budget}))
    return t.start(None, body, "p1", T0)


def kinds(step: t.Step) -> list[str]:
    return [f"{b.type}->{to}" for b, to in step.sent]


def runs(exp: str, arm: str, values: list[float], seeds: list[int] | None = None, ok: bool = True) -> ExperimentResult:
    seeds = seeds or list(range(len(values)))
    fi = FinalInfo(metrics={"loss": MetricStat(mean=sum(values) / len(values), stderr=0.1, values=values)}, seeds=seeds)
    run = RunRecord(job_id=f"j-{exp}", experiment_id=exp, idea_id=arm, overrides={}, seeds=seeds,
                    status="succeeded" if ok else "failed", final_info=fi if ok else None, reason="" if ok else "crashed")
    return ExperimentResult(experiment_id=exp, idea_id=arm, runs=[run])


def exp_of(st: ProjectState, arm: str) -> str:
    return [e.experiment_id for e in st.experiments.values() if e.idea_id == arm][-1]


def checking(*ideas: Idea, **budget: Any) -> ProjectState:
    """A started project whose first wave proposed ``ideas`` (all now in the novelty check)."""
    return t.wave_proposed(started(**budget).state, list(ideas), take=len(ideas)).state


def to_analysis(**budget: Any) -> ProjectState:
    """One idea ran beside the baseline, and the idea budget is spent: the project waits for its analysis."""
    st = checking(idea(4), **{"max_ideas": 1, **budget})
    st = t.verdict(st, NoveltyVerdict(idea_id="i4", novel=True, justification="new"), T0).state
    st = t.result(st, runs(exp_of(st, BASELINE), BASELINE, [1.0, 1.1, 0.9]), T0).state
    st = t.result(st, runs(exp_of(st, "i4"), "i4", [0.5, 0.6, 0.4]), T0).state
    assert st.stage == "analysis"
    return st


def report(round_: int = 0, comparisons: list[Comparison] | None = None) -> AnalysisReport:
    return AnalysisReport(project="p1", round=round_, primary_metric="loss", comparisons=comparisons or [], runs=[])


def to_review(**budget: Any) -> ProjectState:
    st = t.analysis_done(to_analysis(**budget), AnalysisDone(report=report()), when=T0).state
    return t.draft_ready(st, DRAFT).state


def revise(*items: RevisionItem) -> ReviewDone:
    return ReviewDone(round=0, reviews=[], meta=MetaReview(summary="s", overall=5, decision="revise", revision_items=list(items)))


# ------------------------------------------------------------ direction → ideas


def test_start_asks_for_the_baseline_and_the_first_wave_at_the_time_given():
    step = started(direction="make it faster")
    st = step.state
    assert st.project == "p1" and st.started_at == T0 and st.stage == "experiments" and st.wave == 1
    assert kinds(step) == ["project_estimate->copi", "experiment_request->engineer"]  # every project's estimate, then the baseline
    _, (request, _) = step.sent
    assert request.idea is None and request.seeds == [0, 1, 2] and request.experiment_id == "x01-baseline"
    assert step.ask == t.ProposeIdeas(take=2) and step.ask.n == 2 * t.PROPOSALS_PER_IDEA


def test_a_second_start_changes_nothing():
    st = started().state
    again = t.start(st, StartProject(template="other", template_object="x", spec=TOY_SPEC), "p1", T0 + 5)
    assert again.state == st and again.sent == [] and again.ask is None
    assert again.effects == [t.Log("info", "project already started", {"stage": "experiments"})]


def test_the_idea_context_shows_the_mind_the_project_and_a_seed_per_wave():
    st = started(direction="please replicate the old result").state
    ctx = t.idea_context(st, 4)
    assert ctx.n == 4 and ctx.seed == 7 + 1 and ctx.direction == "please replicate the old result"
    assert ctx.repeat_ok and ctx.previous == [] and ctx.baseline_wall_s is None


def test_a_wave_keeps_fresh_ideas_ranks_them_and_sends_the_best_to_the_novelty_check():
    st = started().state
    prior = [ArchiveRecord(template="toy", signature=signature_of(idea(9, lr=0.5)), project="old", recorded_at=1.0,
                           outcome=IdeaOutcome(idea_id="o", title="o", changes={"lr": 0.5}, status="failed"))]
    st = t.with_prior(st, prior + [prior[0].model_copy(update={"project": "p1"})])
    assert [r.project for r in st.prior] == ["old"]  # its own records are not "prior"
    dull = idea(2).model_copy(update={"interestingness": 1, "feasibility": 1, "novelty": 1})
    good = idea(3).model_copy(update={"interestingness": 9})
    proposals = [dull, idea(9, lr=0.5), idea(5), good, idea(6, width=5), Idea(**{**idea(1).model_dump(), "id": BASELINE})]
    step = t.wave_proposed(st, proposals, take=2)
    # Tried by an earlier project, the same change twice, the baseline's id: not proposed again; the dull one is dropped.
    assert kinds(step) == ["novelty_check->literature", "novelty_check->literature"]
    assert [b.idea.id for b, _ in step.sent] == ["i3", "i5"]
    assert {i: s.status for i, s in step.state.ideas.items()} == {"i3": "checking", "i5": "checking"}
    assert t.Log("info", "ideas dropped under the score floor", {"dropped": {"i2": "feasibility 1 < 3"}}) in step.effects


def test_a_direction_that_asks_to_repeat_lets_the_archive_ideas_back_in():
    st = started(direction="rerun what worked last time").state
    prior = [ArchiveRecord(template="toy", signature=signature_of(idea(9, lr=0.5)), project="old", recorded_at=1.0,
                           outcome=IdeaOutcome(idea_id="o", title="o", changes={"lr": 0.5}, status="failed"))]
    step = t.wave_proposed(t.with_prior(st, prior), [idea(9, lr=0.5)], take=1)
    assert list(step.state.ideas) == ["i9"]


def test_a_wave_that_keeps_nothing_moves_on_only_when_nothing_is_outstanding():
    st = started().state
    waiting = t.wave_proposed(st, [], take=2)
    assert waiting.sent == [] and waiting.state.stage == "experiments"  # the baseline still runs
    st = t.result(st, runs("x01-baseline", BASELINE, [1, 1, 1]), T0).state
    # (The result asked for another wave; the mind has nothing new.)
    step = t.wave_proposed(st, [], take=2)
    assert kinds(step) == ["analysis_request->analyst"] and step.state.stage == "analysis"


def test_a_mind_that_is_down_ends_the_project_once_the_runs_in_flight_are_in():
    st = started().state
    failed = t.wave_failed(st, MindUnavailable("endpoint down"))
    assert failed.sent == [] and failed.state.halt == "ideas failed: endpoint down"
    assert t.Log("error", "no ideas: the mind failed", {"reason": "endpoint down"}) in failed.effects
    step = t.result(failed.state, runs("x01-baseline", BASELINE, [1, 1, 1]), T0)
    assert kinds(step) == ["decision->all"] and step.ask is None
    assert step.state.stage == "failed" and step.state.outcome == "ideas failed: endpoint down"


def test_a_mind_that_fails_once_does_not_halt_the_project():
    st = t.result(started().state, runs("x01-baseline", BASELINE, [1, 1, 1]), T0).state
    step = t.wave_failed(st, MindError("bad json"))
    assert step.state.halt == "" and kinds(step) == ["analysis_request->analyst"]


# ------------------------------------------------------------ novelty → experiments


def test_a_novel_idea_runs_a_known_one_does_not_and_references_are_kept():
    st = checking(idea(4), idea(16))
    ref = Reference(key="k1", title="t", bibtex="@misc{k1}")
    step = t.verdict(st, NoveltyVerdict(idea_id="i4", novel=True, justification="new", references=[ref]), T0)
    assert kinds(step) == ["experiment_request->engineer"] and step.state.ideas["i4"].status == "running"
    assert step.sent[0][0].seeds == [0, 1, 2] and "k1" in step.state.references
    known = t.verdict(step.state, NoveltyVerdict(idea_id="i16", novel=False, justification="done by X"), T0)
    assert known.sent == [] and known.state.ideas["i16"].status == "not_novel" and known.state.ideas["i16"].reason == "done by X"
    # The transition changed copies: the states it was given are as they were.
    assert st.ideas["i4"].status == "checking" and step.state.ideas["i16"].status == "checking"
    # A second verdict on an idea already judged changes nothing.
    again = t.verdict(known.state, NoveltyVerdict(idea_id="i16", novel=True, justification="?"), T0)
    assert again.state == known.state and again.sent == []


def test_a_novel_idea_is_skipped_once_the_run_budget_is_spent():
    st = checking(idea(4), max_runs=1)  # the baseline used the only run
    step = t.verdict(st, NoveltyVerdict(idea_id="i4", novel=True, justification="new"), T0)
    assert step.sent == [] and step.state.ideas["i4"].status == "skipped" and step.state.ideas["i4"].reason == "run budget spent"


def test_once_the_runs_are_in_the_next_wave_is_asked_for_while_ideas_are_left():
    st = checking(idea(4), max_ideas=3)
    st = t.verdict(st, NoveltyVerdict(idea_id="i4", novel=False, justification="known"), T0).state
    step = t.result(st, runs("x01-baseline", BASELINE, [1, 1, 1]), T0)
    assert step.ask == t.ProposeIdeas(take=2) and step.state.wave == 2 and step.sent == []


def test_not_novel_ideas_leave_the_budget_but_proposals_are_capped_at_three_times_it():
    st = started(max_ideas=1).state
    st = t.result(st, runs("x01-baseline", BASELINE, [1, 1, 1]), T0).state
    for n in (4, 16, 6):
        st = t.wave_proposed(st, [idea(n)], take=1).state
        step = t.verdict(st, NoveltyVerdict(idea_id=f"i{n}", novel=False, justification="known"), T0)
        st = step.state
    assert len(st.ideas) == 3 and step.ask is None and kinds(step) == ["analysis_request->analyst"]


def test_wall_time_spent_stops_new_waves():
    st = checking(idea(4), max_ideas=4, wall_time_s=60)
    st = t.verdict(st, NoveltyVerdict(idea_id="i4", novel=False, justification="known"), T0).state
    in_time = t.result(st, runs("x01-baseline", BASELINE, [1, 1, 1]), T0 + 60)
    late = t.result(st, runs("x01-baseline", BASELINE, [1, 1, 1]), T0 + 61)
    assert isinstance(in_time.ask, t.ProposeIdeas)
    assert late.ask is None and kinds(late) == ["analysis_request->analyst"]


def test_failed_runs_fail_the_idea_and_a_failed_baseline_ends_the_project():
    st = checking(idea(4), max_ideas=1)
    st = t.verdict(st, NoveltyVerdict(idea_id="i4", novel=True, justification="new"), T0).state
    st = t.result(st, runs(exp_of(st, "i4"), "i4", [0, 0, 0], ok=False), T0).state
    assert st.ideas["i4"].status == "failed" and st.ideas["i4"].reason == "crashed"
    step = t.result(st, runs("x01-baseline", BASELINE, [0, 0, 0], ok=False), T0)
    assert kinds(step) == ["decision->all"] and step.state.stage == "failed"
    assert "baseline failed" in step.state.outcome and step.state.accepted is False


def test_a_rejected_plan_fails_its_experiment_and_idea():
    st = checking(idea(4), max_ideas=1)
    st = t.verdict(st, NoveltyVerdict(idea_id="i4", novel=True, justification="new"), T0).state
    exp = exp_of(st, "i4")
    accepted = t.planned(st, ExperimentPlanned(experiment_id=exp, idea_id="i4", overrides={}, job_ids=["j"]), T0)
    assert accepted.state == st
    step = t.planned(st, ExperimentPlanned(experiment_id=exp, idea_id="i4", overrides={}, job_ids=[], rejected="width out of range"), T0)
    assert step.state.experiments[exp].status == "failed" and step.state.ideas["i4"].status == "failed"
    assert step.state.ideas["i4"].reason == "width out of range"


def test_a_failed_step_fails_its_part_or_ends_the_project():
    st = checking(idea(4), idea(16), max_ideas=2)
    st = t.verdict(st, NoveltyVerdict(idea_id="i4", novel=True, justification="new"), T0).state
    step = t.step_failed(st, StepFailed(step="novelty_check", reason="no sources", ref="i16"), T0)
    assert step.state.ideas["i16"].status == "skipped" and step.state.ideas["i16"].reason == "novelty check failed: no sources"
    assert step.effects[0] == t.Log("warning", "step failed", {"step": "novelty_check", "reason": "no sources", "ref": "i16"})
    step = t.step_failed(step.state, StepFailed(step="experiment", reason="no engineer", ref=exp_of(st, "i4")), T0)
    assert step.state.ideas["i4"].status == "failed"
    ended = t.step_failed(to_analysis(), StepFailed(step="analysis", reason="model down"), T0)
    assert kinds(ended) == ["decision->all"] and ended.state.stage == "failed" and ended.state.outcome == "analysis failed: model down"


# ------------------------------------------------------------ analysis → draft


def test_the_analysis_is_archived_with_the_message_time_and_the_draft_requested():
    st = to_analysis()
    assert t.analysis_done(st, AnalysisDone(report=report(round_=1)), when=5.0).state == st  # another round's report
    step = t.analysis_done(st, AnalysisDone(report=report()), when=5.0)
    remembered = [e.record for e in step.effects if isinstance(e, t.Remember)]
    assert [(r.project, r.recorded_at, r.outcome.idea_id, r.outcome.source) for r in remembered] == [("p1", 5.0, "i4", "runs")]
    assert kinds(step) == ["draft_request->writer"] and step.state.stage == "draft"
    assert step.sent[0][0].ideas == [step.state.ideas["i4"].idea]


def significant(idea_id: str) -> Comparison:
    return Comparison(idea_id=idea_id, metric="loss", direction="lower", baseline_mean=1.0, baseline_stderr=0.1, idea_mean=0.5,
                      idea_stderr=0.1, n_baseline=3, n_idea=3, diff=-0.5, improvement=0.5, ci_low=0.3, ci_high=0.7,
                      p_value=0.001, effect_size=3.0, better=True, verdict="better", p_adjusted=0.002)


def test_a_significant_finding_is_confirmed_on_fresh_seeds_before_the_draft():
    step = t.analysis_done(to_analysis(), AnalysisDone(report=report(comparisons=[significant("i4")])), when=5.0)
    assert kinds(step) == ["experiment_request->engineer", "experiment_request->engineer"]
    assert [b.seeds for b, _ in step.sent] == [[3, 4, 5], [3, 4, 5]]
    assert step.state.confirmed == ["i4"] and step.state.stage == "experiments"
    assert len(step.state.confirmation_ids()) == 2


def test_no_confirmation_when_the_run_budget_cannot_hold_it():
    step = t.analysis_done(to_analysis(max_runs=3), AnalysisDone(report=report(comparisons=[significant("i4")])), when=5.0)
    assert kinds(step) == ["draft_request->writer"]
    assert t.Log("warning", "no confirmation run: run budget spent", {"ideas": ["i4"], "runs_left": 1}) in step.effects


# ------------------------------------------------------------ draft → review ⇄ revision → decision


def test_the_draft_goes_to_review_for_its_round_only():
    st = t.analysis_done(to_analysis(), AnalysisDone(report=report()), when=T0).state
    assert t.draft_ready(st, DRAFT.model_copy(update={"round": 1})).state == st
    step = t.draft_ready(st, DRAFT)
    assert kinds(step) == ["review_request->reviewer"] and step.state.stage == "review" and step.state.draft == DRAFT
    assert step.sent[0][0].max_rounds == 1


def test_acceptance_asks_for_the_final_version_of_the_reviewed_draft_only():
    meta = MetaReview(summary="good", overall=6.5, decision="accept")
    step = t.review_done(to_review(), ReviewDone(round=0, reviews=[], meta=meta), T0)
    assert kinds(step) == ["draft_request->writer"] and step.state.stage == "draft"
    request = step.sent[0][0]
    assert request.final and request.reviewed == DRAFT and request.round == 0
    assert step.state.accepted is None  # not yet: the decision goes out with the final version
    assert t.draft_ready(step.state, DRAFT.model_copy(update={"round": 1})).state == step.state  # another round's: ignored


def test_acceptance_ends_the_project_with_the_final_version_and_stores_the_reviews():
    meta = MetaReview(summary="good", overall=6.5, decision="accept")
    st = t.review_done(to_review(), ReviewDone(round=0, reviews=[], meta=meta), T0).state
    final = DRAFT.model_copy(update={"markdown": "p1/paper/final/paper.md"})
    step = t.draft_ready(st, final)
    assert [type(e).__name__ for e in step.effects] == ["PutArtifact", "Send", "Log"]
    put = step.effects[0]
    assert isinstance(put, t.PutArtifact) and put.name == "p1/review.json" and json.loads(put.data)[0]["meta"]["decision"] == "accept"
    decision = step.sent[0][0]
    assert decision.accepted and decision.review_object == "p1/review.json" and decision.paper == final
    assert step.state.stage == "done" and step.state.outcome == "accepted in round 0 (meta-review overall 6.5)"


def test_rejection_ends_the_project_not_accepted():
    step = t.review_done(to_review(), ReviewDone(round=0, reviews=[], meta=MetaReview(summary="weak", overall=2, decision="reject")), T0)
    assert step.state.stage == "done" and step.state.accepted is False and step.state.outcome == "rejected in round 0: weak"


def test_revise_asks_the_mind_to_answer_within_the_budget():
    item = RevisionItem(id="r0-1", kind="other", text="x")
    step = t.review_done(to_review(), revise(item), T0)
    assert step.sent == [] and isinstance(step.ask, t.AnswerReview)
    assert step.ask.context.items == [item] and step.ask.context.runs_left == 10 - 2 and step.ask.context.rounds_left == 1


@pytest.mark.parametrize(("budget", "now", "why"), [({"max_revision_rounds": 0}, T0, "revision rounds spent"),
                                                    ({"wall_time_s": 60}, T0 + 61, "wall time spent")])
def test_revise_with_the_budget_spent_ends_the_project(budget, now, why):
    step = t.review_done(to_review(**budget), revise(RevisionItem(id="r0-1", kind="other", text="x")), now)
    assert kinds(step) == ["decision->all"] and step.ask is None
    assert step.state.outcome == f"not accepted: {why} with 1 items open" and step.state.stage == "done"


def test_answers_to_a_review_send_a_rebuttal_more_seeds_and_a_reference_search():
    st = to_review()
    items = [RevisionItem(id="r0-1", kind="more_seeds", text="more seeds", target="i4"),
             RevisionItem(id="r0-2", kind="other", text="cite prior work on width"),
             RevisionItem(id="r0-3", kind="add_limitation", text="say it is small")]
    st = t.review_done(st, revise(*items), T0).state
    answers = [ItemResponse(item_id="r0-1", action="act", text="ran 3 more"), ItemResponse(item_id="r0-2", action="act", text="cited"),
               ItemResponse(item_id="r0-3", action="rebut", text="it says so")]
    step = t.review_answered(st, items, answers, T0)
    assert kinds(step) == ["rebuttal->reviewer", "experiment_request->engineer", "experiment_request->engineer", "reference_search->literature"]
    rebuttal, more, base = (b for b, _ in step.sent[:3])
    assert rebuttal.round == 0 and rebuttal.responses == answers
    assert more.idea.id == "i4" and base.idea is None and more.seeds == base.seeds == [3, 4, 5]
    assert step.state.round == 1 and step.state.stage == "experiments" and step.state.citations_pending == ["r0-2"]
    # The next round's analysis waits for the runs and the references.
    st = step.state
    for exp in [e for e in st.experiments.values() if e.round == 1]:
        st = t.result(st, runs(exp.experiment_id, exp.idea_id, [1, 1, 1], [3, 4, 5]), T0).state
    assert st.stage == "experiments"
    found = t.references_found(st, ReferencesFound(item_id="r0-2", references=[Reference(key="k9", title="t", bibtex="@misc{k9}")]), T0)
    assert kinds(found) == ["analysis_request->analyst"] and found.sent[0][0].round == 1
    assert found.state.responses[1].text == "cited (added k9)" and found.state.responses[1].action == "act"


def test_more_seeds_runs_each_arm_up_to_the_number_the_item_asks_for():
    """Found running README command 1: the reviewer asked for the seed plan's 10 per arm and the PI ran 3 more each round,
    so the rounds ran out with the plan unmet. An ask with a number takes each arm up to it, in one round."""
    st = to_review()
    items = [RevisionItem(id="r0-1", kind="more_seeds", text="Run `i4` up to 10 seeds.", target="i4", seeds=10)]
    st = t.review_done(st, revise(*items), T0).state
    step = t.review_answered(st, items, [ItemResponse(item_id="r0-1", action="act", text="running")], T0)
    _, more, base = (b for b, _ in step.sent)
    assert more.seeds == base.seeds == list(range(3, 10))
    assert step.sent[0][0].responses[0].text == "running"  # nothing cut short, nothing added to the answer


def test_a_seeds_ask_over_the_per_arm_limit_runs_to_the_limit_and_says_so_then_rebuts():
    st = to_review(max_seeds_per_arm=6)
    items = [RevisionItem(id="r0-1", kind="more_seeds", text="Run `i4` up to 37 seeds.", target="i4", seeds=37)]
    st = t.review_done(st, revise(*items), T0).state
    step = t.review_answered(st, items, [ItemResponse(item_id="r0-1", action="act", text="running")], T0)
    _, more, base = (b for b, _ in step.sent)
    assert more.seeds == base.seeds == [3, 4, 5]
    (answer,) = step.sent[0][0].responses
    assert answer.action == "act" and "up to 6 seeds per arm" in answer.text and "of the 37 asked" in answer.text
    assert step.state.responses == [answer]
    # The next round asks again; the arms are at the limit, so nothing runs and the answer is a rebuttal naming it.
    st = step.state
    for exp in [e for e in st.experiments.values() if e.round == 1]:
        st = t.result(st, runs(exp.experiment_id, exp.idea_id, [1, 1, 1], [3, 4, 5]), T0).state
    st.stage, st.revision_items = "review", []
    items = [RevisionItem(id="r1-1", kind="more_seeds", text="Run `i4` up to 37 seeds.", target="i4", seeds=37)]
    st = t.review_done(st, revise(*items), T0).state
    step = t.review_answered(st, items, [ItemResponse(item_id="r1-1", action="act", text="running")], T0)
    assert "experiment_request->engineer" not in kinds(step)
    (answer,) = step.sent[0][0].responses
    assert answer.action == "rebut" and "max_seeds_per_arm" in answer.text


def test_more_seeds_on_a_template_that_runs_its_own_seeds_is_rebutted_not_rerun():
    """An AI Scientist template ignores the seed list: a re-run would only repeat seeds 0..n-1 (duplicates, no new evidence)."""
    st = to_review()
    st.spec = st.spec.model_copy(update={"fixed_seeds": True})
    items = [RevisionItem(id="r0-1", kind="more_seeds", text="more seeds", target="i4"),
             RevisionItem(id="r0-2", kind="add_limitation", text="say it is small")]
    st = t.review_done(st, revise(*items), T0).state
    answers = [ItemResponse(item_id="r0-1", action="act", text="ran 3 more"), ItemResponse(item_id="r0-2", action="act", text="said")]
    step = t.review_answered(st, items, answers, T0)
    assert "experiment_request->engineer" not in kinds(step) and kinds(step)[0] == "rebuttal->reviewer"
    seeds, limitation = step.sent[0][0].responses
    assert seeds.action == "rebut" and "runs its own seeds" in seeds.text and limitation == answers[1]
    assert step.state.responses == [seeds, limitation]  # what the writer's revision notes say


def test_a_citation_promise_with_nothing_new_to_cite_becomes_a_rebuttal():
    items = [RevisionItem(id="r0-1", kind="add_citation", text="more references")]
    st = t.review_done(to_review(), revise(*items), T0).state
    st = t.review_answered(st, items, [ItemResponse(item_id="r0-1", action="act", text="will cite")], T0).state
    step = t.references_found(st, ReferencesFound(item_id="r0-1", reason="nothing in 2 sources"), T0)
    (response,) = step.state.responses
    assert response.action == "rebut" and "nothing in 2 sources" in response.text
    assert kinds(step) == ["analysis_request->analyst"]
    assert t.references_found(step.state, ReferencesFound(item_id="r0-1"), T0).state == step.state  # answered already


def test_the_second_round_is_accepted_after_a_revision():
    items = [RevisionItem(id="r0-1", kind="add_limitation", text="small")]
    st = t.review_done(to_review(), revise(*items), T0).state
    st = t.review_answered(st, items, [ItemResponse(item_id="r0-1", action="act", text="said")], T0).state
    assert st.stage == "analysis" and st.round == 1  # nothing to run: straight to the analysis
    st = t.analysis_done(st, AnalysisDone(report=report(1)), when=T0).state
    st = t.draft_ready(st, DRAFT.model_copy(update={"round": 1})).state
    st = t.review_done(st, ReviewDone(round=1, reviews=[], meta=MetaReview(summary="ok", overall=7, decision="accept")), T0).state
    step = t.draft_ready(st, DRAFT.model_copy(update={"round": 1, "markdown": "p1/paper/final/paper.md"}))
    assert step.state.accepted and step.sent[0][0].rounds == 1


# ------------------------------------------------------------ budgets and the co-PI


def test_spend_past_the_token_or_money_budget_ends_the_project_once():
    st = started(max_tokens=100, max_cost_usd=1.0).state
    under = t.usage_reported(st, "pi", Usage(prompt_tokens=60))
    assert under.sent == [] and under.state.usage["pi"].prompt_tokens == 60
    over = t.usage_reported(under.state, "writer", Usage(completion_tokens=50, cost_usd=2.0))
    assert kinds(over) == ["decision->all"] and over.state.stage == "failed"
    assert over.state.outcome == "token budget spent (110 > 100)"
    assert t.usage_reported(over.state, "writer", Usage(cost_usd=3.0)).sent == []  # ended already


def test_a_note_is_taken_once_and_its_constraints_kept():
    st = started().state
    note = t.new_note(st, CoPINote(id="n1", text="Only vary the width"))
    assert note is not None and note.received_at is None
    step = t.note_read(st, note, NoteReading(understood="only width", constraints={"allowed_knobs": ["width"]}))
    # "only vary the width" is a request too: a width run now, and the answer names its experiment.
    assert kinds(step) == ["experiment_request->engineer", "note_ack->copi"] and step.state.constraints == {"allowed_knobs": ["width"]}
    assert step.sent[1][0].understood.startswith("only width; scheduled as experiment x02-copi-width-")
    assert t.idea_context(step.state, 1).constraints == {"allowed_knobs": ["width"]}
    assert t.new_note(step.state, note) is None  # a redelivery


def test_a_note_not_understood_is_said_so():
    st = started().state
    note = CoPINote(id="n2", text="prettier")
    step = t.note_read(st, note, NoteReading(understood="not understood", parsed=False))
    assert t.Log("warning", "co-PI note not understood", {"note": "prettier", "answer": "not understood"}) in step.effects
    assert step.state.constraints == {} and step.state.notes == [note]


def test_the_co_pi_can_stop_the_project_and_late_answers_change_nothing():
    st = started().state
    step = t.note_read(st, CoPINote(id="n1", text="stop"), NoteReading(understood="stopping", constraints={"stop": True}))
    assert kinds(step) == ["note_ack->copi", "decision->all"]
    assert step.state.stage == "failed" and step.state.outcome == "stopped by the co-PI: 'stop'"
    late = t.result(step.state, runs("x01-baseline", BASELINE, [1, 1, 1]), T0)
    assert late.sent == [] and late.ask is None and late.state.stage == "failed"
    again = t.note_read(step.state, CoPINote(id="n3", text="stop!"), NoteReading(understood="stopping", constraints={"stop": True}))
    assert kinds(again) == ["note_ack->copi"]  # one decision only


def test_finish_stores_no_reviews_when_there_were_none():
    step = t.finish(started().state, accepted=False, reason="why", failed=True)
    assert [type(e).__name__ for e in step.effects] == ["Send", "Log"] and step.sent[0][0].review_object is None


def test_asks_repeat_and_wants_references_read_words():
    assert t.asks_repeat("reproduce it") and not t.asks_repeat("never repeat ideas")
    assert t.wants_references(RevisionItem(id="r", kind="other", text="Cite the prior work"))
    assert not t.wants_references(RevisionItem(id="r", kind="other", text="fix the figure"))


def planned_report(round_: int, sd: float, seeds: int) -> AnalysisReport:
    inconclusive = significant("i4").model_copy(update={"verdict": "inconclusive", "better": False, "p_value": 0.4, "p_adjusted": 0.4})
    plan = SeedPlan(metric="loss", baseline_sd=sd, min_detectable_effect=0.1, power=0.8, alpha=0.05, seeds=seeds)
    return report(round_, [inconclusive]).model_copy(update={"seed_plan": plan})


def test_the_seed_plan_is_fixed_at_the_first_look_and_capped_by_the_budget():
    """Found running README command 1: the plan was redone from each round's variance, so the ask grew (10, then 75)."""
    st = to_analysis()
    first = t.analysis_done(st, AnalysisDone(report=planned_report(0, sd=0.05, seeds=10)), when=T0)
    st = first.state
    st.stage, st.round = "analysis", 1  # the next round's runs are in; its baseline is noisier
    later = t.analysis_done(st, AnalysisDone(report=planned_report(1, sd=0.4, seeds=75)), when=T0)
    plans = [step.sent[0][0].report.seed_plan for step in (first, later)]
    assert plans[0] == plans[1] == later.state.report.seed_plan and plans[1].seeds == 10 and plans[1].baseline_sd == 0.05
    asks = [[f.text for f in seed_plan_findings(step.state.report)] for step in (first, later)]
    assert asks[0] == asks[1] and all("up to 10 seeds" in a for a in asks[0])
    capped = t.analysis_done(to_analysis(max_seeds_per_arm=20), AnalysisDone(report=planned_report(0, sd=0.4, seeds=75)), when=T0)
    assert (capped.state.seed_plan.seeds, capped.state.seed_plan.needed) == (20, 75)


def test_a_seeds_ask_counts_the_arms_pooled_seeds_not_their_confirmation_seeds():
    """Found running README command 1: after a confirmation on seeds 3-5, "up to 10" added 4 seeds (3 + 3 + 4), so the
    comparison pooled 7 baseline seeds. The confirmation's seeds are analysed apart: the arms get 7 more, none of them 3-5."""
    st = t.analysis_done(to_analysis(), AnalysisDone(report=report(comparisons=[significant("i4")])), when=T0).state
    for exp in [e for e in st.experiments.values() if e.confirmation]:
        st = t.result(st, runs(exp.experiment_id, exp.idea_id, [0.5, 0.6, 0.4], [3, 4, 5]), T0).state
    replicated = significant("i4").model_copy(update={"replicated": True})
    st = t.draft_ready(t.analysis_done(st, AnalysisDone(report=report(comparisons=[replicated])), when=T0).state, DRAFT).state
    items = [RevisionItem(id="r0-1", kind="more_seeds", text="Run `i4` up to 10 seeds.", target="i4", seeds=10)]
    st = t.review_done(st, revise(*items), T0).state
    step = t.review_answered(st, items, [ItemResponse(item_id="r0-1", action="act", text="running")], T0)
    _, more, base = (b for b, _ in step.sent)
    assert more.seeds == base.seeds == list(range(6, 13))
    pooled = {s for e in step.state.experiments.values() if e.idea_id == BASELINE and not e.confirmation for s in e.seeds}
    assert len(pooled) == 10


def test_a_seeds_ask_after_a_failed_top_up_runs_the_arms_up_on_seeds_not_tried():
    """Found running README command 1 on a loaded machine: each arm's 7-seed top-up timed out, leaving it at 3 seeds,
    yet the seeds it had tried counted, so a later ask for 10 would have run nothing."""
    st = to_review()
    items = [RevisionItem(id="r0-1", kind="more_seeds", text="Run `i4` up to 10 seeds.", target="i4", seeds=10)]
    st = t.review_answered(t.review_done(st, revise(*items), T0).state, items, [ItemResponse(item_id="r0-1", action="act", text="ok")], T0).state
    for exp in [e for e in st.experiments.values() if e.round == 1]:
        st = t.result(st, runs(exp.experiment_id, exp.idea_id, [1.0] * 7, list(range(3, 10)), ok=False), T0).state
    assert t.seeds_to_add(st, BASELINE, 10) == t.seeds_to_add(st, "i4", 10) == list(range(10, 17))
    assert t.seeds_to_add(st, BASELINE, None) == [10, 11, 12]
