"""The llm mind of `lab evolve`: K algorithms as code per call, with the best so far as examples.

It thinks with the engineer's model settings (writing code is the engineer's
trade). Only the answer's shape is checked here: code that does not define the
hook, crashes, or is refused by the guarded edit is run (or refused) and
recorded as failed by the loop — a bad candidate is data for the preference
pairs, not a reason to ask again.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from agents.evolve.workflow import ProposeRequest
from agents.minds.llm.common import LLMMind
from agents.minds.llm.errors import InvalidAnswer
from agents.minds.llm.schemas import Answer
from bus.schema.evolve import Proposal

SYSTEM = (
    "You are a machine-learning researcher who invents algorithms and writes them as correct, self-contained "
    "Python functions. Each algorithm you propose is run on a development split and scored; answer with code only "
    "in the fields asked for."
)


class AlgorithmDraft(Answer):
    name: str = Field(min_length=1, max_length=80)
    rationale: str
    code: str = Field(min_length=1)


class EvolveAnswer(Answer):
    candidates: list[AlgorithmDraft] = Field(min_length=1)


class LLMEvolveMind(LLMMind):
    role = "engineer"

    def __init__(self, seed: int, config: dict[str, Any]) -> None:
        super().__init__(seed, config)
        self.system = SYSTEM

    async def propose(self, request: ProposeRequest) -> list[Proposal]:
        def check(answer: EvolveAnswer) -> None:
            if len(answer.candidates) < request.k:
                raise InvalidAnswer(f"give {request.k} candidates, not {len(answer.candidates)}")

        answer = await self.client.ask("evolve", self.system, request.prompt, EvolveAnswer, check)
        return [Proposal(name=d.name, code=d.code, rationale=d.rationale) for d in answer.candidates[: request.k]]


def make(seed: int, config: dict[str, Any]) -> LLMEvolveMind:
    return LLMEvolveMind(seed, config)
