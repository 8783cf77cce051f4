"""`lab run`: start one project, follow it with live progress, and collect what it produced.

Uses a running `lab up` (or the lab at ``--nats``); with neither, it starts an
embedded lab for the run and stops it afterwards. The project itself lives on
the bus, so this process may die and the project still finishes; the
deliverables are read back from the object store at the end.
"""

from __future__ import annotations

import asyncio
import getpass
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from agents import aisci, templates
from bus import subjects
from bus.client import Bus
from bus.errors import BusRefused, ConnectError, LabError, Unanswered
from bus.permissions import convo_refusal
from bus.replay import Entry, read
from bus.retry import RetryPolicy
from bus.schema import (
    Budget,
    Decision,
    Envelope,
    ExecutorKind,
    ExperimentRequest,
    ExperimentResult,
    FormatError,
    JobLogLine,
    JobStatus,
    MindChoice,
    MindKind,
    ProfileName,
    ProjectEstimate,
    StartProject,
    TemplateError,
    TemplateSpec,
)
from bus.schema.state import FINISHED_STAGES
from bus.settings import settings
from bus.store import Artifacts, Heartbeats
from services.cli import progress as progress_lines
from services.cli.terminal import clean
from services.common.config import bus_config, lab_home, read_local_lab
from services.lab.lifecycle import StoreFull, check_store
from services.read.describe import describe
from services.read.export import Exported, UnknownProject, export_project
from services.read.projects import project_state
from services.read.stored import lab_connection, unreachable


@dataclass
class RunOptions:
    template: str
    direction: str = ""
    seed: int = 0
    out: Path | None = None
    fast: bool = False
    profile: ProfileName = ""  # a template profile; --fast is --profile fast
    no_cache: bool = False  # --no-cache: every run runs fresh, none is served from the lab's result cache
    max_ideas: int = 2
    max_runs: int = 12
    max_rounds: int = 1
    wall_time: float = 3600
    max_tokens: int | None = None
    max_cost: float | None = None
    max_gpu_hours: float | None = None
    max_cpu_hours: float | None = None
    require_approval: bool = False
    mind: MindKind = "offline"
    executor: ExecutorKind = "local"
    nats: str | None = None
    quiet: bool = False
    project: str | None = None
    model: str | None = None  # the llm mind's model for this project (None: the lab's configured one)


class MindRefused(LabError, RuntimeError):
    """The lab's agents cannot think with the mind this project asks for; one line saying why."""


async def llm_refusal(bus: Bus, model: str | None) -> str | None:
    """Why the running lab cannot give this project an llm mind, from its agents' heartbeats (None: it can).

    Each agent checks at start whether it could build an llm mind (a config that loads, an API key or a
    local endpoint) and says so in its heartbeat; the agents may run elsewhere (Kubernetes), so their word
    counts, not this machine's environment.
    """
    from bus.schema import ROLES

    beats = await Heartbeats.open(bus)
    for role in ROLES:
        beat = await beats.get(role)
        # No heartbeat, or a stale one: an agent not up yet takes the choice when it comes.
        if beat is not None and not beat.stale() and beat.llm_error:
            return f"the lab's {role} agent cannot use an llm mind{f' for {model}' if model else ''}: {beat.llm_error}"
    return None


STAGES = ["ideas", "experiments", "analysis", "draft", "review", "decision"]
STAGE_OF = {
    "start_project": "ideas",
    "novelty_check": "ideas",
    "experiment_request": "experiments",
    "analysis_request": "analysis",
    "draft_request": "draft",
    "review_request": "review",
    "decision": "decision",
}


def new_project_id(template: str, seed: int) -> str:
    return subjects.token(f"{template}-s{seed}-{uuid.uuid4().hex[:6]}"[:64], "project")


def load_template(name: str) -> tuple[Path, TemplateSpec]:
    """The template, or TemplateError naming the file that is not text."""
    try:
        return templates.load(name)
    except UnicodeDecodeError as e:
        raise TemplateError(f"{templates.resolve(name) / 'template.yaml'}: not UTF-8 text ({e.reason} at byte {e.start})") from None


WEB_SOURCES = {"semantic_scholar": "Semantic Scholar", "openalex": "OpenAlex"}


def literature_line() -> str:
    """Which literature sources the run's novelty checks ask, and what goes over the network: the run's first line."""
    from agents.lit.config import source_names
    from services.common.config import lab_config

    try:
        configured = lab_config().literature.get("sources")
    except LabError:
        configured = None  # the agents say what is wrong with the config when they start
    names, _ = source_names(configured)
    web = [WEB_SOURCES[n] for n in names if n in WEB_SOURCES]
    line = f"literature sources: {', '.join(names) or 'none'}"
    if not web:
        return line + " (offline: nothing leaves this machine)"
    return line + (f" ({' and '.join(web)} when reachable: each idea's search queries are sent there; "
                   "LAB_LIT_SOURCES=local,template keeps the run offline)")


def run_project(opts: RunOptions, console: Console) -> int:
    from services.lab.supervisor import LabOptions, Supervisor, Terminated, refuse_if_full, running_lab, stop_on_signals

    folder, spec = load_template(opts.template)
    spec.profile(opts.profile)  # an unknown profile is one readable line, before a lab starts
    budget = Budget(
        max_ideas=opts.max_ideas, max_runs=opts.max_runs, max_revision_rounds=opts.max_rounds,
        wall_time_s=opts.wall_time, max_tokens=opts.max_tokens, max_cost_usd=opts.max_cost,
        max_gpu_hours=opts.max_gpu_hours, max_cpu_hours=opts.max_cpu_hours,
    )
    home = lab_home()
    console.print(literature_line(), markup=False, soft_wrap=True)
    sup = None
    # SIGTERM (timeout, a cancelled CI job) and SIGHUP (a closed terminal) stop an embedded lab like Ctrl-C does;
    # once one came, later ones (a second Ctrl-C) are ignored so the stop runs to its end: no runner is left.
    with stop_on_signals((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stopped:
        try:
            if opts.nats is None:
                refuse_if_full(home)  # a local lab, started here or not, writes under LAB_HOME
            if opts.nats is None and not running_lab(home):
                console.print(f"starting an embedded lab in {home} for this run…")
                sup = Supervisor(LabOptions(home=home, mind=opts.mind, executor=opts.executor))
                sup.start()
            return asyncio.run(_run(opts, folder, spec, budget, console, sup))
        except (Terminated, KeyboardInterrupt):
            what = "stopping the embedded lab this run started" if sup is not None else "the project goes on in the lab (`lab run --attach PROJECT` follows it)"
            console.print(f"interrupted{' by ' + stopped.name if stopped.name else ''}; {what}")
            return 128 + (stopped.signum or signal.SIGINT)
        finally:
            if sup is not None:
                sup.stop()


def attach_project(project: str, out: Path | None, nats: str | None, quiet: bool, console: Console) -> int:
    """`lab run --attach`: follow a project someone else started, and write its outputs when it ends."""

    async def main() -> int:
        with lab_connection("copi", nats, "lab-attach", write=True) as conn:  # a stopped lab: one line, how to start it
            try:
                bus = await Bus.connect(conn.config, reconnect=False, timeout=5)
            except ConnectError as e:
                raise unreachable(conn.config.url, e) from None
        try:
            state = await project_state(bus, project)
            if state is None:
                raise UnknownProject(f"unknown project {project!r}: the PI holds no state for it")
            left = state.started_at + state.budget.wall_time_s + 600 - time.time()
            opts = RunOptions(template=state.template, nats=nats, quiet=quiet, project=project)
            console.print(f"attached to project [bold]{project}[/bold] (stage {state.stage})")
            # A finished project: nothing is training, and replaying its whole job backlog would be for nothing.
            return await _follow_and_export(bus, project, out or Path("lab-out") / project, opts, console, None, time.monotonic() + max(60.0, left),
                                            progress=state.stage not in FINISHED_STAGES)
        finally:
            await bus.close()

    return asyncio.run(main())


# What a JetStream request answers while a cluster node is down and its streams elect new leaders: a timeout or
# "no response from stream" (bus.errors.Unanswered). Starting and following a project retries these (bounded, a minute), as agents do.
UNANSWERED = (Unanswered,)
CLI_RETRY = RetryPolicy(attempts=8, budget_s=60.0, base_wait_s=1.0, max_wait_s=10.0, jitter=0.3, event="jetstream_retry")
FOLLOW_RETRY = RetryPolicy(attempts=8, budget_s=None, base_wait_s=1.0, max_wait_s=10.0, jitter=0.3, event="jetstream_retry")  # a run's whole length


async def start_project(bus: Bus, project: str, bundle: bytes, envelope: Callable[[str], Envelope], retry: RetryPolicy = CLI_RETRY) -> Envelope:
    """Upload the template bundle and send the start, retrying requests a cluster left unanswered (a node down).

    Both steps are idempotent: the same bytes under the same name write nothing, and the start is built
    once, so every try sends the same id, which JetStream's duplicate window drops after the first.
    """
    sent: list[Envelope] = []

    async def once() -> None:
        bundle_name = await (await Artifacts.open(bus)).put(f"{project}/template.tar.gz", bundle)
        if not sent:
            sent.append(envelope(bundle_name))
        await bus.publish(sent[0])

    await retry.run(once, UNANSWERED)
    return sent[0]


async def _run(opts: RunOptions, folder: Path, spec: TemplateSpec, budget: Budget, console: Console, sup: Any) -> int:
    project = opts.project or new_project_id(spec.name, opts.seed)
    out = opts.out or Path("lab-out") / project
    config = bus_config("copi", opts.nats, name="lab-run")
    try:
        bus = await Bus.connect(config)
    except ConnectError as e:
        raise unreachable(config.url, e) from None
    try:
        if opts.mind == "llm" and sup is None and (reason := await llm_refusal(bus, opts.model)):
            raise MindRefused(reason)
        local = read_local_lab()
        limit = local.max_store_bytes if local and local.serves(bus.config.url) else None
        # A full store refuses the project before any of it is written.
        await CLI_RETRY.run(lambda: check_store(bus, bus.config.url, limit), UNANSWERED)
        # The choice rides on the project's envelopes: every role (and replica) thinks with this project's mind.
        choice = MindChoice(kind=opts.mind, model=opts.model)

        def start_envelope(bundle_name: str) -> Envelope:
            start = StartProject(
                template=spec.name, template_object=bundle_name, spec=spec.model_dump(mode="json"), direction=opts.direction,
                seed=opts.seed, budget=budget, fast=opts.fast or opts.profile == "fast", profile=opts.profile, mind=opts.mind,
                require_approval=opts.require_approval, measured_job_s=measured_job_s(spec), user=starter(),
                cache=not opts.no_cache,
            )
            return Envelope(project=project, sender="copi", recipient="pi", body=start, mind=choice)

        try:
            await start_project(bus, project, templates.bundle(folder), start_envelope)
        except BusRefused as e:
            if "insufficient" not in str(e):
                raise
            await check_store(bus, bus.config.url, limit)  # says how full, in one line
            raise StoreFull(f"the lab's store refused the new project ({e.description}) at {bus.config.url}") from None
        console.print(f"project [bold]{project}[/bold] started on template {spec.name!r}; "
                      f"follow with `lab logs -f --project {project}`; speak with `lab say --project {project} TEXT`")
        if opts.mind == "offline" and aisci.declares_no_levers(spec):
            console.print(f"{aisci.NO_LEVERS.split(':', 1)[0]}: the offline mind runs the baseline and its seeds and writes baseline.md")
        steps = progress_lines.total_steps(spec.effective(opts.profile or ("fast" if opts.fast else None)))
        return await _follow_and_export(bus, project, out, opts, console, sup, deadline=time.monotonic() + budget.wall_time_s + 600,
                                        steps=steps)
    finally:
        await bus.close()


def starter() -> str:
    """Who starts the project, for per-user budgets: ``LAB_USER``, else the login name ("" where neither is known)."""
    named = settings().user
    if named:
        return named[:64]
    try:
        return getpass.getuser()[:64]
    except (KeyError, OSError):  # no passwd entry for this uid (a bare container)
        return ""


def measured_job_s(spec: TemplateSpec) -> float | None:
    """The wall time of the template's first measured baseline run (an AI Scientist template's, kept in LAB_HOME), for the estimate."""
    if not aisci.declares_no_levers(spec):
        return None
    got = aisci.measured(spec.name)
    return got[0] if got is not None else None


def print_refused(console: Console, done: Exported) -> None:
    """The objects `lab export` would not write (a name that escapes the folder), each with why, and the pruned: never silently dropped."""
    for name, why in done.refused:
        console.print(f"  refused {name!r}: {why}", markup=False)
    if done.pruned:
        console.print(f"  {len(done.pruned)} output(s) of failed jobs were deleted by `lab prune`: export.json lists them (pruned)", markup=False)


async def _follow_and_export(bus: Bus, project: str, out: Path, opts: RunOptions, console: Console, sup: Any, deadline: float,
                             steps: int | None = None, progress: bool = True) -> int:
    """Follow the project to its decision, then write its outputs with `lab export`'s code (so the two cannot differ)."""
    jobs = progress_lines.Progress(steps) if progress else None
    decision = await _follow(bus, project, opts, console, sup, deadline=deadline, jobs=jobs)
    done = await export_project(bus, project, out)
    if decision is None:
        console.print(f"[red]project {project} did not reach a decision in time[/red]; what it had so far is in {out}")
        return 1
    console.print(f"\n[bold]{'ACCEPTED' if decision.accepted else 'NOT ACCEPTED'}[/bold]: {escape(clean(decision.reason))}")
    for label, path in done.files:
        console.print(f"  {label:<18} {path}")
    print_refused(console, done)
    return 0 if decision.paper is not None else 1


async def _follow(bus: Bus, project: str, opts: RunOptions, console: Console, sup: Any, deadline: float,
                  jobs: progress_lines.Progress | None = None) -> Decision | None:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} stages"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"{project}: ideas", total=len(STAGES))
        queue: asyncio.Queue[Entry] = asyncio.Queue()

        async def pump() -> None:
            # A replay that loses its stream for a moment (a node down) starts again, past what it already passed on.
            last = 0

            async def replay() -> None:
                nonlocal last
                async for e in read(bus, subjects.convo_all(project), follow=True):
                    if e.seq > last:
                        last = e.seq
                        await queue.put(e)

            await FOLLOW_RETRY.run(replay, UNANSWERED)

        # The stream is read in its own task: a timeout here must not cancel (and so close) the reader.
        reader = asyncio.create_task(pump())
        # Progress lines follow the jobs' log lines live. Not for a finished project: its whole job backlog would be
        # replayed for nothing, and an ordered consumer cancelled mid-backlog does not unsubscribe (nats-py waits).
        readers = [reader]
        if jobs is not None:
            readers.append(asyncio.create_task(FOLLOW_RETRY.run(lambda: _read_jobs(bus, project, jobs), UNANSWERED)))
        try:
            return await _watch(queue, reader, project, opts, bar, task, sup, deadline, jobs)
        finally:
            for r in readers:
                r.cancel()
            # Wait for the readers to unsubscribe before the caller closes the connection under them.
            await asyncio.gather(*readers, return_exceptions=True)


async def _read_jobs(bus: Bus, project: str, jobs: progress_lines.Progress) -> None:
    """The project's job statuses and log lines as they come: what each running job reached, for the progress lines."""
    async for e in read(bus, subjects.jobs_all(project), stream=subjects.JOBS_STREAM, follow=True):
        parts = e.subject.split(".")  # lab.jobs.<project>.<job>.<log|status>
        if len(parts) != 5:
            continue
        job = parts[3]
        if parts[4] == "status" and e.envelope is not None and isinstance(e.envelope.body, JobStatus):
            jobs.names[job] = e.envelope.body.experiment_id
            if e.envelope.body.state in ("succeeded", "failed"):
                jobs.finished(job)
        elif parts[4] == "log":
            try:
                jobs.log(job, JobLogLine.parse(e.data).line)
            except FormatError:
                continue


async def _watch(
    queue: asyncio.Queue[Entry], reader: asyncio.Task[None], project: str, opts: RunOptions, progress: Progress, task: Any, sup: Any, deadline: float,
    jobs: progress_lines.Progress | None = None,
) -> Decision | None:
    runs_done = 0
    span = deadline - time.monotonic()  # the run's time; a project that waits for approval gets it from its approval on
    waiting = False
    while True:
        if sup is not None:
            sup.tick()  # restart agents that die mid-run
        if (not waiting and time.monotonic() > deadline) or reader.done():
            return None
        for line in jobs.lines() if jobs is not None else []:  # while jobs train: a line per job at most every 30 s
            progress.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] [green]progress[/green] {escape(clean(line))}", markup=True, highlight=False)
        try:
            entry = await asyncio.wait_for(queue.get(), timeout=1.0)
        except TimeoutError:
            continue
        env = entry.envelope
        if env is None:
            continue
        if (forged := convo_refusal(entry.subject, env)) is not None:  # dead-lettered by the agents; never believed here
            progress.console.print(f"[yellow]ignored[/yellow] {escape(clean(forged))}", markup=True, highlight=False)
            continue
        if not opts.quiet and not isinstance(env.body, Decision):  # the decision is the closing summary, printed once
            progress.console.print(
                f"[dim]{env.created_at:%H:%M:%S}[/dim] [cyan]{env.sender}[/cyan] → [magenta]{env.recipient}[/magenta]  {escape(clean(describe(env)))}",
                markup=True, highlight=False,
            )
        if isinstance(env.body, ProjectEstimate) and env.body.estimate.needs_approval:  # one line, quiet or not
            waiting = True
            progress.console.print(f"waiting for approval ({escape(clean(env.body.estimate.why))}): `lab approve {project}` starts it, "
                                   f"`lab refuse {project} --reason TEXT` ends it", markup=True, highlight=False, soft_wrap=True)
        elif waiting and isinstance(env.body, ExperimentRequest):
            waiting, deadline = False, time.monotonic() + span
        stage = STAGE_OF.get(env.kind)
        if isinstance(env.body, ExperimentResult):  # env.kind == "experiment_result"
            runs_done += len(env.body.runs)
        if isinstance(env.body, ExperimentRequest) and jobs is not None:  # how many seeds its job will run, for the ETA
            jobs.seeds[env.body.experiment_id] = len(env.body.seeds)
        if stage:
            progress.update(task, completed=STAGES.index(stage) + (1 if stage == "decision" else 0), description=f"{project}: {stage} ({runs_done} runs done)")
        if isinstance(env.body, Decision):
            return env.body
