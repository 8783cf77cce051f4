"""The engineer's llm mind: a CodePlan of knob overrides and, when knobs cannot express the idea, code edits.

Edits are applied to a copy of the template's files and guarded (agents/codeedit.py)
before the plan is returned: a search that does not match, a syntax error, or
an edit that would stretch the job's time or relaunch it goes back to the
model with the reason, never to the executor. A code idea (``idea.code``) must
be implemented by edits; one naming a template-declared variant takes that
variant's edits as they are, without asking the model.
"""

from __future__ import annotations

from typing import Any

from agents import aisci
from agents.codeedit import EditError, apply_edits
from agents.codeideas import variant_edits
from agents.minds.base import CodePlan
from agents.minds.llm.common import LLMMind, knob_lines, show
from agents.minds.llm.errors import InvalidAnswer
from agents.minds.llm.schemas import PlanAnswer, as_dict
from bus.schema import CodeEdit, Idea, TemplateError, TemplateSpec

MAX_FILE_CHARS = 20_000  # per file shown to the model


class LLMEngineerMind(LLMMind):
    role = "engineer"

    async def plan(self, idea: Idea, spec: TemplateSpec, files: dict[str, str], error: str = "") -> CodePlan:
        template = spec
        editable = set(aisci.editable(files))  # an AI Scientist bundle: the user's original/experiment.py, not the wrapper
        declared = variant_edits(idea, spec)
        if declared is not None:
            return CodePlan(overrides=template.check_overrides(dict(idea.changes)), edits=declared,
                            explanation=f"switch in the template's code variant {idea.code.variant if idea.code else ''!r}")

        def edits_of(answer: PlanAnswer) -> list[CodeEdit]:
            return [CodeEdit(path=e.path, search=e.search, replace=e.replace) for e in answer.edits]

        def check(answer: PlanAnswer) -> None:
            try:
                template.check_overrides(as_dict(answer.overrides))
            except TemplateError as e:
                raise InvalidAnswer(f"overrides: {e}") from None
            if not answer.overrides and not answer.edits:
                raise InvalidAnswer("the plan changes nothing: give knob overrides or edits")
            if idea.code is not None and not answer.edits:
                raise InvalidAnswer("the idea is a code change: implement it with search/replace edits, knob overrides alone cannot")
            missing = sorted(set(idea.changes) - set(as_dict(answer.overrides)))
            if missing and not answer.edits:
                raise InvalidAnswer(f"the idea changes {missing} but the overrides leave them out: that would rerun the baseline")
            try:
                apply_edits(files, edits_of(answer), editable)
            except EditError as e:
                raise InvalidAnswer(f"edits: {e}") from None

        shown = {name: text[:MAX_FILE_CHARS] for name, text in sorted(files.items()) if name.endswith((".py", ".yaml", ".yml", ".md"))}
        parts = [
            f"Idea to implement: {show(idea)}",
            f"Template {template.name}: {template.task}",
            f"Knobs (prefer overrides; the runner passes them to experiment.py):\n{knob_lines(template)}",
            f"Files of the template: {show(shown)}",
            "Give knob overrides for the idea's changes. Only if a knob cannot express it, give search/replace edits to "
            f"{sorted(editable)}: 'search' must be copied exactly from the file and match once. Edits may not touch "
            "time limits, signals, processes or the network; the runner enforces those.",
        ]
        if idea.code is not None:
            parts.append(
                f"This idea changes the code: {idea.code.summary.strip()}\nImplement exactly that with search/replace edits "
                "(a new function and the line that uses it), keeping the baseline's data, seeds and metrics as they are; "
                "set the knob overrides the idea lists, if any. The paper shows your diff."
            )
        if error:
            parts.append(f"The previous attempt failed; fix the cause:\n{error[-4000:]}")
        answer = await self.ask("plan", parts, PlanAnswer, check)
        return CodePlan(
            overrides=template.check_overrides(as_dict(answer.overrides)),
            edits=edits_of(answer),
            explanation=answer.explanation,
        )


def make(seed: int, config: dict[str, Any]) -> LLMEngineerMind:
    return LLMEngineerMind(seed, config)
