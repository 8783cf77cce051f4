"""The reviewer: an ensemble of NeurIPS-form reviews of the draft, and a meta-review the PI must answer.

``max_rounds`` comes with the request (the PI owns the budget), so the
meta-review can tell a paper that may still be revised from one that may
not. Rounds count from 0, as the PI counts them: round r may still be revised
while r < max_rounds.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from agents.base import Context, Role, on
from agents.minds.base import ReviewerMind
from bus.schema import Envelope, Rebuttal, ReviewDone, ReviewRequest, StepFailed


class ReviewerState(BaseModel):
    """Nothing is kept between messages: each review request carries what the reviews need."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        # Older labs stored the PI's rebuttals here, written and never read; their stored state still loads.
        return {k: v for k, v in data.items() if k != "rebuttals"} if isinstance(data, dict) else data


ReviewerContext = Context[ReviewerState, ReviewerMind]


class Reviewer(Role):
    name = "reviewer"
    State = ReviewerState

    @on(Rebuttal)
    async def rebuttal(self, body: Rebuttal, env: Envelope, ctx: ReviewerContext) -> None:
        """Log the PI's answers; the next round's draft carries them (its Revisions section), so nothing is kept."""
        rebutted = [r.item_id for r in body.responses if r.action == "rebut"]
        ctx.log.info("rebuttal received", round=body.round, acted=len(body.responses) - len(rebutted), rebutted=rebutted)

    @on(ReviewRequest)
    async def review(self, body: ReviewRequest, env: Envelope, ctx: ReviewerContext) -> None:
        try:
            paper = (await ctx.artifacts.get(body.draft.markdown)).decode(errors="replace")
        except KeyError:
            ctx.send(StepFailed(step="review", reason=f"draft {body.draft.markdown!r} is not in the object store", ref=body.ref), to="pi")
            return
        reviews = [await ctx.mind.review(paper, body.report, body.references, i) for i in range(body.ensemble)]
        max_rounds = body.max_rounds
        meta = await ctx.mind.meta_review(reviews, body.report, body.round, max_rounds)
        done = ReviewDone(round=body.round, reviews=reviews, meta=meta)
        name = f"{ctx.project}/paper/round-{body.round}/review.json"
        await ctx.artifacts.put(name, json.dumps(done.model_dump(mode="json"), indent=2).encode())
        ctx.log.info("review_done", decision=meta.decision, overall=meta.overall, items=len(meta.revision_items), review=name)
        ctx.send(done, to="pi")


ROLE = Reviewer
