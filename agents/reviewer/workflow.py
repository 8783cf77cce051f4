"""The reviewer: an ensemble of NeurIPS-form reviews of the draft, and a meta-review the PI must answer.

``max_rounds`` comes with the request (the PI owns the budget), so the
meta-review can tell a paper that may still be revised from one that may
not. Rounds count from 0, as the PI counts them: round r may still be revised
while r < max_rounds.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from agents.base import Context, Role, on
from agents.minds.base import ReviewerMind
from agents.reviewer.checks import Finding
from agents.reviewer.offline import findings
from agents.reviewer.revision import open_items
from bus.schema import (
    Envelope,
    ItemResponse,
    MetaReview,
    Rebuttal,
    ReviewDone,
    ReviewEvidence,
    ReviewRequest,
    RevisionItem,
    StepFailed,
    TemplateSpec,
)


class ReviewerState(BaseModel):
    """Nothing is kept between messages: each review request carries what the reviews need."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        # Older labs stored the PI's rebuttals here, written and never read; their stored state still loads.
        return {k: v for k, v in data.items() if k != "rebuttals"} if isinstance(data, dict) else data


ReviewerContext = Context[ReviewerState, ReviewerMind]


def gate(meta: MetaReview, blockers: list[Finding], round: int, max_rounds: int) -> MetaReview:
    """The meta-review, held to the reviewer's own checks whatever mind wrote it: no accept while a blocking finding stands.

    An accept with blockers becomes revise (reject when the rounds are spent); a revise
    gets the blockers its items do not already carry. A reject stands.
    """
    if meta.decision == "reject" or not blockers:
        return meta
    have = {(i.kind, i.target, i.text.strip()) for i in meta.revision_items}
    n = len(meta.revision_items)
    extra = [f.item(f"r{round}-c{k}") for k, f in enumerate((f for f in blockers if (f.kind, f.target, f.text.strip()) not in have), n + 1)]
    items = [*meta.revision_items, *extra]
    if meta.decision == "revise":
        return meta.model_copy(update={"revision_items": items})
    why = f"the reviewer's checks of the evidence found {len(blockers)} blocking problem(s), e.g. {blockers[0].text.strip()}"
    fatal = next((f for f in blockers if f.kind == "fatal"), None)
    if fatal is not None:
        return MetaReview(summary=f"Reject: {fatal.text.strip()}", overall=meta.overall, decision="reject", revision_items=items)
    if round >= max_rounds:
        return MetaReview(summary=f"Reject: not accepted, {why}; no revision round is left.", overall=meta.overall, decision="reject", revision_items=items)
    return MetaReview(summary=f"Revise: not accepted, {why}.", overall=meta.overall, decision="revise", revision_items=items)


async def _text(ctx: ReviewerContext, name: str | None) -> str:
    if not name:
        return ""
    try:
        return (await ctx.artifacts.get(name)).decode(errors="replace")
    except KeyError:
        return ""


async def gather(body: ReviewRequest, paper: str, ctx: ReviewerContext) -> ReviewEvidence:
    """What the checks need beyond the request: the writer's analysis.json (the spec, the literature's verdicts), the LaTeX,
    and for a revision the items of the last round whose named text did not change."""
    spec, not_novel = None, {}
    try:
        doc = json.loads(await _text(ctx, body.draft.analysis) or "{}")
        spec = TemplateSpec.model_validate(doc["spec"]) if doc.get("spec") else None
        not_novel = {str(k): str(v) for k, v in (doc.get("not_novel") or {}).items()}
    except (ValueError, ValidationError) as e:
        ctx.log.warning("analysis_unreadable", name=body.draft.analysis, error=str(e)[:200])
    undone: list[RevisionItem] = []
    if body.round > 0:
        base = f"{ctx.project}/paper/round-{body.round - 1}"
        before, review = await _text(ctx, f"{base}/paper.md"), await _text(ctx, f"{base}/review.json")
        answers = await _text(ctx, f"{base}/rebuttal.json")
        if before and review:
            items = ReviewDone.model_validate_json(review).meta.revision_items
            responses = [ItemResponse.model_validate(r) for r in json.loads(answers)] if answers else None
            undone = open_items(items, responses, before, paper)
    return ReviewEvidence(spec=spec, not_novel=not_novel, tex=await _text(ctx, body.draft.tex), ensemble=body.ensemble,
                          round=body.round, max_rounds=body.max_rounds, open_items=undone)


class Reviewer(Role):
    name = "reviewer"
    State = ReviewerState

    @on(Rebuttal)
    async def rebuttal(self, body: Rebuttal, env: Envelope, ctx: ReviewerContext) -> None:
        """Keep the PI's answers next to the round's review: the next round checks that each "act" changed the paper."""
        rebutted = [r.item_id for r in body.responses if r.action == "rebut"]
        name = f"{ctx.project}/paper/round-{body.round}/rebuttal.json"
        await ctx.artifacts.put(name, json.dumps([r.model_dump(mode="json") for r in body.responses], indent=2).encode())
        ctx.log.info("rebuttal received", round=body.round, acted=len(body.responses) - len(rebutted), rebutted=rebutted)

    @on(ReviewRequest)
    async def review(self, body: ReviewRequest, env: Envelope, ctx: ReviewerContext) -> None:
        try:
            paper = (await ctx.artifacts.get(body.draft.markdown)).decode(errors="replace")
        except KeyError:
            ctx.send(StepFailed(step="review", reason=f"draft {body.draft.markdown!r} is not in the object store", ref=body.ref), to="pi")
            return
        evidence = await gather(body, paper, ctx)
        reviews = [await ctx.mind.review(paper, body.report, body.references, i, evidence) for i in range(body.ensemble)]
        max_rounds = body.max_rounds
        meta = await ctx.mind.meta_review(reviews, body.report, body.round, max_rounds)
        blockers = [f for f in findings(paper, body.report, body.references, evidence) if f.blocking]
        blockers += [Finding(i.kind, i.target, i.text, "claims", open_item=True) for i in evidence.open_items]
        # What the writer's own one-story check found (agents.writer.story): not trusted as a pass, but a failure counts.
        blockers += [Finding("rewrite_section", "abstract", f"The paper disagrees with itself or the report: {p}", "claims", open_item=True)
                     for p in body.draft.inconsistencies]
        # A draft under review says "Draft for review, round N"; after an accept the PI has the writer
        # build the final version of exactly this text (agents.pi.transitions.review_done), so that line is no flaw here.
        meta = gate(meta, blockers, body.round, max_rounds)
        done = ReviewDone(round=body.round, reviews=reviews, meta=meta)
        name = f"{ctx.project}/paper/round-{body.round}/review.json"
        await ctx.artifacts.put(name, json.dumps(done.model_dump(mode="json"), indent=2).encode())
        ctx.log.info("review_done", decision=meta.decision, overall=meta.overall, items=len(meta.revision_items), review=name)
        ctx.send(done, to="pi")


ROLE = Reviewer
