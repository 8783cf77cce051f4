"""What each page of the web view shows, computed from a project's conversation.

Pure functions over envelopes (and the job runner's log lines), so a page's
content can be checked for a given conversation without a browser or a bus.
The latest message of a kind wins where a later round replaces an earlier
one (analysis, paper); reviews keep every round, each with the PI's answers.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC

from bus.replay import Entry
from bus.schema import BASELINE, ArchiveRecord, Envelope, FormatError, JobLogLine, ProjectView
from services.read.describe import describe

LOG_TAIL = 8  # log lines kept per job on the experiments view


@dataclass
class MessageView:
    """One conversation message: the `lab logs` line, and its JSON to expand."""

    seq: int
    time: str
    sender: str
    recipient: str
    kind: str
    line: str
    json: str
    note_id: str = ""  # a co-PI note's id, or the note a note_ack answers


def message_view(entry: Entry) -> MessageView:
    env = entry.envelope
    if env is None:
        return MessageView(entry.seq, "", "?", "?", "invalid", f"invalid message ({entry.error})", entry.data.decode(errors="replace"))
    body = env.body
    note_id = body.note.id if body.type == "copi_note" else body.note_id if body.type == "note_ack" else ""
    return MessageView(
        seq=entry.seq, time=env.created_at.strftime("%H:%M:%S"), sender=env.sender, recipient=env.recipient, kind=body.type,
        line=describe(env), json=json.dumps(env.model_dump(mode="json"), indent=2), note_id=note_id,
    )


# ---------------------------------------------------------------- the projects list


@dataclass
class ProjectSummary:
    project: str
    template: str
    stage: str
    ideas: str
    runs: str
    rounds: str
    cost: str
    decision: str  # "accepted", "not accepted", "stopped …", or "" while it runs
    estimate: str = ""  # what the PI expects the project to use, in one line ("" for a project started before estimates)
    waiting: str = ""  # why the project waits for the co-PI's approval ("" when it does not)
    limits: str = ""  # its compute and money limits, beside what it spent so far


def summary(state: ProjectView) -> ProjectSummary:
    b = state.budget
    return ProjectSummary(
        project=state.project, template=state.template, stage=state.stage,
        ideas=f"{len(state.ideas)}/{b.max_ideas}", runs=f"{len(state.experiments)}/{b.max_runs}",
        rounds=f"{state.round}/{b.max_revision_rounds}", cost=f"${state.cost_usd:.4f}", decision=state.decision,
        estimate=state.estimate.line() if state.estimate else "",
        waiting=(state.estimate.why if state.estimate else "") or "waiting" if state.waiting_approval else "",
        limits=_limits(state),
    )


def _limits(state: ProjectView) -> str:
    """GPU-hours and CPU-hours spent so far against the project's limits (where it has any)."""
    from bus.provenance import spend

    sp, b = spend(state.runs), state.budget
    parts = [f"{sp['gpu_hours']:g} GPU-h" + (f" of {b.max_gpu_hours:g}" if b.max_gpu_hours is not None else ""),
             f"{sp['cpu_s'] / 3600:.4g} CPU-h" + (f" of {b.max_cpu_hours:g}" if b.max_cpu_hours is not None else "")]
    if b.max_cost_usd is not None:
        parts.append(f"${state.cost_usd:.4f} of ${b.max_cost_usd:g}")
    return ", ".join(parts)


# ---------------------------------------------------------------- experiments


@dataclass
class JobLive:
    """What the job runner said about one job on ``lab.jobs``: its latest state and last log lines."""

    state: str = ""
    reason: str = ""
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))


def job_activity(entries: Iterable[Entry]) -> dict[str, JobLive]:
    """Fold the LAB_JOBS stream of one project: status envelopes and JSON log lines, by job id."""
    jobs: dict[str, JobLive] = {}
    for e in entries:
        parts = e.subject.split(".")  # lab.jobs.<project>.<job>.<log|status>
        if len(parts) != 5:
            continue
        live = jobs.setdefault(parts[3], JobLive())
        if parts[4] == "status" and e.envelope is not None and e.envelope.body.type == "job_status":
            live.state, live.reason = e.envelope.body.state, e.envelope.body.reason
        elif parts[4] == "log":
            try:
                live.lines.append(JobLogLine.parse(e.data).line)
            except FormatError:  # not the runner's JSON line (an older runner, or raw bytes): show it as it came
                live.lines.append(e.data.decode(errors="replace"))
    return jobs


@dataclass
class RunView:
    job_id: str
    state: str
    reason: str = ""
    metrics: list[tuple[str, str]] = field(default_factory=list)  # (name, "mean ± stderr")
    wall_s: float = 0.0
    figures: list[str] = field(default_factory=list)  # object-store names
    log: list[str] = field(default_factory=list)


@dataclass
class ExperimentView:
    experiment_id: str
    idea_id: str
    what: str  # "baseline" or the idea's changes
    seeds: list[int]
    state: str  # requested, planned, rejected, running, done, failed
    reason: str = ""
    runs: list[RunView] = field(default_factory=list)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif")


def experiments(convo: Iterable[Envelope], jobs: dict[str, JobLive] | None = None) -> list[ExperimentView]:
    jobs = jobs or {}
    out: dict[str, ExperimentView] = {}
    for env in convo:
        b = env.body
        if b.type == "experiment_request":
            what = "baseline" if b.idea is None else ", ".join(f"{k}={v}" for k, v in b.idea.changes.items())
            out[b.experiment_id] = ExperimentView(b.experiment_id, b.idea.id if b.idea else BASELINE, what, list(b.seeds), "requested")
        elif b.type == "experiment_planned" and b.experiment_id in out:
            x = out[b.experiment_id]
            x.state, x.reason = ("rejected", b.rejected) if b.rejected else ("planned", "")
            x.runs = [RunView(job_id=j, state="planned") for j in b.job_ids]
        elif b.type == "experiment_result" and b.experiment_id in out:
            x = out[b.experiment_id]
            x.runs = [
                RunView(
                    job_id=r.job_id, state=r.status, reason=r.reason, wall_s=r.wall_s,
                    metrics=[(n, f"{s.mean:.4g} ± {s.stderr:.2g}") for n, s in (r.final_info.metrics.items() if r.final_info else [])],
                    figures=[a for a in r.artifacts if a.lower().endswith(IMAGE_SUFFIXES)],
                )
                for r in b.runs
            ]
            x.state = "done" if any(r.status == "succeeded" for r in b.runs) else "failed"
            x.reason = "; ".join(r.reason for r in b.runs if r.reason)
    for x in out.values():
        for run in x.runs:
            live = jobs.get(run.job_id)
            if live is None:
                continue
            run.log = list(live.lines)
            if run.state == "planned" and live.state:
                run.state, run.reason = live.state, live.reason
        if x.state == "planned" and any(r.state == "running" for r in x.runs):
            x.state = "running"
    return list(out.values())


# ---------------------------------------------------------------- analysis


@dataclass
class ComparisonRow:
    idea_id: str
    metric: str
    baseline: str
    idea: str
    improvement: str
    ci: str
    p_value: str
    effect: str
    verdict: str
    primary: bool


@dataclass
class AnalysisView:
    round: int
    primary_metric: str
    rows: list[ComparisonRow]
    flags: list[str]
    figures: list[str]
    summary: str


def analysis(convo: Iterable[Envelope]) -> AnalysisView | None:
    """The latest round's analysis table, the primary metric's rows first."""
    report = None
    for env in convo:
        if env.body.type == "analysis_done":
            report = env.body.report
    if report is None:
        return None
    rows = [
        ComparisonRow(
            idea_id=c.idea_id, metric=c.metric, baseline=f"{c.baseline_mean:.4g} ± {c.baseline_stderr:.2g} (n={c.n_baseline})",
            idea=f"{c.idea_mean:.4g} ± {c.idea_stderr:.2g} (n={c.n_idea})", improvement=f"{c.improvement:+.4g}",
            ci=f"[{c.ci_low:.3g}, {c.ci_high:.3g}]", p_value=f"{c.p_value:.3g}", effect=f"{c.effect_size:.2f}", verdict=c.verdict,
            primary=c.metric == report.primary_metric,
        )
        for c in report.comparisons
    ]
    rows.sort(key=lambda r: (not r.primary, r.metric, r.idea_id))
    return AnalysisView(report.round, report.primary_metric, rows, [f.text for f in report.flags], list(report.figures), report.summary)


# ---------------------------------------------------------------- reviews


@dataclass
class ItemView:
    id: str
    kind: str
    text: str
    target: str
    answer: str = ""  # the PI's answer, "act: …" or "rebut: …"; "" when not (yet) answered


@dataclass
class ReviewRoundView:
    round: int
    decision: str
    overall: list[int]
    summary: str
    items: list[ItemView]


def review_rounds(convo: Iterable[Envelope]) -> list[ReviewRoundView]:
    rounds: dict[int, ReviewRoundView] = {}
    answers: dict[int, dict[str, str]] = {}
    for env in convo:
        b = env.body
        if b.type == "review_done":
            items = [ItemView(i.id, i.kind, i.text, i.target) for i in b.meta.revision_items]
            rounds[b.round] = ReviewRoundView(b.round, b.meta.decision, [r.scores.overall for r in b.reviews], b.meta.summary, items)
        elif b.type == "rebuttal":
            answers.setdefault(b.round, {}).update({r.item_id: f"{r.action}: {r.text}" for r in b.responses})
    for n, view in rounds.items():
        for item in view.items:
            item.answer = answers.get(n, {}).get(item.id, "")
    return [rounds[n] for n in sorted(rounds)]


# ---------------------------------------------------------------- paper, decision, co-PI notes


@dataclass
class PaperView:
    round: int
    markdown: str  # object-store names
    tex: str
    pdf: str | None
    pdf_error: str
    folder: str  # where paper.md's relative links (figures/…) point


def paper(convo: Iterable[Envelope]) -> PaperView | None:
    """The latest draft (the decision carries the final one)."""
    draft = None
    for env in convo:
        b = env.body
        if b.type == "draft_ready":
            draft = b
        elif b.type == "decision" and b.paper is not None:
            draft = b.paper
    if draft is None:
        return None
    return PaperView(draft.round, draft.markdown, draft.tex, draft.pdf, draft.pdf_error, draft.markdown.rsplit("/", 1)[0])


@dataclass
class DecisionView:
    accepted: bool
    reason: str
    rounds: int


def decision(convo: Iterable[Envelope]) -> DecisionView | None:
    found = None
    for env in convo:
        if env.body.type == "decision":
            found = DecisionView(env.body.accepted, env.body.reason, env.body.rounds)
    return found


@dataclass
class NoteView:
    id: str
    to: str
    text: str
    answer: str = ""  # what the role understood; "" until its note_ack arrives


def notes(convo: Iterable[Envelope]) -> list[NoteView]:
    out: dict[str, NoteView] = {}
    for env in convo:
        b = env.body
        if b.type == "copi_note":
            out.setdefault(b.note.id, NoteView(b.note.id, b.note.to, b.note.text))
        elif b.type == "note_ack" and b.note_id in out:
            out[b.note_id].answer = b.understood
    return list(out.values())


@dataclass
class ProjectPage:
    """Everything the project page's sections show, from one reading of the bus."""

    project: str
    summary: ProjectSummary | None
    experiments: list[ExperimentView]
    analysis: AnalysisView | None
    reviews: list[ReviewRoundView]
    paper: PaperView | None
    decision: DecisionView | None
    notes: list[NoteView]
    running: bool


def project_page(project: str, state: ProjectView | None, convo: list[Envelope], jobs: dict[str, JobLive]) -> ProjectPage:
    d = decision(convo)
    return ProjectPage(
        project=project, summary=summary(state) if state else None, experiments=experiments(convo, jobs), analysis=analysis(convo),
        reviews=review_rounds(convo), paper=paper(convo), decision=d, notes=notes(convo), running=d is None and (state is None or not state.finished),
    )


# ---------------------------------------------------------------- the idea archive


@dataclass
class ArchiveRow:
    project: str
    idea_id: str
    title: str
    tried: str  # knob values and code change, as `lab ideas` shows them
    status: str  # better, worse, inconclusive, failed, not_novel, skipped, pending
    improvement: str
    effect: str
    ci: str
    p_adjusted: str
    replicated: str
    when: str  # UTC
    reason: str


@dataclass
class TemplateArchive:
    template: str
    rows: list[ArchiveRow]
    better: int  # how many ideas beat the baseline: what a new project builds on


def _signed(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:+.{digits}g}"


def archive(records: Iterable[ArchiveRecord]) -> list[TemplateArchive]:
    """The idea archive by template (templates by name, records oldest first): the `lab ideas` table for each."""
    from datetime import datetime

    from services.read.ideas import tried

    by: dict[str, list[ArchiveRow]] = {}
    wins: dict[str, int] = {}
    for r in records:
        o = r.outcome
        by.setdefault(r.template, []).append(ArchiveRow(
            project=r.project, idea_id=o.idea_id, title=o.title, tried=tried(r), status=o.status,
            improvement=_signed(o.improvement), effect=_signed(o.effect_size, 2),
            ci=f"[{o.ci_low:.3g}, {o.ci_high:.3g}]" if o.ci_low is not None and o.ci_high is not None else "",
            p_adjusted="" if o.p_adjusted is None else f"{o.p_adjusted:.3g}",
            replicated="" if o.replicated is None else ("yes" if o.replicated else "no"),
            when=datetime.fromtimestamp(r.recorded_at, tz=UTC).strftime("%Y-%m-%d %H:%M"), reason=o.reason,
        ))
        wins[r.template] = wins.get(r.template, 0) + (o.status == "better")
    return [TemplateArchive(t, by[t], wins[t]) for t in sorted(by)]
