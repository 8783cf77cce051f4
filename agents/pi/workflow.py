"""The PI: the project's state machine.

direction → ideas → novelty → experiments → analysis → draft → review ⇄ revision → decision.

Every handler reads the durable ``ProjectState``, decides, and sends; the
creative steps (ideas, reading a co-PI note, answering a review) go to the
mind. Nothing here waits: progress happens when answers arrive, so a PI that
dies and restarts resumes from the state in KV.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from agents.pi import outcomes as outcome
from agents.base import Context, Rejected, Role, on
from agents.minds.base import IdeaContext, PIMind, ReviewContext
from agents.pi.outcomes import Archive
from agents.pi.state import ExperimentState, IdeaState, ProjectState
from agents.pi.scores import rank
from bus.errors import MindError, MindUnavailable
from bus.schema import (
    BASELINE,
    AnalysisDone,
    AnalysisRequest,
    CoPINoteMsg,
    Decision,
    DraftReady,
    DraftRequest,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    ArchiveRecord,
    Idea,
    IdeaOutcome,
    NoteAck,
    NoveltyCheck,
    NoveltyVerdict,
    Rebuttal,
    ReferenceSearch,
    ReferencesFound,
    ReviewDone,
    ReviewRequest,
    StartProject,
    StepFailed,
    UsageReport,
    signature_of,
)

IDEAS_PER_WAVE = 2


@dataclass(kw_only=True)
class PIContext(Context[ProjectState | None, PIMind]):
    """The PI's context (its state is None until the project's start message arrives), with the idea archive."""

    archive: Archive | None = None  # across projects; services/wiring opens it (None: no archive, as in unit tests)

# The mind proposes this many times a wave's ideas; the PI ranks them by score and runs the best (agents/pi/scores.py).
PROPOSALS_PER_IDEA = 2
# A direction that asks for ideas tried before (in this project or the archive) to be run again.
# The archive's most recent records a project keeps in its state and shows its mind (the state is one KV value).
PRIOR_KEPT = 200
_REPEAT = re.compile(r"\b(repeat|re-?run|again|replicate|reproduce)\b", re.I)
_NO_REPEAT = re.compile(r"\b(don'?t|do not|never|avoid|no|without)\b\W+(\w+\W+){0,3}(repeat|re-?run|again|replicate|reproduce)", re.I)


def asks_repeat(text: str) -> bool:
    """Whether a direction or a note asks for ideas tried before to run again ("do not repeat" does not)."""
    return bool(_REPEAT.search(text)) and not _NO_REPEAT.search(text)
# A mind that cannot answer (an LLM out of retries) fails a step, not the PI; any mind raises MindError so.
MIND_FAILURES: tuple[type[Exception], ...] = (MindError,)


class PI(Role):
    name = "pi"
    State = ProjectState

    # ------------------------------------------------------------ start

    @on(StartProject)
    async def start(self, body: StartProject, env: Any, ctx: PIContext) -> None:
        if ctx.state is not None:
            ctx.log.info("project already started", stage=ctx.state.stage)
            return
        ctx.state = ProjectState(
            project=env.project,
            template=body.template,
            template_object=body.template_object,
            spec=body.spec,
            direction=body.direction,
            seed=body.seed,
            budget=body.budget,
            fast=body.fast,
            profile=body.profile,
            mind=body.mind,
            started_at=ctx.clock(),
        )
        st: ProjectState = ctx.state
        # The baseline needs no novelty check; it runs while ideas are checked.
        self._request_experiment(ctx, st, BASELINE, None, self._seeds(st, st.spec.seeds))
        await self._new_wave(ctx, st)

    # ------------------------------------------------------------ co-PI

    @on(CoPINoteMsg)
    async def note(self, body: CoPINoteMsg, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        note = body.note.model_copy(update={"received_at": None})
        if any(n.id == note.id for n in st.notes):
            return
        reading = await ctx.mind.read_note(note, st.spec)
        st.notes.append(note)
        for key, value in reading.constraints.items():
            st.constraints[key] = value
        ctx.send(NoteAck(note_id=note.id, understood=reading.understood, constraints=reading.constraints), "copi")
        if reading.parsed:
            ctx.log.info("co-PI note taken", note=note.text, constraints=reading.constraints)
        else:
            ctx.log.warning("co-PI note not understood", note=note.text, answer=reading.understood)
        if reading.constraints.get("stop") and st.stage not in ("done", "failed"):
            await self._finish(ctx, st, accepted=False, reason=f"stopped by the co-PI: {note.text!r}", failed=True)

    # ------------------------------------------------------------ ideas and novelty

    async def _new_wave(self, ctx: PIContext, st: ProjectState) -> bool:
        # Ideas found not novel do not use up the idea budget, but proposals are capped all the same.
        counted = sum(1 for s in st.ideas.values() if s.status != "not_novel")
        left = min(st.budget.max_ideas - counted, 3 * st.budget.max_ideas - len(st.ideas))
        if left <= 0 or self._out_of_time(ctx, st):
            return False
        st.wave += 1
        take = min(IDEAS_PER_WAVE, left)
        archive = self._archive(ctx)
        if archive is not None:
            # Refreshed each wave and kept in the state, so a redelivered message sees what the first delivery saw.
            st.prior = [r for r in await archive.records(st.template) if r.project != st.project][-PRIOR_KEPT:]
        try:
            ideas = await self._propose(ctx, st, self._outcomes(st), take * PROPOSALS_PER_IDEA)
        except MIND_FAILURES as e:
            ctx.log.error("no ideas: the mind failed", reason=str(e))
            if isinstance(e, MindUnavailable):  # the analysis and the paper need the model too: end once the runs are in
                st.halt = f"ideas failed: {e.reason}"
            return False
        ideas = self._fresh(st, ideas)
        ideas, dropped = rank(ideas)
        if dropped:
            ctx.log.info("ideas dropped under the score floor", dropped=dropped)
        ideas = ideas[:take]
        for idea in ideas:
            st.ideas[idea.id] = IdeaState(idea=idea, wave=st.wave)
            ctx.send(
                NoveltyCheck(
                    idea=idea,
                    template=st.template,
                    template_object=st.template_object,
                    task=st.spec.task,
                    keywords=st.spec.keywords,
                ),
                "literature",
            )
        ctx.log.info("ideas proposed", wave=st.wave, ideas=[i.id for i in ideas])
        return bool(ideas)

    def _repeat_ok(self, st: ProjectState) -> bool:
        # Read from the words as well as from the mind's constraints, so it holds whatever mind reads the notes.
        return bool(st.constraints.get("repeat")) or any(asks_repeat(t) for t in [st.direction, *(n.text for n in st.notes)])

    def _fresh(self, st: ProjectState, ideas: list[Idea]) -> list[Idea]:
        """Ideas not proposed before in this project, nor (unless repeats are asked for) tried by an earlier one."""
        mine = {signature_of(s.idea) for s in st.ideas.values()}
        elsewhere = set() if self._repeat_ok(st) else {r.signature for r in st.prior}
        out, seen = [], set()
        for idea in ideas:
            sig = signature_of(idea)
            if idea.id in st.ideas or idea.id == BASELINE or sig in mine or sig in elsewhere or sig in seen:
                continue
            seen.add(sig)
            out.append(idea)
        return out

    def _outcomes(self, st: ProjectState) -> dict[str, IdeaOutcome]:
        """Every idea's outcome so far: the report's comparison once analysed, else read from its runs."""
        metric = st.spec.primary_metric
        direction = st.spec.metrics[metric].direction
        exploratory = [r for e in st.experiments.values() if not e.confirmation for r in e.runs]
        out: dict[str, IdeaOutcome] = {}
        for idea_id, s in st.ideas.items():
            found = outcome.from_report(s.idea, st.report) if st.report is not None else None
            if found is None and s.status == "done":
                found = outcome.from_runs(s.idea, exploratory, metric, direction)
            if found is None:
                status = {"done": "inconclusive", "failed": "failed", "not_novel": "not_novel", "skipped": "skipped"}.get(s.status, "pending")
                found = outcome.unmeasured(s.idea, status, s.reason)  # type: ignore[arg-type]
            out[idea_id] = found
        return out

    def _archive(self, ctx: PIContext) -> Archive | None:
        # A plain Context (a test's) has no archive port.
        archive: Archive | None = getattr(ctx, "archive", None)
        return archive

    async def _record(self, ctx: PIContext, st: ProjectState, env: Any) -> None:
        """Write every idea this project ran to the archive.

        Key and content derive from the state and the message only (its
        created_at, not the clock), so a redelivery writes the same record.
        """
        archive = self._archive(ctx)
        if archive is None:
            return
        when = env.created_at.timestamp() if hasattr(env, "created_at") else st.started_at
        for idea_id, o in self._outcomes(st).items():
            if o.status in ("pending", "not_novel", "skipped"):
                continue  # never ran: nothing came of it
            idea = st.ideas[idea_id].idea
            await archive.put(ArchiveRecord(
                template=st.template, signature=signature_of(idea), project=st.project,
                recorded_at=when, direction=st.direction, round=st.round, outcome=o,
            ))

    async def _propose(self, ctx: PIContext, st: ProjectState, outcomes: dict[str, IdeaOutcome], n: int) -> list[Idea]:
        baseline_walls = [r.wall_s for r in st.runs() if r.idea_id == BASELINE and r.status == "succeeded" and r.wall_s > 0]
        return await ctx.mind.propose_ideas(
            IdeaContext(
                spec=st.spec,
                direction=st.direction,
                notes=st.notes,
                constraints=st.constraints,
                previous=[s.idea for s in st.ideas.values()],
                outcomes=outcomes,
                prior=st.prior,
                repeat_ok=self._repeat_ok(st),
                profile=st.profile,
                baseline_wall_s=max(baseline_walls) if baseline_walls else None,
                n=n,
                seed=st.seed + st.wave,
            )
        )

    @on(NoveltyVerdict)
    async def verdict(self, body: NoveltyVerdict, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        state = st.ideas.get(body.idea_id)
        if state is None or state.status != "checking":
            return
        state.verdict = body
        for ref in body.references:
            st.references.setdefault(ref.key, ref)
        if not body.novel:
            state.status = "not_novel"
            state.reason = body.justification
        elif st.runs_used >= st.budget.max_runs:
            state.status = "skipped"
            state.reason = "run budget spent"
        else:
            state.status = "running"
            self._request_experiment(ctx, st, state.idea.id, state.idea, self._seeds(st, st.spec.seeds))
        await self._advance(ctx, st)

    # ------------------------------------------------------------ experiments

    def _seeds(self, st: ProjectState, n: int) -> list[int]:
        return list(range(n))

    def _request_experiment(
        self, ctx: PIContext, st: ProjectState, idea_id: str, idea: Idea | None, seeds: list[int], confirmation: bool = False
    ) -> None:
        exp_id = f"x{len(st.experiments) + 1:02d}-{idea_id}"[:60]
        st.experiments[exp_id] = ExperimentState(experiment_id=exp_id, idea_id=idea_id, seeds=seeds, round=st.round, confirmation=confirmation)
        st.stage = "experiments"
        ctx.send(
            ExperimentRequest(
                experiment_id=exp_id,
                idea=idea,
                seeds=seeds,
                template=st.template,
                template_object=st.template_object,
                spec=st.spec,
                fast=st.fast,
                profile=st.profile,
            ),
            "engineer",
        )

    @on(ExperimentPlanned)
    async def planned(self, body: ExperimentPlanned, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        exp = st.experiments.get(body.experiment_id)
        if exp is None or not body.rejected or exp.status != "requested":
            return
        exp.status, exp.reason = "failed", body.rejected
        self._idea_failed(st, exp.idea_id, body.rejected)
        await self._advance(ctx, st)

    @on(ExperimentResult)
    async def result(self, body: ExperimentResult, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        exp = st.experiments.get(body.experiment_id)
        if exp is None or exp.status != "requested":
            return
        exp.runs = body.runs
        ok = any(r.status == "succeeded" for r in body.runs)
        exp.status = "done" if ok else "failed"
        exp.reason = "; ".join(r.reason for r in body.runs if r.reason)
        idea = st.ideas.get(exp.idea_id)
        if idea is not None and idea.status == "running":
            if ok:
                idea.status = "done"
            else:
                self._idea_failed(st, exp.idea_id, exp.reason or "all runs failed")
        await self._advance(ctx, st)

    @on(StepFailed)
    async def step_failed(self, body: StepFailed, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        ctx.log.warning("step failed", step=body.step, reason=body.reason, ref=body.ref)
        if body.step == "experiment" and body.ref in st.experiments:
            exp = st.experiments[body.ref]
            if exp.status == "requested":
                exp.status, exp.reason = "failed", body.reason
                self._idea_failed(st, exp.idea_id, body.reason)
        elif body.step == "novelty_check" and body.ref in st.ideas and st.ideas[body.ref].status == "checking":
            st.ideas[body.ref].status, st.ideas[body.ref].reason = "skipped", f"novelty check failed: {body.reason}"
        elif body.step in ("analysis", "draft", "review"):
            await self._finish(ctx, st, accepted=False, reason=f"{body.step} failed: {body.reason}", failed=True)
            return
        await self._advance(ctx, st)

    def _idea_failed(self, st: ProjectState, idea_id: str, reason: str) -> None:
        idea = st.ideas.get(idea_id)
        if idea is not None and idea.status in ("running", "checking", "novel"):
            idea.status, idea.reason = "failed", reason

    # ------------------------------------------------------------ moving on

    async def _advance(self, ctx: PIContext, st: ProjectState) -> None:
        """Decide what follows once nothing is outstanding."""
        if st.stage not in ("ideas", "experiments"):
            return
        busy = any(s.status == "checking" for s in st.ideas.values()) or any(
            e.status == "requested" for e in st.experiments.values()
        ) or bool(st.citations_pending)
        if busy:
            return
        if not st.halt and st.round == 0 and not st.confirmed and await self._new_wave(ctx, st):
            return
        if st.halt:
            await self._finish(ctx, st, accepted=False, reason=st.halt, failed=True)
            return
        baseline_ok = any(e.idea_id == BASELINE and e.status == "done" for e in st.experiments.values())
        if not baseline_ok and st.round == 0:
            await self._finish(ctx, st, accepted=False, reason="the baseline failed to run; no fair comparison is possible", failed=True)
            return
        st.stage = "analysis"
        ctx.send(AnalysisRequest(round=st.round, spec=st.spec, runs=st.runs(), confirmation=st.confirmation_ids()), "analyst")

    @on(AnalysisDone)
    async def analysis(self, body: AnalysisDone, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        if st.stage != "analysis" or body.report.round != st.round:
            return
        st.report = body.report
        await self._record(ctx, st, env)
        if self._confirm(ctx, st, body.report):
            return
        st.stage = "draft"
        ctx.send(
            DraftRequest(
                round=st.round,
                spec=st.spec,
                direction=st.direction,
                ideas=[s.idea for s in st.ideas.values() if s.status in ("done", "failed", "running")],
                report=body.report,
                references=list(st.references.values()),
                notes=st.notes,
                revision_items=st.revision_items,
                responses=st.responses,
                usage=st.usage,
                not_novel={s.idea.id: s.reason for s in st.ideas.values() if s.status == "not_novel"},
            ),
            "writer",
        )

    @on(DraftReady)
    async def draft(self, body: DraftReady, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        if st.stage != "draft" or body.round != st.round or st.report is None:
            return
        st.draft = body
        st.stage = "review"
        ctx.send(
            ReviewRequest(
                round=st.round,
                draft=body,
                report=st.report,
                references=list(st.references.values()),
                max_rounds=st.budget.max_revision_rounds,
            ),
            "reviewer",
        )

    @on(ReviewDone)
    async def review(self, body: ReviewDone, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        if st.stage != "review" or body.round != st.round:
            return
        st.reviews.append(body)
        meta = body.meta
        if meta.decision == "accept":
            await self._finish(ctx, st, accepted=True, reason=f"accepted in round {st.round} (meta-review overall {meta.overall:.1f})")
            return
        if meta.decision == "reject":
            await self._finish(ctx, st, accepted=False, reason=f"rejected in round {st.round}: {meta.summary}")
            return
        if st.round >= st.budget.max_revision_rounds or self._out_of_time(ctx, st):
            why = "revision rounds spent" if st.round >= st.budget.max_revision_rounds else "wall time spent"
            await self._finish(ctx, st, accepted=False, reason=f"not accepted: {why} with {len(meta.revision_items)} items open")
            return
        try:
            responses = await ctx.mind.answer_review(
                ReviewContext(
                    items=meta.revision_items,
                    report=st.report,
                    runs_left=st.budget.max_runs - st.runs_used,
                    rounds_left=st.budget.max_revision_rounds - st.round,
                )
            )
        except MIND_FAILURES as e:
            await self._finish(ctx, st, accepted=False, reason=f"could not answer the review: {e}", failed=True)
            return
        st.revision_items, st.responses = meta.revision_items, responses
        st.round += 1
        ctx.send(Rebuttal(round=st.round - 1, responses=responses), "reviewer")
        items = {i.id: i for i in meta.revision_items}
        for r in responses:
            item = items.get(r.item_id)
            if r.action == "act" and item is not None and item.kind == "more_seeds":
                self._more_seeds(ctx, st, item.target)
            if r.action == "act" and item is not None and wants_references(item):
                self._search_references(ctx, st, item.id)
        st.stage = "experiments"
        await self._advance(ctx, st)

    def _confirm(self, ctx: PIContext, st: ProjectState, report: Any) -> bool:
        """Ask for a confirmation run on fresh seeds of every significant primary finding not yet confirmed.

        A finding becomes a headline only once it replicates, so this is
        budgeted before the draft: the baseline and each such idea run again on
        seeds no arm has used, and the analysis is redone with them apart.
        Returns whether anything was requested (then the draft waits).
        """
        todo = [
            c.idea_id for c in report.comparisons
            if c.metric == report.primary_metric and c.verdict != "inconclusive" and c.replicated is None
            and c.idea_id in st.ideas and c.idea_id not in st.confirmed
        ]
        if not todo:
            return False
        if st.runs_used + len(todo) + 1 > st.budget.max_runs:
            ctx.log.warning("no confirmation run: run budget spent", ideas=todo, runs_left=st.budget.max_runs - st.runs_used)
            return False
        used = {s for e in st.experiments.values() for s in e.seeds}
        start = max(used, default=-1) + 1
        seeds = list(range(start, start + st.spec.seeds))
        st.confirmed = st.confirmed + todo
        ctx.log.info("confirmation runs", ideas=todo, seeds=seeds)
        self._request_experiment(ctx, st, BASELINE, None, seeds, confirmation=True)
        for idea_id in todo:
            self._request_experiment(ctx, st, idea_id, st.ideas[idea_id].idea, seeds, confirmation=True)
        return True

    def _search_references(self, ctx: PIContext, st: ProjectState, item_id: str) -> None:
        """Ask the literature agent for papers the review wants; the draft waits for the answer."""
        keywords = [str(k) for k in st.spec.keywords]
        topic = keywords[0] if keywords else (st.spec.name or st.template).replace("_", " ")
        changes = [k.replace("_", " ") for s in st.ideas.values() if s.status in ("done", "failed") for k in s.idea.changes]
        queries = list(dict.fromkeys([*keywords[:4], *(f"{c} {topic}" for c in changes)]))[:8] or [topic]
        st.citations_pending = [*st.citations_pending, item_id]
        ctx.send(ReferenceSearch(item_id=item_id, queries=queries, template_object=st.template_object, known=sorted(st.references)), "literature")

    @on(ReferencesFound)
    async def references_found(self, body: ReferencesFound, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        if body.item_id not in st.citations_pending:
            return
        st.citations_pending = [i for i in st.citations_pending if i != body.item_id]
        new = [r for r in body.references if r.key not in st.references]
        for ref in new:
            st.references[ref.key] = ref
        if not new:
            # "act" must change the paper; with nothing new to cite it cannot, so the answer becomes a rebuttal.
            st.responses = [
                r.model_copy(update={"action": "rebut", "text": f"the literature agent found nothing new to cite: {body.reason or 'no reason given'}"})
                if r.item_id == body.item_id else r
                for r in st.responses
            ]
        else:
            st.responses = [
                r.model_copy(update={"text": f"{r.text} (added {', '.join(x.key for x in new)})"}) if r.item_id == body.item_id else r
                for r in st.responses
            ]
        ctx.log.info("references added", item=body.item_id, keys=[r.key for r in new])
        await self._advance(ctx, st)

    def _more_seeds(self, ctx: PIContext, st: ProjectState, target: str) -> None:
        """Run more seeds for an idea, and for the baseline too, so both arms keep equal seeds."""
        arms = [target] if target == BASELINE else [target, BASELINE]
        for arm in arms:
            if arm != BASELINE and arm not in st.ideas:
                continue
            if st.runs_used >= st.budget.max_runs:
                return
            have = {s for e in st.experiments.values() if e.idea_id == arm for s in e.seeds}
            if any(e.idea_id == arm and e.round == st.round for e in st.experiments.values()):
                continue  # already asked this round
            start = max(have, default=-1) + 1
            n = st.spec.seeds
            idea = st.ideas[arm].idea if arm in st.ideas else None
            self._request_experiment(ctx, st, arm, idea, list(range(start, start + n)))

    # ------------------------------------------------------------ the end

    async def _finish(self, ctx: PIContext, st: ProjectState, *, accepted: bool, reason: str, failed: bool = False) -> None:
        st.stage = "failed" if failed else "done"
        st.accepted = accepted
        st.outcome = reason
        review_object = None
        if st.reviews:
            review_object = f"{st.project}/review.json"
            # Putting the same bytes under the same name twice is harmless, so a redelivery may repeat it.
            reviews = [r.model_dump(mode="json") for r in st.reviews]
            await ctx.artifacts.put(review_object, json.dumps(reviews, indent=2).encode())
        ctx.send(Decision(accepted=accepted, reason=reason, rounds=st.round, paper=st.draft, review_object=review_object), "all")
        ctx.log.info("decision", accepted=accepted, reason=reason)

    @on(UsageReport)
    async def usage(self, body: UsageReport, env: Any, ctx: PIContext) -> None:
        st = self._require(ctx)
        st.usage[env.sender] = body.usage
        await self._enforce_spend(ctx, st)

    async def _enforce_spend(self, ctx: PIContext, st: ProjectState) -> None:
        for limit, spent, what in (
            (st.budget.max_tokens, sum(u.prompt_tokens + u.completion_tokens for u in st.usage.values()), "token"),
            (st.budget.max_cost_usd, sum(u.cost_usd for u in st.usage.values()), "money"),
        ):
            if limit is not None and spent > limit and st.stage not in ("done", "failed"):
                await self._finish(ctx, st, accepted=False, reason=f"{what} budget spent ({spent} > {limit})", failed=True)

    # ------------------------------------------------------------ helpers

    def _require(self, ctx: PIContext) -> ProjectState:
        if ctx.state is None:
            raise UnknownProject(f"no project {ctx.project!r}: it was never started")
        return ctx.state

    def _out_of_time(self, ctx: PIContext, st: ProjectState) -> bool:
        return ctx.clock() - st.started_at > st.budget.wall_time_s


def wants_references(item: Any) -> bool:
    """A review item that more citations answer: add_citation, or one that asks for references in words."""
    return item.kind == "add_citation" or bool(re.search(r"\b(cite|citations?|references?|prior work)\b", item.text, re.I))


class UnknownProject(Rejected):
    """A message for a project the PI never started (dead-lettered by the host)."""


ROLE = PI
