"""The literature role: novelty checks by a bounded search loop, with real references.

A check runs up to ``rounds`` rounds: the mind proposes queries, the fallback
chain of sources answers (cached), the mind refines from what was found, then
judges novelty citing found keys only. The verdict carries the real entries
(the writer cites nothing else), the sources that answered and the queries
run. Sources failing never fail the check: they are logged and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.base import Context, Role, on
from agents.lit.bibtex import unique_keys
from agents.lit.chain import FallbackChain, same_paper
from agents.lit.config import close_sources, open_sources, source_names
from agents.minds.base import LiteratureMind, NoveltyJudgement
from bus.schema import (
    CoPINoteMsg,
    Envelope,
    NoteAck,
    NoveltyCheck,
    NoveltyVerdict,
    Reference,
    ReferenceSearch,
    ReferencesFound,
    StepFailed,
)

_QUOTED = re.compile(r"[\"“]([^\"”]{3,80})[\"”]")


class Settings(BaseModel):
    """How hard a check searches, and where: the lab config's ``literature`` section (``services/wiring``)."""

    model_config = ConfigDict(extra="forbid")
    sources: list[str] | None = None  # None: LAB_LIT_SOURCES, else semantic_scholar,openalex,local,template
    rounds: int = Field(default=3, ge=1, le=10)
    queries_per_round: int = Field(default=3, ge=1, le=10)
    per_query: int = Field(default=8, ge=1, le=100)
    max_references: int = Field(default=20, ge=1, le=200)
    web: dict[str, dict[str, Any]] = {}  # per web source: constructor options (api_url, timeouts, ...)


class State(BaseModel):
    model_config = ConfigDict(extra="forbid")
    extra_queries: list[str] = []  # quoted phrases from co-PI notes, searched in every check

    @model_validator(mode="before")
    @classmethod
    def _drop_retired(cls, data: Any) -> Any:
        # Older labs stored each idea's novelty verdict here, written and never read; their stored state still loads.
        return {k: v for k, v in data.items() if k != "verdicts"} if isinstance(data, dict) else data


def task_text(body: NoveltyCheck) -> str:
    """The template's task for the mind; keywords on their own line (see agents/literature/prompt.md)."""
    task = body.task or body.template
    return f"{task}\nKeywords: {', '.join(body.keywords)}" if body.keywords else task


@dataclass(kw_only=True)
class LiteratureContext(Context[State, LiteratureMind]):
    """The literature role's context: its settings, and the lab home whose library it searches."""

    settings: Settings = field(default_factory=lambda: Settings.model_validate({}))
    lab_home: Path | None = None  # None: the default lab home


WEB_SOURCES = ("semantic_scholar", "openalex")
WEB_NAMES = {"semantic_scholar": "Semantic Scholar", "openalex": "OpenAlex"}
_said_local_only: set[str] = set()  # projects already told, so the line is said once per project and process


def local_only_notice(names: list[str], down: dict[str, str]) -> str | None:
    """The one line a person reads when no web source answered, else None."""
    web = [n for n in names if n in WEB_SOURCES]
    if web and any(n not in down for n in web):
        return None
    if not web:
        return f"literature: web sources off (sources: {', '.join(names)}); working from the local library only"
    return f"literature: {' and '.join(WEB_NAMES[n] for n in web)} unreachable; working from the local library only"


def say_if_local_only(ctx: LiteratureContext, names: list[str], chain: FallbackChain) -> None:
    """One line when no web source answers: the user must know the novelty check saw only the local library."""
    notice = local_only_notice(names, chain.down)
    if notice is None or ctx.project in _said_local_only:
        return
    _said_local_only.add(ctx.project)
    reasons = {n: chain.down[n] for n in names if n in chain.down}
    ctx.log.warning("lit_local_only", message=notice, reasons=reasons)


def _merge(found: list[Reference], new: list[Reference]) -> list[Reference]:
    return found + [r for r in new if not any(same_paper(r, old) for old in found)]


def _verdict_refs(found: list[Reference], cited: list[str], cap: int) -> list[Reference]:
    first = [r for r in found if r.key in cited]
    return first + [r for r in found if r.key not in cited][: max(cap - len(first), 0)]


class Literature(Role):
    name: ClassVar = "literature"
    State: ClassVar = State

    @on(NoveltyCheck)
    async def novelty_check(self, body: NoveltyCheck, env: Envelope, ctx: LiteratureContext) -> None:
        settings = ctx.settings
        names, unknown = source_names(settings.sources)
        if unknown:
            ctx.log.warning("lit_unknown_sources", unknown=unknown, known=names)
        sources, skipped = await _open(ctx, names, settings, body.template_object)
        for name, reason in skipped.items():
            ctx.log.warning("lit_source_skipped", source=name, reason=reason)
        chain = FallbackChain(sources, ctx.cache, ctx.log)
        try:
            found, queries, answered = await self._search(body, ctx, chain, settings)
            say_if_local_only(ctx, names, chain)
            judgement = await ctx.mind.judge_novelty(body.idea, found, task=task_text(body))
        except Exception as e:  # the mind (an LLM, maybe) failed: the PI decides what follows
            ctx.log.error("lit_mind_failed", idea=body.idea.id, reason=f"{type(e).__name__}: {e}")
            ctx.send(StepFailed(step="novelty_check", reason=f"literature mind failed: {e}", ref=body.ref), to="pi")
            return
        finally:
            close_sources(sources)
        ctx.send(self._verdict(body, ctx, judgement, found, queries, answered, chain, skipped, settings), to="pi")

    async def _search(
        self, body: NoveltyCheck, ctx: LiteratureContext, chain: FallbackChain, settings: Settings
    ) -> tuple[list[Reference], list[str], list[str]]:
        found: list[Reference] = []
        queries: list[str] = []
        answered: list[str] = []
        extra = list(ctx.state.extra_queries)
        for round_ in range(settings.rounds):
            proposed = await ctx.mind.queries(body.idea, task_text(body), found, round_)
            if round_ == 0:
                proposed = [*proposed, *extra]
            fresh = [q for q in dict.fromkeys(" ".join(str(q).split()) for q in proposed) if q and q not in queries]
            fresh = fresh[: settings.queries_per_round + (len(extra) if round_ == 0 else 0)]
            if not fresh:
                break
            for query in fresh:
                answer = await chain.search(query, settings.per_query)
                queries.append(query)
                answered += [s for s in answer.answered if s not in answered]
                found = _merge(found, answer.refs)
                ctx.log.info(
                    "lit_query", query=query, round=round_, answered_by=answer.answered or ["none"],
                    n=len(answer.refs), cache_hits=answer.cache_hits, failures=answer.failures,
                )
        return unique_keys(found), queries, answered

    def _verdict(
        self,
        body: NoveltyCheck,
        ctx: LiteratureContext,
        judgement: NoveltyJudgement,
        found: list[Reference],
        queries: list[str],
        answered: list[str],
        chain: FallbackChain,
        skipped: dict[str, str],
        settings: Settings,
    ) -> NoveltyVerdict:
        keys = {r.key for r in found}
        invented = [k for k in judgement.cited_keys if k not in keys]
        if invented:
            ctx.log.warning("lit_mind_cited_unknown_keys", keys=invented)
        cited = [k for k in judgement.cited_keys if k in keys]
        justification = judgement.justification.strip()
        if not found:
            problems = {**skipped, **chain.down}
            why = "; ".join(f"{k}: {v}" for k, v in problems.items())
            justification += f" The search found no papers for {len(queries)} queries" + (f" ({why})." if why else ".")
        ctx.log.info("lit_verdict", idea=body.idea.id, novel=judgement.novel, n_refs=len(found), sources=answered)
        return NoveltyVerdict(
            idea_id=body.idea.id,
            novel=judgement.novel,
            justification=justification,
            references=_verdict_refs(found, cited, settings.max_references),
            sources=answered,
            queries=queries,
        )

    @on(ReferenceSearch)
    async def reference_search(self, body: ReferenceSearch, env: Envelope, ctx: LiteratureContext) -> None:
        """References a review asked for: run the PI's queries through the same sources, return only new papers.

        Why here and not in the writer: the literature role owns the sources,
        their cache and backoff; the writer only cites what the PI hands it.
        """
        settings = ctx.settings
        names, _ = source_names(settings.sources)
        sources, skipped = await _open(ctx, names, settings, body.template_object)
        chain = FallbackChain(sources, ctx.cache, ctx.log)
        found: list[Reference] = []
        answered: list[str] = []
        try:
            for query in body.queries:
                answer = await chain.search(query, settings.per_query)
                answered += [s for s in answer.answered if s not in answered]
                found = _merge(found, answer.refs)
        finally:
            close_sources(sources)
        known = set(body.known)
        new = [r for r in unique_keys(found) if r.key not in known][: settings.max_references]
        reason = ""
        if not new:
            problems = {**skipped, **chain.down}
            reason = (f"no paper beyond the {len(known)} already cited answered {len(body.queries)} queries"
                      + (f" ({'; '.join(f'{k}: {v}' for k, v in problems.items())})" if problems else ""))
        ctx.log.info("lit_references_found", item=body.item_id, n=len(new), sources=answered)
        ctx.send(ReferencesFound(item_id=body.item_id, references=new, sources=answered, reason=reason), to="pi")

    @on(CoPINoteMsg)
    async def copi_note(self, body: CoPINoteMsg, env: Envelope, ctx: LiteratureContext) -> None:
        phrases = [p.strip() for p in _QUOTED.findall(body.note.text) if p.strip()]
        new = [p for p in phrases if p not in ctx.state.extra_queries]
        ctx.state.extra_queries.extend(new)
        if phrases:
            understood = f"will also search for {', '.join(repr(p) for p in phrases)} in every novelty check"
        else:
            understood = "noted; quote a phrase (\"...\") to have it searched in every novelty check"
        ctx.send(NoteAck(note_id=body.note.id, understood=understood, constraints={"extra_queries": phrases}), to="copi")


async def _open(ctx: LiteratureContext, names: list[str], settings: Any, template_object: str) -> tuple[Any, dict[str, str]]:
    """The literature sources for one request: the lab's library, the template's bibliography, the web ones set."""
    return await open_sources(names, lab_home=ctx.lab_home, artifacts=ctx.artifacts, template_object=template_object, web=settings.web)


ROLE = Literature
