"""The writer's llm mind: paper sections from the analysis only.

Citations must be keys of the references the literature role found; an
invented ``\\cite{}`` would break the bibliography and the paper's honesty, so
it goes back to the model.
"""

from __future__ import annotations

import re
from typing import Any

from agents.minds.base import PaperSections
from agents.minds.llm.common import LLMMind, report_brief, show
from agents.minds.llm.errors import InvalidAnswer
from agents.minds.llm.schemas import PaperDraft, SectionText
from bus.schema import DraftRequest

_CITE = re.compile(r"\\cite[tp]?\*?(?:\[[^\]]*\])?\{([^}]*)\}")


def cited_keys(text: str) -> list[str]:
    return [k.strip() for group in _CITE.findall(text) for k in group.split(",") if k.strip()]


class LLMWriterMind(LLMMind):
    role = "writer"

    async def write(self, request: DraftRequest) -> PaperSections:
        keys = [r.key for r in request.references]

        def check(answer: PaperDraft | SectionText) -> None:
            unknown = sorted({k for text in answer.model_dump().values() for k in cited_keys(str(text))} - set(keys))
            if unknown:
                raise InvalidAnswer(f"\\cite keys {unknown} are not in the references; cite only {keys}")

        refs = [{"key": r.key, "title": r.title, "year": r.year, "authors": r.authors[:3]} for r in request.references]
        parts = [
            f"Research direction: {request.direction}",
            f"Template: {show(request.spec.model_dump(mode='json', include={'name', 'title', 'task', 'metrics'}))}",
            f"Ideas tested: {show(request.ideas)}",
            f"Analysis (the only source of results): {report_brief(request.report)}",
            f"Hardware and software of the runs: {show([r.environment for r in request.report.runs if r.environment][:1])}",
            f"References (cite with \\cite{{key}}, only these): {show(refs)}",
            f"Co-PI notes: {show(request.notes) if request.notes else 'none'}",
        ]
        if request.revision_items:
            parts.append(f"Revision round {request.round}: address these items {show(request.revision_items)} "
                         f"as decided in {show(request.responses)}; say what changed in revision_notes.")
        parts.append("Write each section in LaTeX-friendly prose. Report only numbers present in the analysis, with "
                     "their uncertainty; state negative and inconclusive results plainly. Claim a gain only where its "
                     "verdict is 'better' after the correction and it replicated on fresh seeds.")
        context = "\n".join(parts)
        if not self.client.config.write_by_section:
            answer = await self.client.ask("write", self.system, context, PaperDraft, check)
            return PaperSections(**answer.model_dump())
        drafts = await self._sections(context, check)
        refined = await self.client.ask(
            "refine", self.system,
            context + f"\n\nYour section drafts: {show(drafts)}\n\nRefinement pass: read the whole paper once more; remove "
            "repetition, make the sections agree with each other and with the analysis, keep every number exactly as "
            "the analysis has it, and give the full refined paper.",
            PaperDraft, check,
        )
        return PaperSections(**refined.model_dump())

    async def fix_latex(self, sections: PaperSections, failing: list[str], error: str) -> PaperSections | None:
        """Each failing section back to the model with pdflatex's error; its fixed text replaces the old one."""
        fixed: dict[str, str] = {}
        for field in failing:
            text = str(getattr(sections, field))
            prompt = (
                f"pdflatex could not build the paper; it stopped in the {field} section with this error:\n{error}\n\n"
                f"The {field} section as it is:\n{text}\n\n"
                "Give the same section fixed: keep its content, citations and every number exactly; write plain prose "
                "(the lab escapes LaTeX's special characters itself); drop control characters and anything else that "
                "would break the build. Reply with the fixed text only."
            )
            fixed[field] = (await self.client.ask("fix_latex", self.system, prompt, SectionText)).text
        return sections.model_copy(update=fixed)

    async def _sections(self, context: str, check: Any) -> dict[str, str]:
        """Each section in its own turn of one conversation, so later sections see the earlier ones."""
        conv = self.client.conversation("write_section", self.system, SectionText)
        drafts: dict[str, str] = {}
        for n, (field, what) in enumerate(SECTION_PLAN):
            prompt = f"Write the {what} ({field}). Reply with its text only."
            drafts[field] = (await conv.ask(f"{context}\n\n{prompt}" if n == 0 else prompt, check)).text
        return drafts


# The order the AI Scientist writes in: the body first, the abstract and title last, once the results are written.
SECTION_PLAN = (
    ("introduction", "introduction"), ("related_work", "related work, citing only the given keys"),
    ("method", "method"), ("experimental_setup", "experimental setup"), ("results", "results"),
    ("limitations", "limitations"), ("conclusion", "conclusion"),
    ("revision_notes", "revision notes (empty in round 0; else what changed for each review item)"),
    ("abstract", "abstract"), ("title", "title (one line)"),
)


def make(seed: int, config: dict[str, Any]) -> LLMWriterMind:
    return LLMWriterMind(seed, config)
