"""`lab run`: start one project, follow it with live progress, and collect what it produced.

Uses a running `lab up` (or the lab at ``--nats``); with neither, it starts an
embedded lab for the run and stops it afterwards. The project itself lives on
the bus, so this process may die and the project still finishes; the
deliverables are read back from the object store at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from agents import templates
from bus import subjects
from bus.client import Bus
from bus.errors import ArtifactMissing
from bus.messages import Budget, Decision, Envelope, StartProject
from bus.replay import read
from bus.store import Artifacts
from services.config import bus_config, lab_home
from services.render import describe


@dataclass
class RunOptions:
    template: str
    direction: str = ""
    seed: int = 0
    out: Path | None = None
    fast: bool = False
    max_ideas: int = 2
    max_runs: int = 12
    max_rounds: int = 1
    wall_time: float = 3600
    max_tokens: int | None = None
    max_cost: float | None = None
    mind: str = "offline"
    executor: str = "local"
    nats: str | None = None
    quiet: bool = False
    project: str | None = None


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


def run_project(opts: RunOptions, console: Console) -> int:
    from services.lab import LabOptions, Supervisor, running_lab

    folder, spec = templates.load(opts.template)
    budget = Budget(
        max_ideas=opts.max_ideas, max_runs=opts.max_runs, max_revision_rounds=opts.max_rounds,
        wall_time_s=opts.wall_time, max_tokens=opts.max_tokens, max_cost_usd=opts.max_cost,
    )
    home = lab_home()
    sup = None
    if opts.nats is None and not running_lab(home):
        console.print(f"starting an embedded lab in {home} for this run…")
        sup = Supervisor(LabOptions(home=home, mind=opts.mind, executor=opts.executor))
        sup.start()
    try:
        return asyncio.run(_run(opts, folder, spec, budget, console, sup))
    finally:
        if sup is not None:
            sup.stop()


async def _run(opts: RunOptions, folder: Path, spec: templates.TemplateSpec, budget: Budget, console: Console, sup: Any) -> int:
    project = opts.project or new_project_id(spec.name, opts.seed)
    out = opts.out or Path("lab-out") / project
    bus = await Bus.connect(bus_config("copi", opts.nats, name="lab-run"))
    try:
        artifacts = await Artifacts.open(bus)
        bundle_name = await artifacts.put(f"{project}/template.tar.gz", templates.bundle(folder))
        start = StartProject(
            template=spec.name, template_object=bundle_name, spec=spec.model_dump(mode="json"), direction=opts.direction,
            seed=opts.seed, budget=budget, fast=opts.fast, mind=opts.mind,
        )
        await bus.publish(Envelope(project=project, sender="copi", recipient="pi", body=start))
        console.print(f"project [bold]{project}[/bold] started on template {spec.name!r}; follow with `lab logs -f --project {project}`; speak with `lab say --project {project} TEXT`")
        decision = await _follow(bus, project, opts, console, sup, deadline=time.monotonic() + budget.wall_time_s + 600)
        if decision is None:
            console.print(f"[red]project {project} did not reach a decision in time[/red]")
            return 1
        paths = await _collect(bus, artifacts, project, decision, out)
        console.print(f"\n[bold]{'ACCEPTED' if decision.accepted else 'NOT ACCEPTED'}[/bold]: {decision.reason}")
        for label, path in paths:
            console.print(f"  {label:<18} {path}")
        return 0 if decision.paper is not None else 1
    finally:
        await bus.close()


async def _follow(bus: Bus, project: str, opts: RunOptions, console: Console, sup: Any, deadline: float) -> Decision | None:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} stages"), TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task(f"{project}: ideas", total=len(STAGES))
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            async for e in read(bus, subjects.convo_all(project), follow=True):
                await queue.put(e)

        # The stream is read in its own task: a timeout here must not cancel (and so close) the reader.
        reader = asyncio.create_task(pump())
        try:
            return await _watch(queue, reader, project, opts, progress, task, sup, deadline)
        finally:
            reader.cancel()


async def _watch(queue: asyncio.Queue, reader: asyncio.Task, project: str, opts: RunOptions, progress: Progress, task: Any, sup: Any, deadline: float) -> Decision | None:
    runs_done = 0
    while True:
        if sup is not None:
            sup.tick()  # restart agents that die mid-run
        if time.monotonic() > deadline or reader.done():
            return None
        try:
            entry = await asyncio.wait_for(queue.get(), timeout=1.0)
        except asyncio.TimeoutError:
            continue
        env = entry.envelope
        if env is None:
            continue
        if not opts.quiet:
            progress.console.print(f"[dim]{env.created_at:%H:%M:%S}[/dim] [cyan]{env.sender}[/cyan] → [magenta]{env.recipient}[/magenta]  {escape(describe(env))}", markup=True, highlight=False)
        stage = STAGE_OF.get(env.kind)
        if env.kind == "experiment_result":
            runs_done += len(env.body.runs)
        if stage:
            progress.update(task, completed=STAGES.index(stage) + (1 if stage == "decision" else 0), description=f"{project}: {stage} ({runs_done} runs done)")
        if isinstance(env.body, Decision):
            return env.body


async def _fetch(artifacts: Artifacts, name: str, dest: Path) -> Path | None:
    try:
        data = await artifacts.get(name)
    except ArtifactMissing:
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest


async def _collect(bus: Bus, artifacts: Artifacts, project: str, decision: Decision, out: Path) -> list[tuple[str, Path]]:
    """Copy the deliverables out of the object store, and the whole log out of the stream."""
    out.mkdir(parents=True, exist_ok=True)
    paths: list[tuple[str, Path]] = []
    paper = decision.paper
    if paper is not None:
        for label, name in (("paper.tex", paper.tex), ("paper.md", paper.markdown), ("paper.pdf", paper.pdf), ("references.bib", paper.bib),
                            ("analysis.json", paper.analysis)):
            if name and (p := await _fetch(artifacts, name, out / label)):
                paths.append((label, p))
        for fig in paper.figures:
            await _fetch(artifacts, fig, out / "figures" / Path(fig).name)
        if paper.figures:
            paths.append(("figures/", out / "figures"))
    if decision.review_object and (p := await _fetch(artifacts, decision.review_object, out / "review.json")):
        paths.append(("review.json", p))
    for name in await artifacts.list(f"{project}/runs/"):
        _, _, job, fname = name.split("/", 3)
        await _fetch(artifacts, name, out / "results" / job / fname)
    if (out / "results").is_dir():
        paths.append(("results/", out / "results"))
    convo = out / "conversation.jsonl"
    with convo.open("w") as f:
        async for entry in read(bus, subjects.convo_all(project)):
            if entry.envelope is not None:
                f.write(json.dumps({"seq": entry.seq, "subject": entry.subject, **entry.envelope.model_dump(mode="json")}) + "\n")
    paths.append(("conversation.jsonl", convo))
    return paths
