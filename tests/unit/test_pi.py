"""The PI's state machine alone: messages in, messages out, time under the test's control."""

from __future__ import annotations

from typing import Any

import pytest

from agents.base import Context
from agents.pi.offline import OfflinePIMind
from agents.pi.state import ProjectState
from agents.pi.workflow import PI
from bus.schema import (
    AnalysisDone,
    AnalysisReport,
    Budget,
    CoPINote,
    CoPINoteMsg,
    DraftReady,
    Envelope,
    ExperimentResult,
    FinalInfo,
    MetaReview,
    MetricStat,
    NoveltyVerdict,
    ReviewDone,
    RevisionItem,
    RunRecord,
    StartProject,
    StepFailed,
)
from tests.fakes import TOY_SPEC, MemoryStore

SPEC = TOY_SPEC


class Harness:
    """Feeds the PI one message at a time, keeping its state between them as the host would."""

    def __init__(self) -> None:
        self.pi = PI()
        self.state: ProjectState | None = None
        self.now = 1000.0
        self.store = MemoryStore()
        self.mind = OfflinePIMind()
        self.n = 0

    async def send(self, body: Any, sender: str = "copi") -> list[tuple[Any, str]]:
        self.n += 1
        env = Envelope(id=f"m{self.n}", project="p1", sender=sender, recipient="pi", body=body)
        ctx = Context(project="p1", role="pi", state=self.state, artifacts=self.store, mind=self.mind, clock=lambda: self.now)
        await self.pi.handle(env, ctx)
        self.state = ProjectState.model_validate(ctx.state.model_dump(mode="json"))  # round trip as through KV
        return ctx.outputs


def run_record(exp: str, idea: str, values: list[float], seeds: list[int] | None = None) -> RunRecord:
    seeds = seeds or list(range(len(values)))
    fi = FinalInfo(metrics={"loss": MetricStat(mean=sum(values) / len(values), stderr=0.1, values=values)}, seeds=seeds)
    return RunRecord(job_id=f"j-{exp}", experiment_id=exp, idea_id=idea, overrides={}, seeds=seeds, status="succeeded", final_info=fi)


def report(round_: int = 0) -> AnalysisReport:
    return AnalysisReport(project="p1", round=round_, primary_metric="loss", comparisons=[], runs=[])


def kinds(outputs: list[tuple[Any, str]]) -> list[str]:
    return [f"{b.type}->{to}" for b, to in outputs]


async def started(h: Harness, body: StartProject) -> list[tuple[Any, str]]:
    """What a start sends after its estimate, which every project sends the co-PI first."""
    out = await h.send(body)
    assert kinds(out[:1]) == ["project_estimate->copi"] and out[0][0].estimate == h.state.estimate
    return out[1:]


START = StartProject(
    template="toy", template_object="p1/template.tar.gz", spec=SPEC, budget=Budget(max_ideas=2, max_runs=10, max_revision_rounds=1, wall_time_s=600),
)


@pytest.mark.parametrize("final_fails", [False, True])
async def test_full_loop_with_one_revision_round(final_fails: bool):
    h = Harness()
    out = await started(h, START)
    assert kinds(out) == ["experiment_request->engineer", "novelty_check->literature", "novelty_check->literature"]
    ideas = [b.idea for b, _ in out[1:]]
    assert all("steps" not in i.changes for i in ideas), "fairness knobs are never proposed"
    baseline_exp = out[0][0].experiment_id
    assert out[0][0].idea is None and out[0][0].seeds == [0, 1, 2]

    out = await h.send(NoveltyVerdict(idea_id=ideas[0].id, novel=True, justification="nothing close"), "literature")
    assert kinds(out) == ["experiment_request->engineer"]
    idea_exp = out[0][0].experiment_id
    out = await h.send(NoveltyVerdict(idea_id=ideas[1].id, novel=False, justification="done before by X"), "literature")
    assert out == []  # waiting for experiments
    await h.send(ExperimentResult(experiment_id=baseline_exp, idea_id="baseline", runs=[run_record(baseline_exp, "baseline", [1.0, 1.1, 0.9])]), "engineer")
    out = await h.send(ExperimentResult(experiment_id=idea_exp, idea_id=ideas[0].id, runs=[run_record(idea_exp, ideas[0].id, [0.5, 0.6, 0.4])]), "engineer")
    # The not-novel idea freed a slot: one more idea is proposed before analysis.
    assert kinds(out) == ["novelty_check->literature"]
    third = out[0][0].idea
    assert third.id not in {i.id for i in ideas}
    # The winner (width 4, loss below the baseline's) is searched next to first: halfway to the baseline's 8
    # (one step past 4 would be 0, below the knob's minimum).
    assert ideas[0].changes == {"width": 4} and third.changes == {"width": 6}
    dropped = [third]
    out = await h.send(NoveltyVerdict(idea_id=third.id, novel=False, justification="known"), "literature")
    while kinds(out) == ["novelty_check->literature"]:  # still one slot: the rest of the declared space, one at a time
        dropped.append(out[0][0].idea)
        out = await h.send(NoveltyVerdict(idea_id=dropped[-1].id, novel=False, justification="known"), "literature")
    # The declared space and its one refinement are exhausted: analysis of what ran.
    assert sorted(str(i.changes) for i in dropped) == sorted(str(c) for c in ({"width": 6}, {"width": 16}, {"lr": 0.01}))
    assert kinds(out) == ["analysis_request->analyst"]
    assert len(out[0][0].runs) == 2 and h.state.wave == 5

    out = await h.send(AnalysisDone(report=report(0)), "analyst")
    assert kinds(out) == ["draft_request->writer"]
    # The paper learns which ideas were dropped as not novel, and why.
    assert out[0][0].not_novel == {ideas[1].id: "done before by X", **{i.id: "known" for i in dropped}}
    draft = DraftReady(round=0, tex="p1/paper.tex", markdown="p1/paper.md", bib="p1/references.bib")
    out = await h.send(draft, "writer")
    assert kinds(out) == ["review_request->reviewer"]

    items = [
        RevisionItem(id="r0-1", kind="more_seeds", text="more seeds please", target=ideas[0].id),
        RevisionItem(id="r0-2", kind="add_limitation", text="say it is CPU only"),
    ]
    meta = MetaReview(summary="promising", overall=5, decision="revise", revision_items=items)
    out = await h.send(ReviewDone(round=0, reviews=[], meta=meta), "reviewer")
    assert kinds(out) == ["rebuttal->reviewer", "experiment_request->engineer", "experiment_request->engineer"]
    rebuttal = out[0][0]
    assert [(r.item_id, r.action) for r in rebuttal.responses] == [("r0-1", "act"), ("r0-2", "act")]
    more = [b for b, _ in out[1:]]
    assert {b.idea.id if b.idea else "baseline" for b in more} == {ideas[0].id, "baseline"}
    assert all(b.seeds == [3, 4, 5] for b in more), "new seeds continue where the old ones stopped, three at least"

    for b in more:
        idea_id = b.idea.id if b.idea else "baseline"
        runs = [run_record(b.experiment_id, idea_id, [1.0, 0.9, 1.1], [3, 4, 5])]
        out = await h.send(ExperimentResult(experiment_id=b.experiment_id, idea_id=idea_id, runs=runs), "engineer")
    assert kinds(out) == ["analysis_request->analyst"]
    assert out[0][0].round == 1 and len(out[0][0].runs) == 4
    out = await h.send(AnalysisDone(report=report(1)), "analyst")
    assert kinds(out) == ["draft_request->writer"] and out[0][0].responses == rebuttal.responses
    reviewed = draft.model_copy(update={"round": 1, "pdf": "p1/paper/round-1/paper.pdf"})
    out = await h.send(reviewed, "writer")
    out = await h.send(ReviewDone(round=1, reviews=[], meta=MetaReview(summary="good", overall=6.5, decision="accept")), "reviewer")
    # Accepted: the writer makes the final build of exactly the reviewed draft before the decision goes out.
    assert kinds(out) == ["draft_request->writer"] and h.state.stage == "draft"
    assert out[0][0].final and out[0][0].reviewed == reviewed and out[0][0].round == 1
    if final_fails:
        out = await h.send(StepFailed(step="draft", reason="writer down", ref=""), "writer")
        assert kinds(out) == ["decision->all"] and out[0][0].accepted and out[0][0].paper == reviewed
        return
    final = reviewed.model_copy(update={"markdown": "p1/paper/final/paper.md", "pdf": "p1/paper/final/paper.pdf"})
    out = await h.send(final, "writer")
    assert kinds(out) == ["decision->all"]
    assert out[0][0].accepted and h.state.stage == "done" and out[0][0].paper == final
    assert "p1/review.json" in h.store.data


async def test_revision_budget_ends_the_loop():
    h = Harness()
    start = START.model_copy(update={"budget": Budget(max_ideas=1, max_revision_rounds=0)})
    out = await started(h, start)
    exp = out[0][0].experiment_id
    out = await h.send(ExperimentResult(experiment_id=exp, idea_id="baseline", runs=[run_record(exp, "baseline", [1, 1, 1])]), "engineer")
    while kinds(out) != ["analysis_request->analyst"]:
        checking = [s for s in h.state.ideas.values() if s.status == "checking"]
        out = await h.send(NoveltyVerdict(idea_id=checking[0].idea.id, novel=False, justification="known"), "literature")
    assert len(h.state.ideas) == 3  # max_ideas=1: at most three proposals
    await h.send(AnalysisDone(report=report(0)), "analyst")
    await h.send(DraftReady(round=0, tex="t", markdown="m", bib="b"), "writer")
    meta = MetaReview(summary="s", overall=5, decision="revise", revision_items=[RevisionItem(id="r0-1", kind="other", text="x")])
    out = await h.send(ReviewDone(round=0, reviews=[], meta=meta), "reviewer")
    assert kinds(out) == ["decision->all"]
    assert not out[0][0].accepted and "revision rounds spent" in out[0][0].reason


async def test_failed_baseline_ends_the_project_with_a_reason():
    h = Harness()
    out = await started(h, START.model_copy(update={"budget": Budget(max_ideas=1)}))
    exp, idea = out[0][0].experiment_id, out[1][0].idea
    failed = RunRecord(job_id="j", experiment_id=exp, idea_id="baseline", overrides={}, seeds=[0, 1, 2], status="failed", reason="crashed: exit code 1")
    await h.send(ExperimentResult(experiment_id=exp, idea_id="baseline", runs=[failed]), "engineer")
    out = await h.send(NoveltyVerdict(idea_id=idea.id, novel=True, justification="new"), "literature")
    iexp = out[0][0].experiment_id
    out = await h.send(ExperimentResult(experiment_id=iexp, idea_id=idea.id, runs=[run_record(iexp, idea.id, [1, 2, 3])]), "engineer")
    assert kinds(out) == ["decision->all"]
    assert "baseline failed" in out[0][0].reason and h.state.stage == "failed"


async def test_copi_note_restricts_later_ideas():
    h = Harness()
    out = await started(h, START.model_copy(update={"budget": Budget(max_ideas=4)}))
    exp = out[0][0].experiment_id
    await h.send(ExperimentResult(experiment_id=exp, idea_id="baseline", runs=[run_record(exp, "baseline", [1, 1, 1])]), "engineer")
    out = await h.send(CoPINoteMsg(note=CoPINote(id="n1", text="Only vary the width, please")))
    # The note is a request as well as a constraint: a width run is scheduled at once, and the answer says so.
    assert kinds(out) == ["experiment_request->engineer", "note_ack->copi"]
    assert out[0][0].idea.changes == {"width": 16} and "scheduled as experiment" in out[1][0].understood
    assert out[1][0].constraints == {"allowed_knobs": ["width"]}
    assert h.state.notes[0].text.startswith("Only vary")
    first = [s.idea for s in h.state.ideas.values() if s.status == "checking"]
    for idea in first:
        await h.send(NoveltyVerdict(idea_id=idea.id, novel=False, justification="known"), "literature")
    asked = out[0][0].experiment_id
    await h.send(ExperimentResult(experiment_id=asked, idea_id="copi-width-16", runs=[run_record(asked, "copi-width-16", [1, 1, 1])]), "engineer")
    later = [s.idea for s in h.state.ideas.values() if s.wave > 1 and not s.asked_by_copi]
    # A second wave ran, and proposed nothing but width (whose declared values 4 and 16 are both taken now).
    assert h.state.wave >= 2 and all(set(i.changes) == {"width"} for i in later)


async def test_wall_time_stops_new_ideas():
    h = Harness()
    out = await started(h, START.model_copy(update={"budget": Budget(max_ideas=4, wall_time_s=60)}))
    exp = out[0][0].experiment_id
    h.now += 120  # the test moves the clock past the budget
    for s in list(h.state.ideas.values()):
        out = await h.send(NoveltyVerdict(idea_id=s.idea.id, novel=False, justification="known"), "literature")
    out = await h.send(ExperimentResult(experiment_id=exp, idea_id="baseline", runs=[run_record(exp, "baseline", [1, 1, 1])]), "engineer")
    assert kinds(out) == ["analysis_request->analyst"]
    assert len(h.state.ideas) == 2


async def test_unknown_project_is_refused():
    from agents.pi.workflow import UnknownProject

    h = Harness()
    with pytest.raises(UnknownProject):
        await h.send(CoPINoteMsg(note=CoPINote(id="n", text="hello")))


async def test_copi_can_stop_the_project():
    h = Harness()
    await h.send(START)
    out = await h.send(CoPINoteMsg(note=CoPINote(id="n1", text="Stop the project now, please")))
    assert kinds(out) == ["note_ack->copi", "decision->all"]
    assert out[0][0].constraints == {"stop": True}
    assert not out[1][0].accepted and "stopped by the co-PI" in out[1][0].reason and h.state.stage == "failed"
    # Late answers to a stopped project change nothing.
    exp = next(iter(h.state.experiments))
    assert await h.send(ExperimentResult(experiment_id=exp, idea_id="baseline", runs=[run_record(exp, "baseline", [1, 1, 1])]), "engineer") == []


async def test_a_note_the_offline_pi_cannot_parse_is_said_so_in_the_log():
    from structlog.testing import capture_logs

    h = Harness()
    await h.send(START)
    with capture_logs() as logs:
        out = await h.send(CoPINoteMsg(note=CoPINote(id="n2", text="make it prettier somehow")))
    assert kinds(out) == ["note_ack->copi"]
    assert out[0][0].understood.startswith("not understood") and out[0][0].constraints == {}
    warned = [e for e in logs if e["event"] == "co-PI note not understood"]
    assert warned and warned[0]["log_level"] == "warning" and warned[0]["note"] == "make it prettier somehow"


async def test_the_llm_pi_can_stop_the_project_on_a_note():
    from agents.minds import make_mind
    from tests.llm_helpers import replay

    h = Harness()
    await h.send(START)
    client = replay({"understood": "stopping the project as asked", "allowed_knobs": [], "forbidden_knobs": [], "stop": True})
    h.mind = make_mind("llm", "pi", seed=0, config={"model_client": client})
    out = await h.send(CoPINoteMsg(note=CoPINote(id="n3", text="We have what we need; wrap it up immediately.")))
    assert kinds(out) == ["note_ack->copi", "decision->all"]
    assert out[0][0].constraints == {"stop": True} and "stop" in client.create_calls[0]["messages"][-1].content
    assert not out[1][0].accepted and "stopped by the co-PI" in out[1][0].reason and h.state.stage == "failed"


async def test_a_significant_finding_gets_a_confirmation_run_on_fresh_seeds_before_the_draft():
    from agents.analyst.workflow import build_report

    h = Harness()
    out = await started(h, START)
    baseline_exp, ideas = out[0][0].experiment_id, [b.idea for b, _ in out[1:]]
    out = await h.send(NoveltyVerdict(idea_id=ideas[0].id, novel=True, justification="new"), "literature")
    idea_exp = out[0][0].experiment_id
    for i in ideas[1:]:
        await h.send(NoveltyVerdict(idea_id=i.id, novel=False, justification="known"), "literature")
    await h.send(ExperimentResult(experiment_id=baseline_exp, idea_id="baseline", runs=[run_record(baseline_exp, "baseline", [1.0, 1.1, 0.9])]), "engineer")
    out = await h.send(ExperimentResult(experiment_id=idea_exp, idea_id=ideas[0].id, runs=[run_record(idea_exp, ideas[0].id, [0.5, 0.52, 0.48])]), "engineer")
    while kinds(out) == ["novelty_check->literature"]:  # the space is drained of not-novel ideas
        out = await h.send(NoveltyVerdict(idea_id=out[0][0].idea.id, novel=False, justification="known"), "literature")
    assert kinds(out) == ["analysis_request->analyst"] and out[0][0].confirmation == []
    rep, _ = build_report("p1", out[0][0])
    assert rep.comparisons[0].verdict == "better" and rep.comparisons[0].replicated is None

    out = await h.send(AnalysisDone(report=rep), "analyst")
    # Not the draft yet: the baseline and the idea run again on seeds no arm has used.
    assert kinds(out) == ["experiment_request->engineer", "experiment_request->engineer"]
    (base_c, _), (idea_c, _) = out
    assert base_c.idea is None and idea_c.idea.id == ideas[0].id and base_c.seeds == idea_c.seeds == [3, 4, 5]
    await h.send(ExperimentResult(experiment_id=base_c.experiment_id, idea_id="baseline",
                                  runs=[run_record(base_c.experiment_id, "baseline", [1.0, 1.05, 0.95], [3, 4, 5])]), "engineer")
    out = await h.send(ExperimentResult(experiment_id=idea_c.experiment_id, idea_id=ideas[0].id,
                                        runs=[run_record(idea_c.experiment_id, ideas[0].id, [0.55, 0.5, 0.45], [3, 4, 5])]), "engineer")
    assert kinds(out) == ["analysis_request->analyst"]
    assert sorted(out[0][0].confirmation) == sorted([base_c.experiment_id, idea_c.experiment_id])
    rep, _ = build_report("p1", out[0][0])
    assert rep.comparisons[0].replicated is True and rep.comparisons[0].n_idea == 3
    out = await h.send(AnalysisDone(report=rep), "analyst")
    assert kinds(out) == ["draft_request->writer"]  # confirmed once; no second confirmation


async def reach_review(h: Harness) -> None:
    out = await started(h, START)
    baseline_exp = out[0][0].experiment_id
    for b, _ in out[1:]:
        await h.send(NoveltyVerdict(idea_id=b.idea.id, novel=False, justification="known"), "literature")
    baseline = ExperimentResult(experiment_id=baseline_exp, idea_id="baseline", runs=[run_record(baseline_exp, "baseline", [1.0, 1.1, 0.9])])
    out = await h.send(baseline, "engineer")
    while out and all(k == "novelty_check->literature" for k in kinds(out)):
        for b, _ in list(out):
            out = await h.send(NoveltyVerdict(idea_id=b.idea.id, novel=False, justification="known"), "literature")
    assert kinds(out) == ["analysis_request->analyst"]
    await h.send(AnalysisDone(report=report(0)), "analyst")
    await h.send(DraftReady(round=0, tex="p1/paper.tex", markdown="p1/paper.md", bib="p1/references.bib"), "writer")


@pytest.mark.parametrize("found", [True, False])
async def test_a_citation_item_asks_the_literature_agent_and_the_draft_waits_for_its_answer(found):
    from bus.schema import Reference, ReferenceSearch, ReferencesFound

    h = Harness()
    await reach_review(h)
    items = [RevisionItem(id="r0-1", kind="add_citation", text="Only 2 references; situate the work.", target="related_work")]
    out = await h.send(ReviewDone(round=0, reviews=[], meta=MetaReview(summary="s", overall=5, decision="revise", revision_items=items)), "reviewer")
    assert kinds(out) == ["rebuttal->reviewer", "reference_search->literature"]
    search = out[1][0]
    assert isinstance(search, ReferenceSearch) and search.item_id == "r0-1" and search.queries and search.template_object == "p1/template.tar.gz"
    new = [Reference(key="liu2023omnigrok", title="Omnigrok", bibtex="@article{liu2023omnigrok, title={Omnigrok}}")] if found else []
    out = await h.send(ReferencesFound(item_id="r0-1", references=new, reason="" if found else "nothing new in 2 sources"), "literature")
    assert kinds(out) == ["analysis_request->analyst"]  # only now: the draft had to wait for the references
    out = await h.send(AnalysisDone(report=report(1)), "analyst")
    assert kinds(out) == ["draft_request->writer"]
    req = out[0][0]
    (response,) = req.responses
    if found:
        assert "liu2023omnigrok" in {r.key for r in req.references}
        assert response.action == "act" and "added liu2023omnigrok" in response.text
    else:
        assert response.action == "rebut" and "nothing new in 2 sources" in response.text


async def test_an_llm_endpoint_that_is_down_ends_the_project_once_the_runs_in_flight_are_in():
    from agents.minds.llm.errors import EndpointDown

    class DownMind(OfflinePIMind):
        async def propose_ideas(self, context: Any) -> Any:
            raise EndpointDown("pi", "propose_ideas", "LLM endpoint http://m/v1 is not answering (2 timeouts in a row); failing fast for 60 s")

    h = Harness()
    h.mind = DownMind()
    out = await started(h, START)
    assert kinds(out) == ["experiment_request->engineer"]  # the baseline was already asked for; no ideas
    exp = out[0][0].experiment_id
    out = await h.send(ExperimentResult(experiment_id=exp, idea_id="baseline", runs=[run_record(exp, "baseline", [1, 2, 3])]), "engineer")
    assert kinds(out) == ["decision->all"]  # not an analysis the analyst's model could not write either
    assert out[0][0].reason == "ideas failed: LLM endpoint http://m/v1 is not answering (2 timeouts in a row); failing fast for 60 s"
    assert not out[0][0].accepted and h.state.stage == "failed"
