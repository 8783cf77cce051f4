"""A project's outputs, written to a folder from the store: what `lab export`, `lab run` and `lab run --attach` write.

Everything a project produced lives on the bus (the conversation stream and
the object store), never only in the process that started it, so a paper is
reachable whatever died. One function writes the folder, so `lab run`'s own
outputs and a later `lab export` cannot differ. A project that has not
decided yet is exported as far as it got (its latest draft, the runs so far)
and ``export.json`` says so.

    paper.tex paper.md paper.pdf references.bib figures/   the decided paper (else the latest draft)
    review.json                                              the reviews, every round
    analysis.json                                            the latest analysis report
    baseline.md                                              a template with nothing to vary: its baseline characterised
    evolve/                                                  an evolve project's files (final.jsonl, preferences.jsonl, progress.png, ...)
    results/<experiment-id>/...                              every run's files (``-attempt2``… when retried; job ids in export.json;
                                                             a run the result cache served: the files of the run it reused)
    conversation.jsonl                                       the whole log
    export.json                                              finished or not, the decision, the files, each analysed run's provenance, the compute spent,
                                                             the failed jobs' outputs `lab prune` deleted (``pruned``)
                                                             (as of the log's newest message, so a store always exports the same bytes)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.aisci import baseline_report, declares_no_levers, record_measured
from bus import subjects
from bus.client import Bus
from bus.errors import ArtifactMissing, LabError
from bus.permissions import convo_refusal
from bus.provenance import provenance, spend
from bus.replay import read
from bus.schema import (
    AnalysisDone,
    Budget,
    Decision,
    DraftReady,
    Estimate,
    ExperimentPlanned,
    ExperimentResult,
    ProjectView,
    ReviewDone,
    RunRecord,
    StartProject,
    Usage,
)
from bus.store import Artifacts, object_name_refusal
from services.read.projects import project_state


class UnknownProject(LabError, LookupError):
    """Nothing on the bus names this project."""


@dataclass
class Exported:
    project: str
    out: Path
    finished: bool
    stage: str
    decision: Decision | None = None
    files: list[tuple[str, Path]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (object name, why it was not written)
    pruned: list[tuple[str, str]] = field(default_factory=list)  # (object name, where it would be): a failed job's output `lab prune` removed
    results: dict[str, str] = field(default_factory=dict)  # results/ folder -> the job id it holds
    runs: list[RunRecord] = field(default_factory=list)  # the analysed runs (the runs so far, before any analysis)
    reported: list[RunRecord] = field(default_factory=list)  # every run the engineer reported: what the project's compute went to
    usage: dict[str, Usage] | None = None  # the tokens and money each role reported (None: the PI stored no state)
    budget: Budget | None = None  # the project's budget as the PI holds it (the lab's caps applied)
    estimate: Estimate | None = None  # what the PI expected the project to use (None: no state, or an older project)
    user: str = ""  # who started it (ProjectView.user; "" for projects started before it was recorded)


PRUNED = "a failed job's output, deleted by `lab prune` (retention: docs/backup.md)"
SAFE_FOLDER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,80}")


@dataclass
class _Log:
    """What the export needs from the conversation, read in one pass."""

    lines: list[str] = field(default_factory=list)
    decision: Decision | None = None
    draft: DraftReady | None = None
    analysis: AnalysisDone | None = None
    reviews: list[ReviewDone] = field(default_factory=list)
    start: StartProject | None = None
    runs: list[RunRecord] = field(default_factory=list)
    jobs: dict[str, tuple[str, int]] = field(default_factory=dict)  # job id -> (experiment id, attempt)
    last_at: str | None = None  # when the newest message of the log was written: what the export shows is as of then

    def folder(self, job_id: str) -> str:
        """The results folder people read: the experiment's id (with its attempt when retried), else the job id."""
        experiment, attempt = self.jobs.get(job_id, ("", 1))
        if not SAFE_FOLDER.fullmatch(experiment):
            return job_id
        return experiment if attempt == 1 else f"{experiment}-attempt{attempt}"


async def _read_log(bus: Bus, project: str) -> _Log:
    log = _Log()
    async for entry in read(bus, subjects.convo_all(project)):
        env = entry.envelope
        if env is None:
            continue
        record = {"seq": entry.seq, "subject": entry.subject, **env.model_dump(mode="json")}
        log.lines.append(json.dumps(record))
        log.last_at = record.get("created_at")
        if convo_refusal(entry.subject, env) is not None:
            continue  # in the log as it was said, never believed: the agents dead-lettered it (bus.permissions.SENDERS)
        body = env.body
        if isinstance(body, Decision):
            log.decision = body
        elif isinstance(body, DraftReady):
            log.draft = body
        elif isinstance(body, AnalysisDone):
            log.analysis = body
        elif isinstance(body, ReviewDone):
            log.reviews.append(body)
        elif isinstance(body, StartProject):
            log.start = body
        elif isinstance(body, ExperimentPlanned):
            for job_id in body.job_ids:  # each plan of an experiment is its next attempt
                log.jobs.setdefault(job_id, (body.experiment_id, 1 + sum(e == body.experiment_id for e, _ in log.jobs.values())))
        elif isinstance(body, ExperimentResult):
            log.runs += body.runs
            log.jobs.update({r.job_id: (r.experiment_id, r.attempt) for r in body.runs})
    return log


def inside(out: Path, dest: Path) -> Path | None:
    """``dest`` resolved (symbolic links followed), if it lies strictly inside ``out``; else None."""
    root, path = out.resolve(), dest.resolve()
    return path if path != root and path.is_relative_to(root) else None


async def _fetch(artifacts: Artifacts, name: str | None, dest: Path, done: Exported) -> Path | None:
    """Write object ``name`` to ``dest``, which must stay inside the export folder; a name that would not is reported in ``done.refused``."""
    if not name:
        return None
    why = object_name_refusal(name)
    target = inside(done.out, dest) if why is None else None
    if target is None:
        done.refused.append((name, why or f"would be written to {dest}, outside {done.out}"))
        return None
    try:
        data = await artifacts.get(name)
    except ArtifactMissing:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return dest


async def export_project(bus: Bus, project: str, out: Path) -> Exported:
    """Write ``project``'s outputs under ``out``, from the store; raise UnknownProject when there is none."""
    subjects.token(project, "project")
    state = await project_state(bus, project)
    log = await _read_log(bus, project)
    if state is None and not log.lines:
        raise UnknownProject(f"unknown project {project!r}: nothing on the bus names it")
    artifacts = await Artifacts.open(bus)
    out.mkdir(parents=True, exist_ok=True)
    done = _exported(project, out, state, log)
    files = done.files

    paper = log.decision.paper if log.decision is not None else log.draft
    if paper is not None:
        for label, name in (("paper.tex", paper.tex), ("paper.md", paper.markdown), ("paper.pdf", paper.pdf), ("references.bib", paper.bib)):
            if p := await _fetch(artifacts, name, out / label, done):
                files.append((label, p))
        for fig in paper.figures:
            await _fetch(artifacts, fig, out / "figures" / Path(fig).name, done)
        if paper.figures:
            files.append(("figures/", out / "figures"))
    review = out / "review.json"
    if log.decision is not None and await _fetch(artifacts, log.decision.review_object, review, done):
        files.append(("review.json", review))
    elif log.reviews:  # not decided yet: the reviews so far, in the PI's format
        review.write_text(json.dumps([r.model_dump(mode="json") for r in log.reviews], indent=2))
        files.append(("review.json", review))
    analysis = out / "analysis.json"
    # The writer's analysis.json (the report plus every number as the paper prints it) traces the paper;
    # before a draft exists, the analyst's latest report is what there is.
    if paper is not None and paper.analysis and await _fetch(artifacts, paper.analysis, analysis, done):
        files.append(("analysis.json", analysis))
    elif log.analysis is not None:
        analysis.write_text(log.analysis.report.model_dump_json(indent=2))
        files.append(("analysis.json", analysis))
    if log.start is not None and declares_no_levers(log.start.spec):  # no knobs, no variants (an AI Scientist template)
        (out / "baseline.md").write_text(baseline_report(log.start.spec, log.runs))
        record_measured(log.start.spec.name, log.runs, project)  # its first run's wall time: the next project's time budget
        files.append(("baseline.md", out / "baseline.md"))
    await _export_results(artifacts, project, log, out, done)
    if (out / "results").is_dir():
        files.append(("results/", out / "results"))
    for name in await artifacts.list(f"{project}/evolve/"):  # an evolve project's files (agents/evolve/files.py)
        await _fetch(artifacts, name, out / "evolve" / name.removeprefix(f"{project}/evolve/"), done)
    if (out / "evolve").is_dir():
        files.append(("evolve/", out / "evolve"))
    convo = out / "conversation.jsonl"
    convo.write_text("".join(line + "\n" for line in log.lines))
    files.append(("conversation.jsonl", convo))

    manifest = out / "export.json"
    manifest.write_text(json.dumps(_manifest(done, paper, log.last_at), indent=2))
    files.append(("export.json", manifest))
    return done


async def _export_results(artifacts: Artifacts, project: str, log: _Log, out: Path, done: Exported) -> None:
    """Every run's files under ``results/<experiment-id>/``: the project's own jobs', then those of runs the cache served."""
    for name in await artifacts.list(f"{project}/runs/"):
        parts = name.split("/", 3)
        if len(parts) < 4:
            done.refused.append((name, "not a run's file (<project>/runs/<job>/<file>)"))
            continue
        folder = log.folder(parts[2])
        if done.results.setdefault(folder, parts[2]) != parts[2]:  # two jobs under one name: the job's own id keeps them apart
            folder = done.results.setdefault(parts[2], parts[2])
        await _fetch(artifacts, name, out / "results" / folder / parts[3], done)
    for name in await artifacts.deleted(f"{project}/runs/"):  # retention removed it (services/lab/prune.py): said, not a silent hole
        parts = name.split("/", 3)
        done.pruned.append((name, f"results/{log.folder(parts[2])}/{parts[3]}" if len(parts) == 4 else ""))
    for run in log.runs:  # a run the result cache served: its files are the project that ran it's, exported here as this one's
        if not run.reused_from:
            continue
        folder = log.folder(run.job_id)
        if done.results.setdefault(folder, run.job_id) != run.job_id:
            folder = done.results.setdefault(run.job_id, run.job_id)
        for name in run.artifacts:
            parts = name.split("/", 3)
            if len(parts) < 4 or parts[1] != "runs":
                done.refused.append((name, "not a run's file (<project>/runs/<job>/<file>)"))
                continue
            await _fetch(artifacts, name, out / "results" / folder / parts[3], done)


def _exported(project: str, out: Path, state: ProjectView | None, log: _Log) -> Exported:
    """What the export starts from: the project's stage and decision, the runs the paper rests on, and what it spent."""
    return Exported(
        project=project, out=out, finished=log.decision is not None, stage=state.stage if state else "unknown", decision=log.decision,
        # The runs the analysis (the paper's evidence) read; before there is one, every run reported so far.
        runs=list(log.analysis.report.runs) if log.analysis is not None else list(log.runs),
        reported=list(log.runs), usage=state.usage if state is not None else None,
        budget=state.budget if state is not None else None, estimate=state.estimate if state is not None else None,
        user=state.user if state is not None else "",
    )


def _spend(done: Exported) -> dict[str, Any]:
    """What the project used, beside what the PI expected (``estimate``) and the limits it ran under (``limits``)."""
    out = spend(done.reported, done.usage)
    out["estimate"] = done.estimate.model_dump(mode="json") if done.estimate is not None else None
    b = done.budget
    out["limits"] = None if b is None else {
        "max_runs": b.max_runs, "max_gpu_hours": b.max_gpu_hours, "max_cpu_hours": b.max_cpu_hours,
        "max_cost_usd": b.max_cost_usd, "max_tokens": b.max_tokens, "wall_time_s": b.wall_time_s,
    }
    return out


def _manifest(done: Exported, paper: DraftReady | None, as_of: str | None = None) -> dict[str, Any]:
    d = done.decision
    return {
        "project": done.project,
        "status": "finished" if done.finished else "unfinished",
        "note": "" if done.finished else f"the project had not decided when exported (stage {done.stage}); this is what existed so far",
        "stage": done.stage,
        "started_by": done.user,  # who `lab run` said started it (LAB_USER or the login): per-user budgets count by it
        "accepted": d.accepted if d else None,
        "reason": d.reason if d else "",
        "paper_round": paper.round if paper else None,
        "files": [label for label, _ in done.files],
        "refused": [{"object": name, "reason": why} for name, why in done.refused],
        # A failed job's output of a finished project, deleted by `lab prune` after its age (docs/backup.md).
        "pruned": [{"object": name, "path": path, "reason": PRUNED} for name, path in done.pruned],
        "results": {folder: {"job_id": job} for folder, job in sorted(done.results.items())},  # results/<experiment-id>/ -> its job
        # Each analysed run traced to its job: attempt, executor, node, image (or interpreter and packages hash), code and diff hashes.
        "provenance": [provenance(r) for r in done.runs],
        # What every job the project ran used (analysed or not): wall, CPU and GPU seconds, GPU-hours, and its minds' tokens.
        "spend": _spend(done),
        # As of the log's newest message, not the clock: the same store exports the same bytes (a restored backup too).
        "as_of": as_of,
    }
