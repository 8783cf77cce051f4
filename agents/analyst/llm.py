"""The analyst's llm mind: a prose summary of an analysis the analyst computed itself.

The numbers come from the analyst's statistics; the model only words them, and
a summary that calls an idea better when the verdict says otherwise is sent back.
"""

from __future__ import annotations

from typing import Any

from agents.minds.llm.common import LLMMind, report_brief
from agents.minds.llm.errors import InvalidAnswer
from agents.minds.llm.schemas import SummaryAnswer
from bus.schema import AnalysisReport


class LLMAnalystMind(LLMMind):
    role = "analyst"

    async def summarize(self, report: AnalysisReport) -> str:
        def check(answer: SummaryAnswer) -> None:
            text = answer.summary.lower()
            claims = "significant improvement" in text and "no significant improvement" not in text
            if report.comparisons and not any(c.better for c in report.comparisons) and claims:
                raise InvalidAnswer("no comparison is significantly better than the baseline; do not claim a significant improvement")

        answer = await self.ask("summarize", [
            f"Analysis: {report_brief(report)}",
            "Summarise it in one paragraph for the PI: which ideas beat the baseline "
            "on the primary metric (with effect size and confidence interval), which did not, and every flag.",
        ], SummaryAnswer, check)
        return answer.summary


def make(seed: int, config: dict[str, Any]) -> LLMAnalystMind:
    return LLMAnalystMind(seed, config)
