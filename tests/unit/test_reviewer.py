"""The reviewer on papers the offline writer produced from constructed runs: items, accept after fixes, reject on overclaims."""

from __future__ import annotations

import pytest

from agents.analyst.workflow import build_report
from agents.base import Context
from agents.reviewer import offline as offline_reviewer
from agents.reviewer.workflow import ROLE as REVIEWER
from agents.writer.offline import OfflineWriterMind
from agents.writer.workflow import ROLE as WRITER
from bus.schema import (
    AnalysisRequest,
    DraftReady,
    DraftRequest,
    Envelope,
    FinalInfo,
    Idea,
    ItemResponse,
    JobEnvironment,
    MetricStat,
    Reference,
    ReviewDone,
    ReviewRequest,
    RunRecord,
    StepFailed,
)
from tests.fakes import MemoryStore

SPEC = {
    "name": "toy", "title": "Toy Grokking", "task": "Learn modular addition with a small transformer.",
    "knobs": {"weight_decay": {"type": "float", "default": 0.1, "min": 0.0, "max": 2.0},
              "steps": {"type": "int", "default": 800, "fairness": True}},
    "metrics": {"val_acc": {"direction": "higher", "primary": True}, "val_loss": {"direction": "lower"}},
}
IDEAS = [Idea(id="wd-1", title="Stronger weight decay", hypothesis="More decay generalizes sooner.",
              falsification="Accuracy does not rise.", changes={"weight_decay": 1.0})]
ENV = JobEnvironment(python="3.11.9", cpu="test cpu", cpu_count=2, packages={"torch": "2.13.0"})


def ref(i: int) -> Reference:
    return Reference(key=f"ref{i}", title=f"Paper number {i}", authors=["A Author"], year=2020 + i,
                     bibtex=f"@article{{x{i}, title={{Paper number {i}}}, author={{Author, A}}, journal={{J}}, year={{{2020 + i}}}}}")


def run(job, idea, acc, seeds, overrides=None):
    loss = [1.0 - a for a in acc]
    fi = FinalInfo(seeds=seeds, metrics={"val_acc": MetricStat(mean=sum(acc) / len(acc), stderr=0.0, values=acc),
                                         "val_loss": MetricStat(mean=sum(loss) / len(loss), stderr=0.0, values=loss)})
    return RunRecord(job_id=job, experiment_id=job, idea_id=idea, overrides=overrides or {}, seeds=seeds,
                     status="succeeded", final_info=fi, environment=ENV)


# Noisy arms: with 3 seeds the comparison is inconclusive.
FIRST = [run("b1", "baseline", [0.70, 0.78, 0.74], [0, 1, 2]), run("w1", "wd-1", [0.73, 0.80, 0.71], [0, 1, 2], {"weight_decay": 1.0})]
MORE = [run("b2", "baseline", [0.76, 0.72], [3, 4]), run("w2", "wd-1", [0.77, 0.75], [3, 4], {"weight_decay": 1.0})]
GOOD = [run("b1", "baseline", [0.70, 0.72, 0.71, 0.73, 0.70], [0, 1, 2, 3, 4]),
        run("w1", "wd-1", [0.90, 0.93, 0.91, 0.92, 0.90], [0, 1, 2, 3, 4], {"weight_decay": 1.0})]
# GOOD again on fresh seeds: the confirmation that makes its gain a finding.
CONFIRMED = GOOD + [run("b9", "baseline", [0.71, 0.70, 0.72], [10, 11, 12]),
                    run("w9", "wd-1", [0.91, 0.92, 0.90], [10, 11, 12], {"weight_decay": 1.0})]
WORSE = [run("b1", "baseline", [0.90, 0.91, 0.92, 0.90, 0.91], [0, 1, 2, 3, 4]),
         run("w1", "wd-1", [0.60, 0.61, 0.59, 0.60, 0.62], [0, 1, 2, 3, 4], {"weight_decay": 1.0})]


class Discussing(OfflineWriterMind):
    """The offline writer, with a related work that says how each cited work relates to the study (the reviewer rejects a bare list)."""

    async def write(self, request):
        s = await super().write(request)
        prose = " ".join(f"{r.title} [@{r.key}] studies the same question on another task and motivates comparing weight decay over seeds."
                         for r in request.references)
        return s.model_copy(update={"related_work": prose or s.related_work})


class Claiming(Discussing):
    """A writer that overclaims in the abstract, and optionally writes a one-line limitations section."""

    def __init__(self, claim: str = "", thin_limits: bool = False) -> None:
        super().__init__(0)
        self.claim, self.thin = claim, thin_limits

    async def write(self, request):
        s = await super().write(request)
        update = {}
        if self.claim:
            update["abstract"] = self.claim
        if self.thin:
            update["limitations"] = "None."
        return s.model_copy(update=update)


async def draft_and_review(runs, refs, round=1, mind=None, items=(), responses=(), ensemble=3, max_rounds=10, confirmation=(), final=True):
    store = MemoryStore()
    report, _ = build_report("p", AnalysisRequest(round=round, spec=SPEC, runs=runs, confirmation=list(confirmation)))
    req = DraftRequest(round=round, spec=SPEC, direction="Does decay help?", ideas=IDEAS, report=report, references=refs,
                       revision_items=list(items), responses=list(responses))
    wctx = Context(project="p", role="writer", state=None, artifacts=store, mind=mind or Discussing(0))
    await WRITER().handle(Envelope(project="p", sender="pi", recipient="writer", body=req), wctx)
    (draft, _), = wctx.outputs
    assert isinstance(draft, DraftReady)
    if final:  # a paper that may be accepted is the final one: the writer must not print it as "Draft for review"
        for name in (draft.markdown, draft.tex):
            store.data[name] = store.data[name].replace(b"Draft for review", b"Submitted version")
    rctx = Context(project="p", role="reviewer", state=None, artifacts=store, mind=offline_reviewer.make(0, {}))
    body = ReviewRequest(round=round, draft=draft, report=report, references=refs, ensemble=ensemble, max_rounds=max_rounds)
    await REVIEWER().handle(Envelope(project="p", sender="pi", recipient="reviewer", body=body), rctx)
    (done, to), = rctx.outputs
    assert to == "pi" and isinstance(done, ReviewDone)
    assert f"p/paper/round-{round}/review.json" in store.data
    return done, report, store.data[draft.markdown].decode()


async def test_first_draft_gets_concrete_items_then_an_inconclusive_study_is_not_accepted():
    done, report, _ = await draft_and_review(FIRST, [ref(1), ref(2)])
    assert report.comparisons[0].verdict == "inconclusive"
    meta = done.meta
    assert meta.decision == "revise" and len(done.reviews) == 3
    kinds = {(i.kind, i.target) for i in meta.revision_items}
    assert ("more_seeds", "wd-1") in kinds and ("more_seeds", "baseline") in kinds and ("add_citation", "related_work") in kinds
    assert [i.id for i in meta.revision_items] == [f"r1-{n}" for n in range(1, len(meta.revision_items) + 1)]
    assert all("[revision:" not in i.text for i in meta.revision_items)

    responses = [ItemResponse(item_id=i.id, action="act", text=f"Done: {i.kind}.") for i in meta.revision_items]
    done2, report2, paper2 = await draft_and_review(FIRST + MORE, [ref(i) for i in range(1, 6)], round=2,
                                                    items=meta.revision_items, responses=responses)
    c = report2.comparisons[0]
    assert (c.n_baseline, c.n_idea) == (5, 5)
    assert "## Revisions" in paper2
    # Every item was fixed, but five seeds still do not settle the question: reported, not accepted as a finding.
    assert c.verdict == "inconclusive"
    assert done2.meta.decision == "reject" and "inconclusive" in done2.meta.summary, done2.meta.summary
    assert done2.meta.overall >= 6 and done2.meta.revision_items == []
    assert all(r.decision == "reject" for r in done2.reviews)


async def test_a_corrected_replicated_gain_with_nothing_left_to_fix_is_accepted():
    done, report, _ = await draft_and_review(CONFIRMED, [ref(i) for i in range(1, 6)], confirmation=["b9", "w9"])
    c = next(c for c in report.comparisons if c.metric == "val_acc")
    assert c.verdict == "better" and c.p_adjusted is not None and c.p_adjusted < 0.05 and c.replicated is True
    assert done.meta.decision == "accept", done.meta.summary


async def test_a_gain_that_was_never_replicated_is_not_accepted_as_a_finding():
    done, report, _ = await draft_and_review(GOOD, [ref(i) for i in range(1, 6)])
    c = next(c for c in report.comparisons if c.metric == "val_acc")
    assert c.verdict == "better" and c.replicated is None
    assert done.meta.decision == "reject" and "inconclusive" in done.meta.summary


async def test_thin_limitations_ask_for_a_limitation_and_fixing_it_clears_the_item():
    done, _, _ = await draft_and_review(CONFIRMED, [ref(i) for i in range(5)], mind=Claiming(thin_limits=True), confirmation=["b9", "w9"])
    assert done.meta.decision == "revise"
    assert [(i.kind, i.target) for i in done.meta.revision_items] == [("add_limitation", "limitations")]
    done, _, _ = await draft_and_review(CONFIRMED, [ref(i) for i in range(5)], confirmation=["b9", "w9"])
    assert done.meta.decision == "accept"


async def test_claiming_an_improvement_the_verdict_calls_worse_is_rejected():
    done, report, _ = await draft_and_review(WORSE, [ref(i) for i in range(5)],
                                             mind=Claiming("We show that `wd-1` improves val_acc over the baseline."))
    assert report.comparisons[0].verdict == "worse"
    assert done.meta.decision == "reject" and "worse" in done.meta.summary
    assert all(r.decision == "reject" and r.scores.overall <= 3 for r in done.reviews)
    assert any("[fatal]" in w for r in done.reviews for w in r.weaknesses)


async def test_honest_negative_result_is_not_rejected_for_its_claims():
    done, _, paper = await draft_and_review(WORSE, [ref(i) for i in range(5)])
    assert "negative result" in paper.splitlines()[0].lower()
    assert done.meta.decision == "accept", done.meta.summary


async def test_overclaiming_an_inconclusive_result_asks_for_a_rewrite():
    done, _, _ = await draft_and_review(FIRST + MORE, [ref(i) for i in range(5)],
                                        mind=Claiming("Stronger weight decay clearly outperforms the baseline."))
    assert done.meta.decision == "revise"
    assert ("rewrite_section", "abstract") in {(i.kind, i.target) for i in done.meta.revision_items}


async def test_missing_baseline_asks_for_one_and_spent_rounds_reject():
    only_idea = [FIRST[1]]
    done, _, _ = await draft_and_review(only_idea, [ref(i) for i in range(5)])
    assert done.meta.decision == "revise"
    assert ("add_baseline", "baseline") in {(i.kind, i.target) for i in done.meta.revision_items}
    done, _, _ = await draft_and_review(only_idea, [ref(i) for i in range(5)], round=1, max_rounds=2)
    assert done.meta.decision == "revise"
    done, _, _ = await draft_and_review(only_idea, [ref(i) for i in range(5)], round=2, max_rounds=2)
    assert done.meta.decision == "reject" and "spent" in done.meta.summary


async def test_ensemble_members_differ_deterministically():
    a, _, _ = await draft_and_review(FIRST + MORE, [ref(i) for i in range(5)], ensemble=4)
    b, _, _ = await draft_and_review(FIRST + MORE, [ref(i) for i in range(5)], ensemble=4)
    assert a.reviews == b.reviews and a.meta == b.meta
    assert len({r.reviewer for r in a.reviews}) == 4
    assert len({r.scores.overall for r in a.reviews}) > 1
    assert a.reviews[0].questions != a.reviews[1].questions
    for r in a.reviews:
        assert r.summary and r.strengths and r.ethics and r.limitations


async def test_missing_draft_is_a_step_failure():
    report, _ = build_report("p", AnalysisRequest(round=1, spec=SPEC, runs=FIRST))
    draft = DraftReady(round=1, tex="p/x.tex", markdown="p/nothing.md", bib="p/x.bib")
    ctx = Context(project="p", role="reviewer", state=None, artifacts=MemoryStore(), mind=offline_reviewer.make(0, {}))
    await REVIEWER().handle(Envelope(project="p", sender="pi", recipient="reviewer",
                                     body=ReviewRequest(round=1, draft=draft, report=report, references=[])), ctx)
    (body, _), = ctx.outputs
    assert isinstance(body, StepFailed) and "nothing.md" in body.reason


@pytest.mark.parametrize("sentence,kind", [
    ("`wd-1` does not improve val_acc.", None),
    ("`wd-1` improves val_acc over the baseline.", "fatal"),
    ("Our method outperforms the baseline.", "fatal"),
])
def test_claim_reading(sentence, kind):
    report, _ = build_report("p", AnalysisRequest(round=1, spec=SPEC, runs=WORSE))
    found = offline_reviewer.claim_findings({"title": "", "abstract": sentence}, report)
    assert [f.kind for f in found] == ([kind] if kind else [])


async def test_reviewer_keeps_no_rebuttals_and_old_state_still_loads():
    """The PI's rebuttals are not state: the reviewer keeps them in the object store next to the round's review
    (the next round checks each "act" against them), and state stored by older labs loads."""
    from agents.reviewer.workflow import ReviewerState
    from bus.schema import ItemResponse, Rebuttal
    ctx: Context = Context(project="p", role="reviewer", state=ReviewerState(), artifacts=MemoryStore(), mind=offline_reviewer.make(0, {}))
    answer = Rebuttal(round=0, responses=[ItemResponse(item_id="r0-1", action="act", text="ran more seeds")])
    await REVIEWER().handle(Envelope(project="p", sender="pi", recipient="reviewer", body=answer), ctx)
    assert ctx.state == ReviewerState() and ctx.outputs == []
    assert b"ran more seeds" in ctx.artifacts.data["p/paper/round-0/rebuttal.json"]
    old = {"rebuttals": {"0": [{"item_id": "r0-1", "action": "rebut", "text": "the knob is fair"}]}}
    assert ReviewerState.model_validate(old) == ReviewerState()
