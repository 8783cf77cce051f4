"""The PI: the project's state machine, as message handlers.

direction → ideas → novelty → experiments → analysis → draft → review ⇄ revision → decision.

Every decision is a pure transition in ``agents/pi/transitions.py``: a handler
reads the durable ``ProjectState``, calls the transition with what arrived and
the time, and performs the effects it returns (messages, log lines, the
reviews object, archive records). Where a transition needs the mind (ideas, a
co-PI note, an answer to a review) the handler asks it and gives the answer to
the next transition. Nothing here waits: progress happens when answers arrive,
so a PI that dies and restarts resumes from the state in KV.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents.base import Context, Rejected, Role, on
from agents.minds.base import PIMind
from agents.pi import evolve
from agents.pi import transitions as t
from agents.pi.evolve import EvolveLoop
from agents.pi.outcomes import Archive
from agents.pi.state import ProjectState

# Re-exported: they lived here before the transitions moved out, and callers import them from here.
from agents.pi.transitions import asks_repeat as asks_repeat
from agents.pi.transitions import wants_references as wants_references
from bus.errors import MindError
from bus.schema import (
    AnalysisDone,
    ApprovalPolicy,
    BudgetLimits,
    CoPINoteMsg,
    DraftReady,
    ExperimentPlanned,
    ExperimentResult,
    NoveltyVerdict,
    ProjectApproval,
    ProjectView,
    ReferencesFound,
    ReviewDone,
    StartProject,
    StepFailed,
    UsageReport,
)


@dataclass(kw_only=True)
class PIContext(Context[ProjectState | None, PIMind]):
    """The PI's context (its state is None until the project's start message arrives), with the idea archive."""

    archive: Archive | None = None  # across projects; services/wiring opens it (None: no archive, as in unit tests)
    # The lab's approval thresholds and per-project caps (config.yaml ``approval:`` / ``budgets:``); off by default.
    policy: ApprovalPolicy = field(default_factory=ApprovalPolicy)
    limits: BudgetLimits = field(default_factory=BudgetLimits)
    # GPU-hours the lab's stored projects used so far, and those of the projects a given user started
    # (services/wiring reads them; None: no per-lab or per-user cap to check).
    lab_gpu_hours: Callable[[str], Awaitable[tuple[float, float]]] | None = None
    # The evolve room's loop (agents/evolve/project.advance), for evolve projects; services/wiring gives it.
    evolve: EvolveLoop | None = None
    # The lab's stored projects, for the estimate's archived job times and tokens per step (None: no archive).
    history: Callable[[], Awaitable[list[ProjectView]]] | None = None


# A mind that cannot answer (an LLM out of retries) fails a step, not the PI; any mind raises MindError so.
MIND_FAILURES: tuple[type[Exception], ...] = (MindError,)


class PI(Role):
    name = "pi"
    State = ProjectState

    @on(StartProject)
    async def start(self, body: StartProject, env: Any, ctx: PIContext) -> None:
        policy: ApprovalPolicy = getattr(ctx, "policy", ApprovalPolicy())  # a plain Context (a test's) has neither
        limits: BudgetLimits = getattr(ctx, "limits", BudgetLimits())
        used: Callable[[str], Awaitable[tuple[float, float]]] | None = getattr(ctx, "lab_gpu_hours", None)
        capped = limits.max_gpu_hours_per_lab is not None or limits.max_gpu_hours_per_user is not None
        lab, mine = await used(body.user) if ctx.state is None and used is not None and capped else (0.0, 0.0)
        stored: Callable[[], Awaitable[list[ProjectView]]] | None = getattr(ctx, "history", None)
        history = await stored() if ctx.state is None and stored is not None else []
        await self._drive(ctx, t.start(ctx.state, body, env.project, ctx.clock(), policy, limits, lab, mine, history))
        await self._evolve(ctx)

    @on(ProjectApproval)
    async def approval(self, body: ProjectApproval, env: Any, ctx: PIContext) -> None:
        # Only the co-PI may send it (bus.permissions.SENDERS): the host dead-letters anyone else's before this runs.
        await self._drive(ctx, t.approval(self._require(ctx), body, ctx.clock()))
        await self._evolve(ctx)

    @on(CoPINoteMsg)
    async def note(self, body: CoPINoteMsg, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        note = t.new_note(st, body.note)
        if note is None:
            return
        reading = await ctx.mind.read_note(note, st.spec)
        await self._drive(ctx, t.note_read(st, note, reading, ctx.clock()))

    @on(NoveltyVerdict)
    async def verdict(self, body: NoveltyVerdict, env: Any, ctx: PIContext) -> None:
        await self._drive(ctx, t.verdict(self._require(ctx), body, ctx.clock()))

    @on(ExperimentPlanned)
    async def planned(self, body: ExperimentPlanned, env: Any, ctx: PIContext) -> None:
        if (st := self._require(ctx)).evolve is not None:
            await self._drive(ctx, await evolve.advance(evolve.planned(st, body), ctx.clock(), self._loop(ctx)))
            return
        await self._drive(ctx, t.planned(st, body, ctx.clock()))

    @on(ExperimentResult)
    async def result(self, body: ExperimentResult, env: Any, ctx: PIContext) -> None:
        if (st := self._require(ctx)).evolve is not None:
            await self._drive(ctx, await evolve.advance(evolve.result(st, body), ctx.clock(), self._loop(ctx)))
            return
        await self._drive(ctx, t.result(st, body, ctx.clock()))

    @on(StepFailed)
    async def step_failed(self, body: StepFailed, env: Any, ctx: PIContext) -> None:
        if (st := self._require(ctx)).evolve is not None:
            await self._drive(ctx, await evolve.advance(evolve.step_failed(st, body), ctx.clock(), self._loop(ctx)))
            return
        await self._drive(ctx, t.step_failed(st, body, ctx.clock()))

    @on(AnalysisDone)
    async def analysis(self, body: AnalysisDone, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        # The archive records carry the message's time, not the clock's, so a redelivery writes the same records.
        when = env.created_at.timestamp() if hasattr(env, "created_at") else st.started_at
        await self._drive(ctx, t.analysis_done(st, body, when))

    @on(DraftReady)
    async def draft(self, body: DraftReady, env: Any, ctx: PIContext) -> None:
        await self._drive(ctx, t.draft_ready(self._require(ctx), body))

    @on(ReviewDone)
    async def review(self, body: ReviewDone, env: Any, ctx: PIContext) -> None:
        await self._drive(ctx, t.review_done(self._require(ctx), body, ctx.clock()))

    @on(ReferencesFound)
    async def references_found(self, body: ReferencesFound, env: Any, ctx: PIContext) -> None:
        await self._drive(ctx, t.references_found(self._require(ctx), body, ctx.clock()))

    @on(UsageReport)
    async def usage(self, body: UsageReport, env: Any, ctx: PIContext) -> None:
        await self._drive(ctx, t.usage_reported(self._require(ctx), env.sender, body.usage))

    # ------------------------------------------------------------ performing a step

    async def _drive(self, ctx: PIContext, step: t.Step) -> None:
        """Keep each step's state and perform its effects; where it asks the mind, ask, and go on with the step the answer makes."""
        while True:
            ctx.state = step.state
            for effect in step.effects:
                await self._perform(ctx, effect)
            if step.ask is None:
                return
            step = await self._answer(ctx, step.state, step.ask)

    async def _perform(self, ctx: PIContext, effect: t.Effect) -> None:
        if isinstance(effect, t.Send):
            ctx.send(effect.body, effect.to)
        elif isinstance(effect, t.Log):
            getattr(ctx.log, effect.level)(effect.event, **effect.fields)
        elif isinstance(effect, t.PutArtifact):
            await ctx.artifacts.put(effect.name, effect.data)
        elif isinstance(effect, t.Remember):
            archive = self._archive(ctx)
            if archive is not None:
                await archive.put(effect.record)

    async def _answer(self, ctx: PIContext, st: ProjectState, ask: t.Ask) -> t.Step:
        """What the mind (and, for ideas, the archive) says to an ask, as the next step."""
        if isinstance(ask, t.ProposeIdeas):
            archive = self._archive(ctx)
            if archive is not None:
                st = t.with_prior(st, await archive.records(st.template))
            try:
                ideas = await ctx.mind.propose_ideas(t.idea_context(st, ask.n))
            except MIND_FAILURES as e:
                return t.wave_failed(st, e, ask.take)
            return t.wave_proposed(st, ideas, ask.take)
        try:
            responses = await ctx.mind.answer_review(ask.context)
        except MIND_FAILURES as e:
            return t.finish(st, accepted=False, reason=f"could not answer the review: {e}", failed=True)
        return t.review_answered(st, ask.context.items, responses, ctx.clock())

    async def _evolve(self, ctx: PIContext) -> None:
        """An evolve project past its estimate (and approval) asks its loop how far the results in hand take it."""
        st = ctx.state
        if st is not None and st.evolve is not None and st.stage == "experiments":
            await self._drive(ctx, await evolve.advance(st, ctx.clock(), self._loop(ctx)))

    def _loop(self, ctx: PIContext) -> EvolveLoop | None:
        loop: EvolveLoop | None = getattr(ctx, "evolve", None)  # a plain Context (a test's) has none
        return loop

    def _archive(self, ctx: PIContext) -> Archive | None:
        # A plain Context (a test's) has no archive port.
        archive: Archive | None = getattr(ctx, "archive", None)
        return archive

    def _require(self, ctx: PIContext) -> ProjectState:
        if ctx.state is None:
            raise UnknownProject(f"no project {ctx.project!r}: it was never started")
        return ctx.state


class UnknownProject(Rejected):
    """A message for a project the PI never started (dead-lettered by the host)."""


ROLE = PI
