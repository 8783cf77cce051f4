"""The reviewer: an ensemble of NeurIPS-form reviews of the draft, and a meta-review the PI must answer.

``max_rounds`` is not in the request: the PI owns the budget and ends the
project itself when the rounds are spent. The host may pass the project's
``Budget.max_revision_rounds`` as ``ctx.services["max_rounds"]``; without it
the reviewer assumes the largest budget a project may have (the upper bound
of ``Budget.max_revision_rounds``), so it never rejects for spent rounds a
paper the PI would still let the authors revise. Rounds count from 0, as the
PI counts them: round r may still be revised while r < max_rounds.
"""

from __future__ import annotations

import json

from agents.base import Context, Role, on
from bus.messages import Budget, Envelope, ReviewDone, ReviewRequest, StepFailed

DEFAULT_MAX_ROUNDS: int = next(m.le for m in Budget.model_fields["max_revision_rounds"].metadata if hasattr(m, "le"))


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
