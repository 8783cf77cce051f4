"""The offline engineer: an idea's proposed knob changes are the plan (the template declares the space).

A code idea is implemented by the edits of the variant it names (template.yaml
``variants``); one without a declared variant needs a mind that writes code.
"""

from __future__ import annotations

from typing import Any

from agents.codeideas import variant_edits
from agents.minds.base import CodePlan
from bus.schema import Idea, TemplateError, TemplateSpec, Usage


class OfflineEngineerMind:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self.usage = Usage()

    async def plan(self, idea: Idea, spec: TemplateSpec, files: dict[str, str], error: str = "") -> CodePlan:
        knobs = f"set {', '.join(f'{k}={v!r}' for k, v in idea.changes.items())}"
        if idea.code is None:
            return CodePlan(overrides=dict(idea.changes), explanation=knobs)
        edits = variant_edits(idea, spec)
        if edits is None:
            raise TemplateError(
                f"idea {idea.id!r} changes the code ({idea.code.summary[:80]!r}) without naming a template-declared variant; "
                "the offline engineer writes no code (use the llm mind, or a variant from template.yaml)"
            )
        what = f"switch in the code variant {idea.code.variant!r} ({len(edits)} edit(s))"
        return CodePlan(overrides=dict(idea.changes), edits=edits, explanation=f"{what}; {knobs}" if idea.changes else what)


def make(seed: int, config: dict[str, Any]) -> OfflineEngineerMind:
    return OfflineEngineerMind(seed)
