"""The analyst's llm mind: a prose summary of an analysis the analyst computed itself.

The numbers come from the analyst's statistics; the model only words them, and
a summary that calls an idea better when the verdict says otherwise is sent back.
"""

from __future__ import annotations

import json
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
            if report.conclusions_withheld and "withheld" not in text:
                raise InvalidAnswer("the report withholds its conclusions (the positive control did not separate): say so first")

        answer = await self.ask("summarize", [
            f"Analysis: {report_brief(report)}",
            f"Also in the report: {self.extras(report)}",
            "Summarise it in one paragraph for the PI: which ideas beat their control "
            "on the primary metric (with effect size and confidence interval), which did not, the metrics reported "
            "without a test and why, and every flag.",
        ], SummaryAnswer, check)
        return answer.summary


    @staticmethod
    def extras(report: AnalysisReport) -> str:
        """What ``report_brief`` leaves out and a summary must state: withheld conclusions, the positive control,
        the metrics reported without a test, and the seed plan."""
        return json.dumps({
            "conclusions_withheld": report.conclusions_withheld,
            "positive_control": report.positive_control.model_dump(mode="json") if report.positive_control else None,
            "descriptive": [d.model_dump(mode="json") for d in report.descriptive],
            "seed_plan": report.seed_plan.model_dump(mode="json") if report.seed_plan else None,
        }, ensure_ascii=False)


def make(seed: int, config: dict[str, Any]) -> LLMAnalystMind:
    return LLMAnalystMind(seed, config)
