"""The literature role's llm mind: search queries, and novelty verdicts that cite only papers found.

A verdict citing a key that no search returned would put an invented paper
into the record, so the check sends such an answer back to the model.
"""

from __future__ import annotations

from typing import Any

from agents.minds.base import NoveltyJudgement
from agents.minds.llm.common import LLMMind, show
from agents.minds.llm.errors import InvalidAnswer
from agents.minds.llm.prompts import untrusted
from agents.minds.llm.schemas import NoveltyAnswer, QueryList
from bus.schema import Idea, Reference


def brief(refs: list[Reference]) -> str:
    """The papers found, as one data block: titles and abstracts come from outside the lab (see ``untrusted``)."""
    papers = show([{"key": r.key, "title": r.title, "year": r.year, "venue": r.venue, "abstract": r.abstract[:600]} for r in refs])
    return untrusted("papers found (JSON)", papers, limit=12000)


class LLMLiteratureMind(LLMMind):
    role = "literature"

    async def queries(self, idea: Idea, task: str, found: list[Reference], round: int) -> list[str]:
        limit = self.client.config.query_limit

        def check(answer: QueryList) -> None:
            bad = [q for q in answer.queries if not q.strip() or len(q) > 200]
            if bad:
                raise InvalidAnswer(f"queries must be non-empty and at most 200 characters: {bad[:2]}")

        answer = await self.ask("queries", [
            f"Idea: {show(idea)}",
            f"Task of the experiment template: {task}",
            f"Search round {round}. Papers found so far: {brief(found) if found else 'none'}",
            f"Write up to {limit} short search-engine queries (keywords, not sentences) that would find prior work "
            "closest to this idea; do not repeat queries that found the papers above.",
        ], QueryList, check)
        out: list[str] = []
        for q in answer.queries:
            q = " ".join(q.split())
            if q not in out:
                out.append(q)
        return out[:limit]

    async def judge_novelty(self, idea: Idea, found: list[Reference], task: str = "") -> NoveltyJudgement:
        keys = [r.key for r in found]

        def check(answer: NoveltyAnswer) -> None:
            unknown = [k for k in answer.cited_keys if k not in keys]
            if unknown:
                raise InvalidAnswer(f"cited_keys {unknown} are not among the papers found; cite only these keys: {keys}")
            if not answer.novel and not answer.cited_keys:
                raise InvalidAnswer("a 'not novel' verdict must cite the papers that already did it")

        answer = await self.ask("judge_novelty", [
            f"Idea: {show(idea)}",
            *([f"Task of the experiment template: {task}"] if task else []),
            f"Papers found: {brief(found) if found else 'none'}",
            "Is the idea novel with respect to these papers? Novel means no paper above already tests the same "
            "change for the same effect in the same setting. Justify briefly; cite papers only by the keys above.",
        ], NoveltyAnswer, check)
        return NoveltyJudgement(novel=answer.novel, justification=answer.justification, cited_keys=list(dict.fromkeys(answer.cited_keys)))


def make(seed: int, config: dict[str, Any]) -> LLMLiteratureMind:
    return LLMLiteratureMind(seed, config)
