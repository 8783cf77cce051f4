"""The reviewer's llm mind: an ensemble of NeurIPS-form reviews and a meta-review.

Each ensemble member runs at the reviewer's temperature (above 0 by default)
with its own seed, so the reviews differ as independent reviewers' would.
"""

from __future__ import annotations

from typing import Any

from agents.minds.llm.common import LLMMind, report_brief, show
from agents.minds.llm.errors import InvalidAnswer
from agents.minds.llm.schemas import MetaDraft, ReviewDraft, ReviewReflection
from agents.reviewer.checks import areas_of, metric_kinds, recorded
from bus.schema import AnalysisReport, MetaReview, Reference, Review, ReviewEvidence

MAX_PAPER_CHARS = 60_000
FOCUS = {
    "statistics": "STATISTICS: every verdict word against the corrected verdict and family of its comparison; every quoted effect size, "
                  "interval and p-value against the analysis; no test or finding on a metric that is not an outcome (listed below); "
                  "seeds per arm against the seed plan.",
    "setup": "SETUP: every knob value the Setup or Method states, for the baseline and each idea, must equal the value the runs recorded "
             "(final_info.config, below); quote the sentence and the recorded value for each mismatch.",
    "claims": "CLAIMS: every analysis flag (not converged, unstable, no separation, wrong control, seeds added, hardware metric) must be "
              "stated in the paper's body; a claim on a non-converged run must say it holds for this budget only; no verdict at all when "
              "conclusions are withheld; title, abstract, results and conclusion must agree; each metric's direction as the analysis has it; "
              "every item of the last round that is still open (below) blocks acceptance.",
    "literature": "LITERATURE: cited works discussed in prose and related to the claim (a bare list is a weakness); ideas the literature "
                  "found not novel said to be; the novelty claimed matches the literature's verdict.",
}


def evidence_brief(report: AnalysisReport, evidence: ReviewEvidence | None, index: int) -> list[str]:
    """The member's focus and the recorded evidence it checks the paper against."""
    ev = evidence or ReviewEvidence()
    configs = {arm: {k: sorted(v) for k, v in knobs.items()} for arm, knobs in recorded(report).items()}
    return [
        "Your focus (check this evidence first and quote the paper's sentence and the recorded value or flag in each weakness): "
        + " ".join(FOCUS[a] for a in areas_of(index, ev.ensemble)),
        f"Recorded configs per arm (final_info.config, JSON values): {show(configs)}",
        f"Flags: {show([f.text for f in report.flags])}; conclusions withheld: {report.conclusions_withheld}",
        f"Metrics with no test (never a finding): {show(metric_kinds(report, ev.spec))}; seed plan: {show(report.seed_plan)}",
        f"Ideas the literature found not novel: {show(ev.not_novel)}",
        f"Items of the last round the revision did not do (still open, blocking): {show([i.text for i in ev.open_items])}",
    ]


def check_review(answer: ReviewDraft) -> None:
    overall = answer.scores.overall
    if answer.decision == "accept" and overall <= 3 or answer.decision == "reject" and overall >= 8:
        raise InvalidAnswer(f"decision {answer.decision!r} contradicts overall score {overall}")


class LLMReviewerMind(LLMMind):
    role = "reviewer"

    async def review(
        self, paper_markdown: str, report: AnalysisReport, references: list[Reference], index: int, evidence: ReviewEvidence | None = None,
    ) -> Review:
        answer = await self.ask("review", [
            f"You are reviewer #{index + 1} of an ensemble; review independently.",
            *evidence_brief(report, evidence, index),
            f"Paper (Markdown):\n{paper_markdown[:MAX_PAPER_CHARS]}",
            f"The analysis the paper must agree with: {report_brief(report)}",
            f"References it may cite: {show([{'key': r.key, 'title': r.title} for r in references])}",
            "Review in the NeurIPS form: summary, strengths, weaknesses, questions, limitations, ethics, scores "
            "(originality, quality, clarity, significance, soundness, presentation, contribution 1-4; overall 1-10; "
            "confidence 1-5) and a decision. Check every claimed number against the analysis.",
        ], ReviewDraft, check_review, seed=self.seed * 1000 + index)
        answer = await self._reflect(answer, paper_markdown, report, index)
        return Review(reviewer=f"llm-{index}", **answer.model_dump(include=set(ReviewDraft.model_fields)))

    async def _reflect(self, draft: ReviewDraft, paper_markdown: str, report: AnalysisReport, index: int) -> ReviewDraft:
        """Reflection rounds before the review is final: re-check it against the paper and the analysis.

        One conversation, so each round sees the last; the reviewer stops early
        by setting done, and at most ``review_reflections`` rounds run.
        """
        rounds = self.client.config.review_reflections
        if rounds <= 0:
            return draft
        conv = self.client.conversation("review_reflection", self.system, ReviewReflection, seed=self.seed * 1000 + index)
        current: ReviewDraft = draft
        for r in range(1, rounds + 1):
            reflected = await conv.ask(
                "\n".join([
                    *([f"Paper (Markdown):\n{paper_markdown[:MAX_PAPER_CHARS]}", f"The analysis: {report_brief(report)}"] if r == 1 else []),
                    f"Your review so far: {show(current)}",
                    f"Reflection round {r} of {rounds}. In 'thoughts', check the review for accuracy and soundness: is every "
                    "weakness true of this paper, does every claim you accept agree with the analysis (corrected p-values, "
                    "replication), do the scores and the decision follow? Then give the full improved review. If nothing "
                    "should change, repeat it unchanged and set done to true.",
                ]),
                check_review,
            )
            current = ReviewDraft.model_validate(reflected.model_dump(include=set(ReviewDraft.model_fields)))
            if reflected.done:
                break
        return current

    async def meta_review(self, reviews: list[Review], report: AnalysisReport, round: int, max_rounds: int) -> MetaReview:
        scores = [r.scores.overall for r in reviews]
        can_revise = round < max_rounds

        def check(answer: MetaDraft) -> None:
            if scores and not min(scores) <= answer.overall <= max(scores):
                raise InvalidAnswer(f"overall {answer.overall} lies outside the reviewers' range {min(scores)}-{max(scores)}")
            if answer.decision == "revise" and not can_revise:
                raise InvalidAnswer("no revision rounds are left: decide accept or reject")
            if answer.decision == "revise" and not answer.revision_items:
                raise InvalidAnswer("a 'revise' decision needs at least one revision item")
            ids = [i.id for i in answer.revision_items]
            if len(ids) != len(set(ids)):
                raise InvalidAnswer(f"revision item ids must be unique: {ids}")

        answer = await self.ask("meta_review", [
            f"You are the area chair. Reviews: {show(reviews)}",
            f"Analysis: {report_brief(report)}",
            f"Revision round {round} of at most {max_rounds}." + ("" if can_revise else " No further revision is possible."),
            "Write a meta-review: summary, overall score (within the reviewers' range), decision (accept, reject, or "
            "revise if rounds remain), and concrete revision items (short ids like r1, r2) the authors must answer.",
        ], MetaDraft, check)
        items = [i.to_item() for i in answer.revision_items] if answer.decision == "revise" else []
        return MetaReview(summary=answer.summary, overall=answer.overall, decision=answer.decision, revision_items=items)


def make(seed: int, config: dict[str, Any]) -> LLMReviewerMind:
    return LLMReviewerMind(seed, config)
