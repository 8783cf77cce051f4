"""The PI's state machine as pure functions: (state, event, now) -> ``Step``.

direction → ideas → novelty → experiments → analysis → draft → review ⇄ revision → decision.

Each transition takes the durable ``ProjectState`` and what arrived (and the
time, passed in), and returns a ``Step``: the new state (a copy: the state it
was given is left as it was), the effects to perform in order (messages to
send, lines to log, objects to store, archive records to write) and, where
only the mind can go on, an ``Ask`` (ideas to propose, a review to answer)
whose answer the handler gives to the next transition. Nothing here does I/O,
reads a clock, or calls a mind: ``agents/pi/workflow.py`` performs the effects
and asks, so every decision of the PI can be tested from data alone.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from agents.minds.base import IdeaContext, NoteReading, ReviewContext
from agents.pi import budget as money
from agents.pi import copi
from agents.pi import outcomes as outcome
from agents.pi.baseline import POSITIVE_CONTROL, candidate_values, effective, profile_name, same_as_baseline, why_same
from agents.pi.direction import read as read_focus
from agents.pi.direction import toward
from agents.pi.scores import rank
from agents.pi.state import ExperimentState, IdeaState, ProjectState
from bus.errors import MindUnavailable
from bus.schema import (
    BASELINE,
    AnalysisDone,
    AnalysisReport,
    AnalysisRequest,
    ApprovalPolicy,
    ArchiveRecord,
    BudgetLimits,
    CoPINote,
    Decision,
    DraftReady,
    DraftRequest,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    Idea,
    IdeaOutcome,
    ItemResponse,
    NoteAck,
    NoveltyCheck,
    NoveltyVerdict,
    ProjectApproval,
    ProjectEstimate,
    ProjectView,
    Rebuttal,
    Recipient,
    ReferenceSearch,
    ReferencesFound,
    ReviewDone,
    ReviewRequest,
    RevisionItem,
    StartProject,
    StepFailed,
    Usage,
    signature_of,
)
from bus.schema.archive import seed_records
from bus.schema.evolve import EvolveState

IDEAS_PER_WAVE = 2
# The mind proposes this many times a wave's ideas; the PI ranks them by score and runs the best (agents/pi/scores.py).
PROPOSALS_PER_IDEA = 2
# The archive's most recent records a project keeps in its state and shows its mind (the state is one KV value).
PRIOR_KEPT = 200
# A direction that asks for ideas tried before (in this project or the archive) to be run again.
_REPEAT = re.compile(r"\b(repeat|re-?run|again|replicate|reproduce)\b", re.I)
_NO_REPEAT = re.compile(r"\b(don'?t|do not|never|avoid|no|without)\b\W+(\w+\W+){0,3}(repeat|re-?run|again|replicate|reproduce)", re.I)
_ENDED = ("done", "failed")


def asks_repeat(text: str) -> bool:
    """Whether a direction or a note asks for ideas tried before to run again ("do not repeat" does not)."""
    return bool(_REPEAT.search(text)) and not _NO_REPEAT.search(text)


def wants_references(item: RevisionItem) -> bool:
    """A review item that more citations answer: add_citation, or one that asks for references in words."""
    return item.kind == "add_citation" or bool(re.search(r"\b(cite|citations?|references?|prior work)\b", item.text, re.I))


# ------------------------------------------------------------ what a step decides


@dataclass(frozen=True)
class Send:
    """A message to send (the host publishes it once the new state is stored)."""

    body: BaseModel
    to: Recipient


@dataclass(frozen=True)
class Log:
    level: Literal["info", "warning", "error"]
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PutArtifact:
    """An object to store; the same bytes under the same name twice is harmless, so a redelivery may repeat it."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Remember:
    """A record for the idea archive; its key and content derive from the state and the message, never the clock."""

    record: ArchiveRecord


Effect = Send | Log | PutArtifact | Remember


@dataclass(frozen=True)
class ProposeIdeas:
    """Ask the mind for ideas (``idea_context``, after ``with_prior``); its answer goes to ``wave_proposed`` or ``wave_failed``."""

    take: int  # how many of the ranked proposals to run

    @property
    def n(self) -> int:
        return self.take * PROPOSALS_PER_IDEA


@dataclass(frozen=True)
class AnswerReview:
    """Ask the mind to answer the review; its answer goes to ``review_answered``, a failure to ``finish``."""

    context: ReviewContext


Ask = ProposeIdeas | AnswerReview


@dataclass
class Step:
    state: ProjectState
    effects: list[Effect] = field(default_factory=list)
    ask: Ask | None = None

    @property
    def sent(self) -> list[tuple[BaseModel, Recipient]]:
        return [(e.body, e.to) for e in self.effects if isinstance(e, Send)]


def _copy(st: ProjectState) -> ProjectState:
    # Transitions change a copy, so the caller's state is never half-changed by a step it did not keep.
    return st.model_copy(deep=True)


def _begin(st: ProjectState) -> tuple[ProjectState, list[Effect]]:
    """A transition's working copy of the state, and its (so far empty) effects."""
    return _copy(st), []


# ------------------------------------------------------------ start and the co-PI


def start(
    state: ProjectState | None, body: StartProject, project: str, now: float,
    policy: ApprovalPolicy | None = None, limits: BudgetLimits | None = None, lab_gpu_hours: float = 0.0,
    user_gpu_hours: float = 0.0, history: Sequence[ProjectView] = (),
) -> Step:
    """A new project: its estimate is kept and sent to the co-PI (`lab status`, the web view and the export show it
    beside the spend); then, unless it waits for approval, the baseline is asked for at once (it needs no novelty
    check), then the first wave of ideas.

    ``policy`` and ``limits`` are the lab's (config.yaml ``approval:`` and ``budgets:``): the project's budget is
    lowered to the lab's caps, and an estimate over a threshold (or a start that asks for it) waits in the stage
    ``approval`` for the co-PI's ``ProjectApproval``. ``lab_gpu_hours``: what the lab's stored projects used
    (read by the handler only where the lab caps its total, ``BudgetLimits.max_gpu_hours_per_lab``);
    ``user_gpu_hours``: what the stored projects of the user who started this one used (``max_gpu_hours_per_user``);
    ``history``: the lab's stored projects, whose archived job times and tokens the estimate prefers (``money.archived``).
    """
    if state is not None:
        return Step(state, [Log("info", "project already started", {"stage": state.stage})])
    limits = limits or BudgetLimits()
    capped, said = money.capped(body.budget, limits, lab_gpu_hours, user_gpu_hours, body.user)
    st = ProjectState(
        project=project, template=body.template, template_object=body.template_object, spec=body.spec,
        direction=body.direction, seed=body.seed, budget=capped, fast=body.fast, profile=body.profile,
        cache=body.cache, mind=body.mind, started_at=now, user=body.user,
    )
    if body.evolve is not None:  # the Self-Developing loop instead of idea waves (agents/pi/evolve.py runs it)
        st.evolve = EvolveState(request=body.evolve)
        st.direction = body.direction or f"evolve {body.evolve.spec.hook.function}()"
    if st.budget.max_runs_limit is None:
        st.budget.max_runs_limit = min(1000, max(2 * st.budget.max_runs, st.budget.max_runs))
    out: list[Effect] = [Log("info", "budget capped", {"caps": said})] if said else []
    lab = None if limits.max_gpu_hours_per_lab is None else (lab_gpu_hours, limits.max_gpu_hours_per_lab)
    user = None if limits.max_gpu_hours_per_user is None else (body.user, user_gpu_hours, limits.max_gpu_hours_per_user)
    profile = profile_of(st)
    past = money.archived(history, st.template, profile, st.spec.profile(profile).resources.gpu > 0)
    runs = st.budget if body.evolve is None else st.budget.model_copy(update={"max_runs": body.evolve.max_runs})
    st.estimate = money.estimate(st.spec, profile, runs, st.mind, policy or ApprovalPolicy(), body.measured_job_s,
                                 body.require_approval, lab, user, past)
    out.append(Log("info", "estimate", {"estimate": st.estimate.line()}))  # in the state for `lab status`, the web view and the export
    out.append(Send(ProjectEstimate(estimate=st.estimate), "copi"))  # every project's, waiting or not: the co-PI sees each
    if st.estimate.needs_approval:
        st.stage = "approval"
        out.append(Log("warning", "waiting for approval", {"why": st.estimate.why, "approve": f"lab approve {project}"}))
        return Step(st, out)
    return _open(st, out, now)


def _open(st: ProjectState, out: list[Effect], now: float) -> Step:
    """The project's first runs (an evolve project's come from its loop, which the handler asks next)."""
    if st.evolve is not None:
        st.stage = "experiments"
        return Step(st, out)
    return _first_runs(st, out, now)


def approval(st: ProjectState, body: ProjectApproval, now: float) -> Step:
    """The co-PI's answer to an estimate that waits: approved, the project starts now; refused, it ends with the reason."""
    st, out = _begin(st)
    if st.stage != "approval":
        out.append(Log("info", "approval not needed", {"stage": st.stage, "approved": body.approved}))
        return Step(st, out)
    if not body.approved:
        _finish(st, out, accepted=False, reason=f"refused by the co-PI: {body.reason.strip() or 'no reason given'}", failed=True)
        return Step(st, out)
    st.approved_at = now
    out.append(Log("info", "approved by the co-PI", {"reason": body.reason}))
    return _open(st, out, now)


def _first_runs(st: ProjectState, out: list[Effect], now: float) -> Step:
    """The project's first runs: the baseline, the positive control, the template's seed ideas archived, the first wave."""
    st.stage = "ideas"
    _request_experiment(st, out, BASELINE, None, list(range(st.spec.seeds)))
    _positive_control(st, out)
    out.extend(Remember(r) for r in seed_records(st.spec.seed_ideas, st.template, st.project, now, st.direction))  # listed by `lab ideas`
    focus = read_focus(st.direction, st.spec)
    if st.direction.strip():
        out.append(Log("info", "direction read", {"direction": st.direction, "names": focus.describe()}))
    if st.mind == "offline" and not st.spec.knobs and not st.spec.variants:  # an AI Scientist template, say: said plainly, not implied
        out.append(Log("info", "nothing to vary", {"says": "this template declares no knobs or variants: the offline mind proposes no ideas; "
                                                   "the lab runs the baseline and its seeds and writes a baseline-characterisation report"}))
    return Step(st, out, _plan_wave(st, now))


def profile_of(st: ProjectState) -> str | None:
    """The profile the project's runs use (``--fast`` is ``fast``): what its baseline values are read under."""
    return profile_name(st.profile, st.fast)


def baseline_of(st: ProjectState) -> dict[str, Any]:
    """Every knob's value in the baseline as this project runs it."""
    return effective(st.spec, profile_of(st))


def _positive_control(st: ProjectState, out: list[Effect]) -> None:
    """Run the template's known-different setting once, on the baseline's seeds, as the idea "positive-control".

    It is no proposed idea (it is not in ``st.ideas``, so neither the archive nor the paper's
    ideas list it): the analyst compares it with the baseline to check that the testbed separates
    settings at all. It counts in the run budget.
    """
    pc = st.spec.positive_control
    if not pc:
        return
    base = baseline_of(st)
    idea = Idea(
        id=POSITIVE_CONTROL, title="positive control: " + ", ".join(f"{k}={v!r}" for k, v in pc.items()),
        hypothesis=f"A setting known to differ ({', '.join(f'{k} {base[k]!r} -> {v!r}' for k, v in pc.items())}) "
        f"changes {st.spec.primary_metric} clearly, so the testbed can separate settings.",
        falsification=f"No difference from the baseline on {st.spec.primary_metric} over the same seeds: then no "
        "comparison of this project is conclusive.",
        changes=dict(pc), rationale="declared by the template as its positive control; not a proposed idea",
    )
    if same_as_baseline(idea, base):
        out.append(Log("warning", "positive control not run", {"reason": why_same(idea, base, profile_of(st))}))
    elif st.runs_used >= st.budget.max_runs:
        out.append(Log("warning", "positive control not run", {"reason": f"run budget {st.budget.max_runs} spent on the baseline"}))
    else:
        _request_experiment(st, out, POSITIVE_CONTROL, idea, list(range(st.spec.seeds)))


def new_note(st: ProjectState, note: CoPINote) -> CoPINote | None:
    """The note as the state keeps it, or None when it was taken already (a redelivery)."""
    note = note.model_copy(update={"received_at": None})
    return None if any(n.id == note.id for n in st.notes) else note


def note_read(st: ProjectState, note: CoPINote, reading: NoteReading, now: float | None = None) -> Step:
    """The mind read a co-PI note: keep its constraints, act on what it asks, answer it, and stop if it says so.

    What the note asks beyond constraints (``agents.pi.copi``: a run with given values or on a
    knob, a bigger run budget) is done now or refused with the reason; the answer the co-PI
    gets says which, so no request is acknowledged and dropped. An evolve project takes only a stop.
    """
    if st.evolve is not None and not reading.constraints.get("stop"):
        return _evolve_note(st, note)
    st, out = _begin(st)
    st.notes.append(note)
    st.constraints.update(reading.constraints)
    request = copi.read(note.text, st.spec) if not reading.constraints.get("stop") else copi.Request()
    answers = [reading.understood] if reading.parsed or request.empty else []
    if request.raise_runs is not None:
        answers.append(_raise_runs(st, out, request.raise_runs))
    if request.wants_run:
        answers.append(_copi_run(st, out, request, now))
    understood = "; ".join(a for a in answers if a)
    out.append(Send(NoteAck(note_id=note.id, understood=understood, constraints=reading.constraints), "copi"))
    if reading.parsed or not request.empty:
        out.append(Log("info", "co-PI note taken", {"note": note.text, "constraints": reading.constraints, "answer": understood}))
    else:
        out.append(Log("warning", "co-PI note not understood", {"note": note.text, "answer": reading.understood}))
    if reading.constraints.get("stop") and st.stage not in _ENDED:
        _finish(st, out, accepted=False, reason=f"stopped by the co-PI: {note.text!r}", failed=True)
    return Step(st, out)


def runs_limit(st: ProjectState) -> int:
    """The most runs the co-PI may raise the budget to (``Budget.max_runs_limit``, fixed at the start)."""
    return st.budget.max_runs_limit or min(1000, 2 * st.budget.max_runs)


def _raise_runs(st: ProjectState, out: list[Effect], n: int) -> str:
    """`raise runs to N`: the run budget becomes N when N is within the hard limit; the answer says what happened."""
    limit, before = runs_limit(st), st.budget.max_runs
    if n > limit:
        why = f"refused to raise runs to {n}: the project's hard limit is {limit} runs (Budget.max_runs_limit)"
        out.append(Log("warning", "co-PI request refused", {"request": f"raise runs to {n}", "reason": why}))
        return why
    if n <= before:
        return f"runs stay at {before}: {n} would not raise them ({st.runs_used} used)"
    st.budget.max_runs = n
    out.append(Log("info", "run budget raised", {"from": before, "to": n, "limit": limit}))
    return f"run budget raised from {before} to {n} runs (hard limit {limit})"


def budget_line(st: ProjectState) -> str:
    """Why no run is left, and how the co-PI can allow one."""
    used, most, limit = st.runs_used, st.budget.max_runs, runs_limit(st)
    if most >= limit:
        return f"budget spent: {used}/{most} runs, the project's hard limit"
    return f"budget spent: {used}/{most} runs; `lab say 'raise runs to {min(limit, most + 6)}'` to allow it"


def compute_spent(st: ProjectState, out: list[Effect]) -> str:
    """Why no new run may start though runs are left (a GPU-hour, CPU-hour or money budget reached), or "".

    The first time it is so, the reason is kept (the decision states it) and logged once.
    """
    why = money.spent_reason(st.budget, st.runs(), st.usage)
    if why and not st.budget_stop:
        st.budget_stop = why
        out.append(Log("warning", "budget spent", {"reason": why}))
    return why


def _evolve_note(st: ProjectState, note: CoPINote) -> Step:
    """An evolve project's loop picks its own candidates, splits and seeds: a note's runs, budgets and constraints
    would be acknowledged and never acted on, so the answer refuses them and says what a note can do."""
    st, out = _begin(st)
    st.notes.append(note)
    why = ("not done: an evolve project runs only the candidates its loop picks, on the budget it started with; "
           "a note can stop it (say stop), or start a project with `lab run` for the runs you want")
    out.append(Send(NoteAck(note_id=note.id, understood=why, constraints={}), "copi"))
    out.append(Log("warning", "co-PI note refused", {"note": note.text, "answer": why}))
    return Step(st, out)


def _copi_run(st: ProjectState, out: list[Effect], request: copi.Request, now: float | None) -> str:
    """Schedule the run a note asks for, or say why not (in the answer and the log)."""
    idea, why = _copi_idea(st, request)
    if idea is not None:
        if st.stage == "approval":
            why = f"the project waits for approval of its estimate (`lab approve {st.project}`)"
        elif st.stage not in ("ideas", "experiments") or st.halt:
            why = f"the experiments are over (stage {st.stage})"
        elif now is not None and out_of_time(st, now):
            why = "the project's wall time is spent"
        elif st.runs_used >= st.budget.max_runs:
            why = budget_line(st)
        elif spent := compute_spent(st, out):
            why = spent
    if idea is None or why:
        out.append(Log("warning", "co-PI request refused", {"request": request.describe(), "reason": why}))
        return f"refused {request.describe()}: {why}"
    st.ideas[idea.id] = IdeaState(idea=idea, wave=st.wave, status="running", reason="asked by the co-PI", asked_by_copi=True)
    exp_id = _request_experiment(st, out, idea.id, idea, list(range(st.spec.seeds)))
    out.append(Log("info", "co-PI request scheduled", {"experiment": exp_id, "changes": idea.changes}))
    shown = ", ".join(f"{k}={v!r}" for k, v in idea.changes.items())
    return f"scheduled as experiment {exp_id} ({shown}; baseline {', '.join(f'{k}={baseline_of(st)[k]!r}' for k in idea.changes)})"


def _copi_idea(st: ProjectState, request: copi.Request) -> tuple[Idea | None, str]:
    """The idea a request asks for (its values, or the next untried value of the knob it names), or why there is none."""
    base, spec = baseline_of(st), st.spec
    tried = {signature_of(s.idea): i for i, s in st.ideas.items()}
    changes = dict(request.changes)
    if not changes:
        name = request.knobs[0]
        knob = spec.knobs[name]
        values = [v for v in toward(knob, candidate_values(knob, base[name]), base[name], name in request.smaller, name in request.larger)
                  if not spec.broken_relation({**base, name: v})]
        fresh_values = [v for v in values if signature_of(_copi_draft(st, {name: v})) not in tried]
        if not fresh_values:
            return None, f"every value {spec.name} declares for {name} ({values or 'none'}) has run already or is the baseline's"
        changes = {name: fresh_values[0]}
    idea = _copi_draft(st, changes)
    if same_as_baseline(idea, base):
        return None, why_same(idea, base, profile_of(st))
    if (done := tried.get(signature_of(idea))) is not None:
        return None, f"the same changes already ran as idea {done}"
    if why := spec.broken_relation({**base, **changes}):
        return None, why
    return idea, ""


def _copi_draft(st: ProjectState, changes: dict[str, Any]) -> Idea:
    base = baseline_of(st)
    slug = "-".join(f"{k}-{v}" for k, v in changes.items())
    idea_id = "copi-" + re.sub(r"[^a-z0-9]+", "-", slug.lower().replace(".", "p")).strip("-")[:40]
    shown = ", ".join(f"{k} = {v!r} instead of {base[k]!r}" for k, v in changes.items())
    metric = st.spec.primary_metric
    return Idea(
        id=idea_id, title=f"co-PI request: {shown}",
        hypothesis=f"Setting {shown} changes {metric} relative to the baseline on {st.spec.name}.",
        falsification=f"Rejected if, over {st.spec.seeds} seeds per arm, the mean {metric} does not differ from the baseline's "
        "with p < 0.05 after Holm's correction over every comparison of the paper.",
        changes=changes, rationale="asked for by the co-PI in a note",
    )


# ------------------------------------------------------------ ideas and novelty


def _plan_wave(st: ProjectState, now: float) -> ProposeIdeas | None:
    """Open a new wave if the idea budget and the wall time allow; how many ideas it may run."""
    # Ideas found not novel do not use up the idea budget, but proposals are capped all the same.
    # The co-PI's own requests are budgeted in runs, not in the PI's ideas.
    counted = sum(1 for s in st.ideas.values() if s.status != "not_novel" and not s.asked_by_copi)
    left = min(st.budget.max_ideas - counted, 3 * st.budget.max_ideas - len(st.ideas))
    if left <= 0 or out_of_time(st, now) or money.spent_reason(st.budget, st.runs(), st.usage):
        return None
    st.wave += 1
    return ProposeIdeas(take=min(IDEAS_PER_WAVE, left))


def with_prior(st: ProjectState, records: list[ArchiveRecord]) -> ProjectState:
    """The state with what earlier projects on its template tried (refreshed each wave and kept in the state,
    so a redelivered message sees what the first delivery saw)."""
    st = _copy(st)
    st.prior = [r for r in records if r.project != st.project and r.outcome.status != "seeded"][-PRIOR_KEPT:]
    return st


def repeat_ok(st: ProjectState) -> bool:
    # Read from the words as well as from the mind's constraints, so it holds whatever mind reads the notes.
    return bool(st.constraints.get("repeat")) or any(asks_repeat(t) for t in [st.direction, *(n.text for n in st.notes)])


def idea_context(st: ProjectState, n: int) -> IdeaContext:
    """What the mind sees when it proposes ``n`` ideas: the project, its notes, and what came of every idea so far."""
    baseline_walls = [r.wall_s for r in st.runs() if r.idea_id == BASELINE and r.status == "succeeded" and r.wall_s > 0]
    return IdeaContext(
        spec=st.spec, direction=st.direction, notes=st.notes, constraints=st.constraints,
        previous=[s.idea for s in st.ideas.values()], outcomes=outcomes(st), prior=st.prior,
        repeat_ok=repeat_ok(st), profile=profile_of(st) or "",
        baseline_wall_s=max(baseline_walls) if baseline_walls else None, n=n, seed=st.seed + st.wave,
    )


def fresh(st: ProjectState, ideas: list[Idea]) -> list[Idea]:
    """Ideas not proposed before in this project, nor (unless repeats are asked for) tried by an earlier one."""
    mine = {signature_of(s.idea) for s in st.ideas.values()}
    elsewhere = set() if repeat_ok(st) else {r.signature for r in st.prior}
    out, seen = [], set()
    for idea in ideas:
        sig = signature_of(idea)
        if idea.id in st.ideas or idea.id == BASELINE or sig in mine or sig in elsewhere or sig in seen:
            continue
        seen.add(sig)
        out.append(idea)
    return out


def outcomes(st: ProjectState) -> dict[str, IdeaOutcome]:
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


def wave_proposed(st: ProjectState, ideas: list[Idea], take: int) -> Step:
    """The mind proposed: keep the fresh ones, rank them, send the best ``take`` to the novelty check.

    An idea the baseline already is (under the project's profile) is refused, and so is one
    outside the direction that does not say why; ideas on the levers the direction names go
    first, and each one taken from outside it is logged so. A wave that keeps none lets the
    project move on (to the analysis, or to its end).
    """
    st, out = _begin(st)
    if st.wave == 1 and st.mind == "llm" and st.spec.seed_ideas:  # the template's own ideas lead, then the mind's
        out.append(Log("info", "seed ideas", {"ideas": [i.id for i in st.spec.seed_ideas]}))
        ideas = [*st.spec.seed_ideas, *ideas]
    ideas = _admissible(st, out, fresh(st, ideas))
    ideas, dropped = rank(ideas)
    if dropped:
        out.append(Log("info", "ideas dropped under the score floor", {"dropped": dropped}))
    focus = read_focus(st.direction, st.spec)
    ideas = focus.order(ideas, baseline_of(st))[:take]
    for idea in ideas:
        if focus.named and focus.score(idea) == 0:
            out.append(Log("info", "idea outside the direction", {"idea": idea.id, "why": idea.outside_direction}))
        st.ideas[idea.id] = IdeaState(idea=idea, wave=st.wave)
        check = NoveltyCheck(idea=idea, template=st.template, template_object=st.template_object, task=st.spec.task, keywords=st.spec.keywords)
        out.append(Send(check, "literature"))
    out.append(Log("info", "ideas proposed", {"wave": st.wave, "ideas": [i.id for i in ideas]}))
    if not ideas:
        _after_wave(st, out)
    return Step(st, out)


def _admissible(st: ProjectState, out: list[Effect], ideas: list[Idea]) -> list[Idea]:
    """The ideas worth a run: none identical to the baseline as it runs, none outside the direction without a reason."""
    base, focus = baseline_of(st), read_focus(st.direction, st.spec)
    kept = []
    for idea in ideas:
        if idea.id == POSITIVE_CONTROL:
            why = "the id positive-control is the template's positive control, not an idea"
        elif same_as_baseline(idea, base):
            why = why_same(idea, base, profile_of(st))
        elif focus.named and focus.score(idea) == 0 and not idea.outside_direction.strip():
            why = f"outside the direction (it names {focus.describe()}) and says nothing about why"
        else:
            kept.append(idea)
            continue
        out.append(Log("warning", "idea refused", {"idea": idea.id, "changes": idea.changes, "reason": why}))
    return kept


def wave_failed(st: ProjectState, error: Exception, take: int = 0) -> Step:
    """The mind could not propose; one that is down for good ends the project once the runs in flight are in.

    In the first wave the template's own seed ideas do not depend on the mind's answer: unless the model is down
    (then the engineer could not write their code either), they go on as that wave's ideas (``take`` of them).
    """
    if take and st.wave == 1 and st.mind == "llm" and st.spec.seed_ideas and not isinstance(error, MindUnavailable):
        step = wave_proposed(st, [], take)
        failed = Log("error", "no ideas: the mind failed; the template's seed ideas go on", {"reason": str(error)})
        return Step(step.state, [failed, *step.effects], step.ask)
    st, out = _begin(st)
    out.append(Log("error", "no ideas: the mind failed", {"reason": str(error)}))
    if isinstance(error, MindUnavailable):  # the analysis and the paper need the model too
        st.halt = f"ideas failed: {error.reason}"
    _after_wave(st, out)
    return Step(st, out)


def verdict(st: ProjectState, body: NoveltyVerdict, now: float) -> Step:
    """The literature agent judged an idea: a novel one runs while the run budget lasts."""
    st, out = _begin(st)
    state = st.ideas.get(body.idea_id)
    if state is None or state.status != "checking":
        return Step(st)
    state.verdict = body
    for ref in body.references:
        st.references.setdefault(ref.key, ref)
    if not body.novel:
        state.status, state.reason = "not_novel", body.justification
    elif st.runs_used >= st.budget.max_runs:
        state.status, state.reason = "skipped", "run budget spent"
    elif spent := compute_spent(st, out):
        state.status, state.reason = "skipped", spent
    else:
        state.status = "running"
        _request_experiment(st, out, state.idea.id, state.idea, list(range(st.spec.seeds)))
    return Step(st, out, _advance(st, out, now))


# ------------------------------------------------------------ experiments


def _request_experiment(
    st: ProjectState, out: list[Effect], idea_id: str, idea: Idea | None, seeds: list[int], confirmation: bool = False
) -> str:
    exp_id = f"x{len(st.experiments) + 1:02d}-{idea_id}"[:60]
    st.experiments[exp_id] = ExperimentState(experiment_id=exp_id, idea_id=idea_id, seeds=seeds, round=st.round, confirmation=confirmation)
    st.stage = "experiments"
    out.append(Send(experiment_request(st, exp_id, idea, seeds), "engineer"))
    return exp_id


def experiment_request(st: ProjectState, exp_id: str, idea: Idea | None, seeds: list[int],
                       fixed: dict[str, Any] | None = None) -> ExperimentRequest:
    """The engineer's request for one experiment of the project: its template, profile and cache as the project set them."""
    return ExperimentRequest(
        experiment_id=exp_id, idea=idea, seeds=seeds, template=st.template, template_object=st.template_object,
        spec=st.spec, fast=st.fast, profile=st.profile, cache=st.cache, fixed=fixed or {},
    )


def _idea_failed(st: ProjectState, idea_id: str, reason: str) -> None:
    idea = st.ideas.get(idea_id)
    if idea is not None and idea.status in ("running", "checking", "novel"):
        idea.status, idea.reason = "failed", reason


def planned(st: ProjectState, body: ExperimentPlanned, now: float) -> Step:
    """The engineer planned an experiment; only a rejected plan changes anything (the experiment fails)."""
    st, out = _begin(st)
    exp = st.experiments.get(body.experiment_id)
    if exp is None or not body.rejected or exp.status != "requested":
        return Step(st)
    exp.status, exp.reason = "failed", body.rejected
    _idea_failed(st, exp.idea_id, body.rejected)
    return Step(st, out, _advance(st, out, now))


def result(st: ProjectState, body: ExperimentResult, now: float) -> Step:
    """An experiment's runs are in: it is done if any run succeeded."""
    st, out = _begin(st)
    exp = st.experiments.get(body.experiment_id)
    if exp is None or exp.status != "requested":
        return Step(st)
    exp.runs = body.runs
    compute_spent(st, out)  # said as soon as these runs spend the last of a budget
    ok = any(r.status == "succeeded" for r in body.runs)
    exp.status = "done" if ok else "failed"
    exp.reason = "; ".join(r.reason for r in body.runs if r.reason)
    idea = st.ideas.get(exp.idea_id)
    if idea is not None and idea.status == "running":
        if ok:
            idea.status = "done"
        else:
            _idea_failed(st, exp.idea_id, exp.reason or "all runs failed")
    return Step(st, out, _advance(st, out, now))


def step_failed(st: ProjectState, body: StepFailed, now: float) -> Step:
    """Another role could not do its step: an experiment or a novelty check fails alone; the analysis, draft or review end the project."""
    st = _copy(st)
    out: list[Effect] = [Log("warning", "step failed", {"step": body.step, "reason": body.reason, "ref": body.ref})]
    if body.step == "experiment" and body.ref in st.experiments:
        exp = st.experiments[body.ref]
        if exp.status == "requested":
            exp.status, exp.reason = "failed", body.reason
            _idea_failed(st, exp.idea_id, body.reason)
    elif body.step == "novelty_check" and body.ref in st.ideas and st.ideas[body.ref].status == "checking":
        st.ideas[body.ref].status, st.ideas[body.ref].reason = "skipped", f"novelty check failed: {body.reason}"
    elif body.step == "draft" and st.accepting:  # the final build failed: the reviewed draft is delivered as it is
        out.append(Log("warning", "final build failed; delivering the reviewed draft", {"reason": body.reason}))
        _finish(st, out, accepted=True, reason=st.accepting)
        return Step(st, out)
    elif body.step in ("analysis", "draft", "review"):
        _finish(st, out, accepted=False, reason=f"{body.step} failed: {body.reason}", failed=True)
        return Step(st, out)
    return Step(st, out, _advance(st, out, now))


# ------------------------------------------------------------ moving on


def _waiting(st: ProjectState) -> bool:
    """Whether the project is past the experiments, or still waits for a check, a run or references."""
    if st.stage not in ("ideas", "experiments"):
        return True
    return (
        any(s.status == "checking" for s in st.ideas.values())
        or any(e.status == "requested" for e in st.experiments.values())
        or bool(st.citations_pending)
    )


def advance(st: ProjectState, now: float) -> Step:
    """Decide what follows once nothing is outstanding: another wave of ideas, the analysis, or the end."""
    st, out = _begin(st)
    return Step(st, out, _advance(st, out, now))


def _advance(st: ProjectState, out: list[Effect], now: float) -> Ask | None:
    if _waiting(st):
        return None
    if not st.halt and st.round == 0 and not st.confirmed:
        wave = _plan_wave(st, now)
        if wave is not None:
            return wave
    _settle(st, out)
    return None


def _after_wave(st: ProjectState, out: list[Effect]) -> None:
    """A wave that ran nothing: move on as ``_advance`` would have without it (never another wave, so it ends)."""
    if not _waiting(st):
        _settle(st, out)


def _settle(st: ProjectState, out: list[Effect]) -> None:
    if st.halt:
        _finish(st, out, accepted=False, reason=st.halt, failed=True)
        return
    baseline_ok = any(e.idea_id == BASELINE and e.status == "done" for e in st.experiments.values())
    if not baseline_ok and st.round == 0:
        _finish(st, out, accepted=False, reason="the baseline failed to run; no fair comparison is possible", failed=True)
        return
    st.stage = "analysis"
    out.append(Send(AnalysisRequest(round=st.round, spec=st.spec, runs=st.runs(), confirmation=st.confirmation_ids()), "analyst"))


def archive_records(st: ProjectState, when: float) -> list[ArchiveRecord]:
    """A record of every idea this project ran, as of ``when`` (the message's time, so a redelivery writes the same)."""
    records = []
    for idea_id, o in outcomes(st).items():
        if o.status in ("pending", "not_novel", "skipped"):
            continue  # never ran: nothing came of it
        idea = st.ideas[idea_id].idea
        records.append(ArchiveRecord(
            template=st.template, signature=signature_of(idea), project=st.project,
            recorded_at=when, direction=st.direction, round=st.round, outcome=o,
        ))
    return records


def analysis_done(st: ProjectState, body: AnalysisDone, when: float) -> Step:
    """The analysis is in: archive what came of each idea, then confirm significant findings or ask for the draft."""
    st, out = _begin(st)
    if st.stage != "analysis" or body.report.round != st.round:
        return Step(st)
    st.report = report = fixed_plan(st, body.report)
    out.extend(Remember(r) for r in archive_records(st, when))
    if _confirm(st, out, report):
        return Step(st, out)
    st.stage = "draft"
    out.append(Send(_draft_request(st, report), "writer"))
    return Step(st, out)


def fixed_plan(st: ProjectState, report: AnalysisReport) -> AnalysisReport:
    """The report with the project's seed plan: the first one an analysis made, capped by ``max_seeds_per_arm``.

    The analyst plans from the baseline's variance as it stands; planned again each round, the ask grew with the
    seeds added (README command 1: 10, then 75), the goalposts moving after each look. The plan is decided once.
    """
    plan = report.seed_plan
    if st.seed_plan is None and plan is not None:
        cap = st.budget.max_seeds_per_arm
        st.seed_plan = plan if plan.seeds <= cap else plan.model_copy(update={"seeds": cap, "needed": plan.seeds})
    if st.seed_plan is None or plan == st.seed_plan:
        return report
    return report.model_copy(update={"seed_plan": st.seed_plan})


def _draft_request(st: ProjectState, report: AnalysisReport, reviewed: DraftReady | None = None) -> DraftRequest:
    """What the writer needs for this round's draft; with ``reviewed``, the final build of that accepted draft."""
    return DraftRequest(
        round=st.round, spec=st.spec, direction=st.direction, profile=profile_name(st.profile, st.fast) or "",
        ideas=[s.idea for s in st.ideas.values() if s.status in ("done", "failed", "running")],
        report=report, references=list(st.references.values()), notes=st.notes,
        revision_items=st.revision_items, responses=st.responses, usage=st.usage,
        not_novel={s.idea.id: s.reason for s in st.ideas.values() if s.status == "not_novel"},
        final=reviewed is not None, reviewed=reviewed,
    )


def _confirm(st: ProjectState, out: list[Effect], report: AnalysisReport) -> bool:
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
    if spent := compute_spent(st, out):
        out.append(Log("warning", "no confirmation run: budget spent", {"ideas": todo, "reason": spent}))
        return False
    if st.runs_used + len(todo) + 1 > st.budget.max_runs:
        out.append(Log("warning", "no confirmation run: run budget spent", {"ideas": todo, "runs_left": st.budget.max_runs - st.runs_used}))
        return False
    used = {s for e in st.experiments.values() for s in e.seeds}
    first = max(used, default=-1) + 1
    seeds = list(range(first, first + st.spec.seeds))
    st.confirmed = st.confirmed + todo
    out.append(Log("info", "confirmation runs", {"ideas": todo, "seeds": seeds}))
    _request_experiment(st, out, BASELINE, None, seeds, confirmation=True)
    for idea_id in todo:
        _request_experiment(st, out, idea_id, st.ideas[idea_id].idea, seeds, confirmation=True)
    return True


# ------------------------------------------------------------ draft, review, revision


def draft_ready(st: ProjectState, body: DraftReady) -> Step:
    """The writer's draft goes to the reviewers; the final build of an accepted draft ends the project."""
    st, out = _begin(st)
    if st.stage != "draft" or body.round != st.round or st.report is None:
        return Step(st)
    if st.accepting:
        if body.pdf_error and st.draft is not None and st.draft.pdf:  # the reviewed PDF stands rather than none
            out.append(Log("warning", "final build failed; delivering the reviewed draft", {"error": body.pdf_error}))
        else:
            st.draft = body
        _finish(st, out, accepted=True, reason=st.accepting)
        return Step(st, out)
    st.draft = body
    st.stage = "review"
    request = ReviewRequest(
        round=st.round, draft=body, report=st.report, references=list(st.references.values()),
        max_rounds=st.budget.max_revision_rounds,
    )
    out.append(Send(request, "reviewer"))
    return Step(st, out)


def review_done(st: ProjectState, body: ReviewDone, now: float) -> Step:
    """The meta-review decides: accept or reject ends the project; revise asks the mind to answer, budget and time allowing."""
    st, out = _begin(st)
    if st.stage != "review" or body.round != st.round:
        return Step(st)
    st.reviews.append(body)
    meta = body.meta
    if meta.decision == "accept" and st.report is not None and st.draft is not None:
        # The delivered paper is the final version of the text the reviewers accepted, not a "Draft for review".
        st.accepting = f"accepted in round {st.round} (meta-review overall {meta.overall:.1f})"
        st.stage = "draft"
        out.append(Send(_draft_request(st, st.report, reviewed=st.draft), "writer"))
    elif meta.decision == "accept":
        _finish(st, out, accepted=True, reason=f"accepted in round {st.round} (meta-review overall {meta.overall:.1f})")
    elif meta.decision == "reject":
        _finish(st, out, accepted=False, reason=f"rejected in round {st.round}: {meta.summary}")
    elif st.round >= st.budget.max_revision_rounds or out_of_time(st, now) or money_spent(st):
        why = ("revision rounds spent" if st.round >= st.budget.max_revision_rounds
               else "wall time spent" if out_of_time(st, now) else "money budget spent")
        _finish(st, out, accepted=False, reason=f"not accepted: {why} with {len(meta.revision_items)} items open")
    else:
        context = ReviewContext(
            items=meta.revision_items, report=st.report,
            runs_left=st.budget.max_runs - st.runs_used, rounds_left=st.budget.max_revision_rounds - st.round,
        )
        return Step(st, out, AnswerReview(context))
    return Step(st, out)


FIXED_SEEDS_REBUTTAL = (
    "not done: the template runs its own seeds and ignores the lab's seed list (an AI Scientist template's "
    "hard-coded seeds), so another run would repeat the seeds the arms already have, not add any"
)


def review_answered(st: ProjectState, items: list[RevisionItem], responses: list[ItemResponse], now: float) -> Step:
    """The PI's answers to the review: a rebuttal, then the runs and references the answers promise, then a new round."""
    st, out = _begin(st)
    by_id = {i.id: i for i in items}
    if st.spec.fixed_seeds:  # "act" would re-run the seeds the arms already have: the answer can only be a rebuttal
        responses = [r.model_copy(update={"action": "rebut", "text": FIXED_SEEDS_REBUTTAL})
                     if r.action == "act" and (item := by_id.get(r.item_id)) is not None and item.kind == "more_seeds" else r
                     for r in responses]
    st.revision_items, st.responses = items, responses
    st.round += 1
    for r in responses:
        item = by_id.get(r.item_id)
        if r.action == "act" and item is not None and item.kind == "more_seeds":
            _more_seeds(st, out, item)
        if r.action == "act" and item is not None and wants_references(item):
            _search_references(st, out, item.id)
    out.insert(0, Send(Rebuttal(round=st.round - 1, responses=st.responses), "reviewer"))
    st.stage = "experiments"
    return Step(st, out, _advance(st, out, now))


def seeds_to_add(st: ProjectState, arm: str, asked: int | None) -> list[int]:
    """The seeds a more_seeds item adds to one arm: up to the number it asks for in all (at most the budget's
    ``max_seeds_per_arm``), else the template's usual number more; never a seed the arm already has.

    The count is of the arm's exploratory seeds, the ones its comparison pools: a confirmation run's fresh seeds are
    analysed apart, so counting them left the baseline short (README command 1: 3 + 3 confirmation + 4 = "10", 7 pooled),
    and a failed experiment's seeds gave no value (a 7-seed top-up that timed out left its arm at 3, yet counted as 10).
    No new seed is one the arm tried before, nor a confirmation seed of any arm: the confirmation stays on fresh seeds.
    """
    mine = [e for e in st.experiments.values() if e.idea_id == arm]
    have = {s for e in mine if not e.confirmation and e.status != "failed" for s in e.seeds}
    taken = {s for e in mine for s in e.seeds} | {s for e in st.experiments.values() if e.confirmation for s in e.seeds}
    want = st.spec.seeds if asked is None else min(asked, st.budget.max_seeds_per_arm) - len(have)
    free = (s for s in itertools.count(max(taken, default=-1) + 1 if asked is None else 0) if s not in taken)
    return [s for _, s in zip(range(max(want, 0)), free, strict=False)]


def _more_seeds(st: ProjectState, out: list[Effect], item: RevisionItem) -> None:
    """Run more seeds for an idea, and for the baseline too, so both arms keep equal seeds.

    The answer says what was run: "act" on an ask the per-arm limit cuts short names the limit; one it stops
    entirely becomes a rebuttal, as a citation item with nothing to cite does.
    """
    target = item.target
    arms = [target] if target == BASELINE else [target, BASELINE]
    ran: dict[str, int] = {}
    for arm in arms:
        if arm != BASELINE and arm not in st.ideas:
            continue
        if st.runs_used >= st.budget.max_runs or compute_spent(st, out):
            return
        if any(e.idea_id == arm and e.round == st.round for e in st.experiments.values()):
            continue  # already asked this round
        seeds = seeds_to_add(st, arm, item.seeds)
        ran[arm] = len(seeds)
        if seeds:
            idea = st.ideas[arm].idea if arm in st.ideas else None
            _request_experiment(st, out, arm, idea, seeds)
    if item.seeds is not None and item.seeds > st.budget.max_seeds_per_arm:
        limit = st.budget.max_seeds_per_arm
        if ran and not any(ran.values()):
            why = f"not done: the arms already have {limit} seeds, the most this project's budget runs per arm (max_seeds_per_arm)"
            st.responses = [r.model_copy(update={"action": "rebut", "text": why}) if r.item_id == item.id else r for r in st.responses]
        elif ran:
            why = f" (up to {limit} seeds per arm, this project's max_seeds_per_arm, of the {item.seeds} asked; the shortfall is stated)"
            st.responses = [r.model_copy(update={"text": r.text + why}) if r.item_id == item.id else r for r in st.responses]


def _search_references(st: ProjectState, out: list[Effect], item_id: str) -> None:
    """Ask the literature agent for papers the review wants; the draft waits for the answer."""
    keywords = [str(k) for k in st.spec.keywords]
    topic = keywords[0] if keywords else (st.spec.name or st.template).replace("_", " ")
    changes = [k.replace("_", " ") for s in st.ideas.values() if s.status in ("done", "failed") for k in s.idea.changes]
    queries = list(dict.fromkeys([*keywords[:4], *(f"{c} {topic}" for c in changes)]))[:8] or [topic]
    st.citations_pending = [*st.citations_pending, item_id]
    out.append(Send(ReferenceSearch(item_id=item_id, queries=queries, template_object=st.template_object, known=sorted(st.references)), "literature"))


def references_found(st: ProjectState, body: ReferencesFound, now: float) -> Step:
    """The literature agent's answer to a citation item: cite what is new, or turn the promise into a rebuttal."""
    st, out = _begin(st)
    if body.item_id not in st.citations_pending:
        return Step(st)
    st.citations_pending = [i for i in st.citations_pending if i != body.item_id]
    new = [r for r in body.references if r.key not in st.references]
    for ref in new:
        st.references[ref.key] = ref
    if not new:
        # "act" must change the paper; with nothing new to cite it cannot, so the answer becomes a rebuttal.
        why = f"the literature agent found nothing new to cite: {body.reason or 'no reason given'}"
        st.responses = [r.model_copy(update={"action": "rebut", "text": why}) if r.item_id == body.item_id else r for r in st.responses]
    else:
        added = ", ".join(x.key for x in new)
        st.responses = [r.model_copy(update={"text": f"{r.text} (added {added})"}) if r.item_id == body.item_id else r for r in st.responses]
    out.append(Log("info", "references added", {"item": body.item_id, "keys": [r.key for r in new]}))
    return Step(st, out, _advance(st, out, now))


# ------------------------------------------------------------ the end


def finish(st: ProjectState, *, accepted: bool, reason: str, failed: bool = False) -> Step:
    """The decision: the project ends, its reviews are stored, and everyone is told."""
    st, out = _begin(st)
    _finish(st, out, accepted=accepted, reason=reason, failed=failed)
    return Step(st, out)


def _finish(st: ProjectState, out: list[Effect], *, accepted: bool, reason: str, failed: bool = False) -> None:
    st.stage = "failed" if failed else "done"
    st.accepted = accepted
    if st.budget_stop and st.budget_stop not in reason:
        reason = f"{reason}; {st.budget_stop}"
    st.outcome = reason
    review_object = None
    if st.reviews:
        review_object = f"{st.project}/review.json"
        reviews = [r.model_dump(mode="json") for r in st.reviews]
        out.append(PutArtifact(review_object, json.dumps(reviews, indent=2).encode()))
    out.append(Send(Decision(accepted=accepted, reason=reason, rounds=st.round, paper=st.draft, review_object=review_object), "all"))
    out.append(Log("info", "decision", {"accepted": accepted, "reason": reason}))


def usage_reported(st: ProjectState, sender: str, usage: Usage) -> Step:
    """A role's spend on this project so far: past the token budget the project ends; past the money budget no new
    run starts (``compute_spent``) and no new revision round, so the project finishes with what it has."""
    st, out = _begin(st)
    st.usage[sender] = usage
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in st.usage.values())
    if st.budget.max_tokens is not None and tokens > st.budget.max_tokens and st.stage not in _ENDED:
        _finish(st, out, accepted=False, reason=f"token budget spent ({tokens} > {st.budget.max_tokens})", failed=True)
    elif st.stage not in _ENDED:
        compute_spent(st, out)
    return Step(st, out)


def money_spent(st: ProjectState) -> bool:
    limit = st.budget.max_cost_usd
    return limit is not None and sum(u.cost_usd for u in st.usage.values()) >= limit


def out_of_time(st: ProjectState, now: float) -> bool:
    """Past the wall time, counted from the approval where the project waited for one."""
    return now - (st.approved_at or st.started_at) > st.budget.wall_time_s
