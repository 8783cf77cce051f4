"""The offline engineer: an idea's proposed knob changes are the plan (the template declares the space)."""

from __future__ import annotations

from typing import Any

from agents.minds.base import CodePlan
from bus.schema import Idea, TemplateSpec, Usage


class OfflineEngineerMind:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self.usage = Usage()

    async def plan(self, idea: Idea, spec: TemplateSpec, files: dict[str, str], error: str = "") -> CodePlan:
        return CodePlan(overrides=dict(idea.changes), explanation=f"set {', '.join(f'{k}={v!r}' for k, v in idea.changes.items())}")


def make(seed: int, config: dict[str, Any]) -> OfflineEngineerMind:
    return OfflineEngineerMind(seed)
