"""The reviewer: an ensemble of NeurIPS-form reviews of the draft, and a meta-review the PI must answer.

``max_rounds`` is not in the request (the PI owns the budget and enforces
it): the host may pass it as ``ctx.services["max_rounds"]``; otherwise the
default of ``Budget.max_revision_rounds`` is used. The mind only uses it to
stop asking for revisions once the rounds are clearly spent.
"""

from __future__ import annotations

import json

from agents.base import Context, Role, on
from bus.messages import Budget, Envelope, ReviewDone, ReviewRequest, StepFailed

DEFAULT_MAX_ROUNDS: int = Budget.model_fields["max_revision_rounds"].default


class Reviewer(Role):
    name = "reviewer"

    @on(ReviewRequest)
    async def review(self, body: ReviewRequest, env: Envelope, ctx: Context) -> None:
        try:
            paper = (await ctx.artifacts.get(body.draft.markdown)).decode(errors="replace")
        except KeyError:
            ctx.send(StepFailed(step="review", reason=f"draft {body.draft.markdown!r} is not in the object store", ref=f"round-{body.round}"), to="pi")
            return
        reviews = [await ctx.mind.review(paper, body.report, body.references, i) for i in range(body.ensemble)]
        max_rounds = int(ctx.services.get("max_rounds", DEFAULT_MAX_ROUNDS))
        meta = await ctx.mind.meta_review(reviews, body.report, body.round, max_rounds)
        done = ReviewDone(round=body.round, reviews=reviews, meta=meta)
        name = f"{ctx.project}/paper/round-{body.round}/review.json"
        await ctx.artifacts.put(name, json.dumps(done.model_dump(mode="json"), indent=2).encode())
        ctx.log.info("review_done", decision=meta.decision, overall=meta.overall, items=len(meta.revision_items), review=name)
        ctx.send(done, to="pi")


ROLE = Reviewer
