"""`lab`: start the lab, run projects, watch the agents talk, speak into a project as co-PI."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.markup import escape

from bus import subjects
from bus.client import Bus
from bus.errors import BusTimeout, ConnectError, PermissionDenied
from bus.replay import read
from bus.schema import EXECUTOR_KINDS, MIND_KINDS, ROLES, ExecutorKind, MindKind, ProjectView
from bus.schema.constants import AGENTS_BUCKET
from bus.settings import Settings
from bus.settings import settings as lab_settings
from bus.store import Heartbeats, StateStore
from services.cli.backup import backup_cmd, prune_cmd, restore_cmd
from services.cli.errors import LabTyper, UsageError, fail, run_app
from services.cli.terminal import SafeConsole, clean
from services.common.config import bus_config, lab_config, lab_home, read_local_lab
from services.read.describe import describe

if TYPE_CHECKING:  # the supervisor is imported by the commands that start a lab, not by every `lab` command
    from services.lab.supervisor import LabOptions

app = LabTyper(help="Kenkyu Lab: six agents on NATS run real experiments and write a reviewed paper.", no_args_is_help=True, add_completion=False)
# Every string printed goes through services.cli.terminal.clean (agents' words, crash reasons, names come from outside).
console = SafeConsole(stderr=False, highlight=False)
err = SafeConsole(stderr=True, highlight=False)
UNSAFE_HELP = "Run model-written experiments (--mind llm) on the local executor even though no sandbox (bubblewrap) works here."


# ---------------------------------------------------------------- up / down / agent


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once all agents are ready; `lab down` stops them."),
    nats: str | None = typer.Option(None, "--nats", help="Use an existing NATS server (nats://host:4222) instead of the embedded one."),
    port: int = typer.Option(0, "--port", help="Port for the embedded nats-server (default: a free one)."),
    mind: str | None = typer.Option(None, "--mind", help="offline (default, no network) or llm; default $LAB_MIND."),
    executor: str | None = typer.Option(None, "--executor", help="local, docker or kubernetes; default $LAB_EXECUTOR, else local."),
    sync_always: bool = typer.Option(False, "--sync-always", help="fsync every JetStream write (durability over speed)."),
    web: bool = typer.Option(False, "--web", help="Also serve the web view (`lab web`) on 127.0.0.1."),
    web_port: int = typer.Option(8765, "--web-port", min=0, max=65535, help="Port of the web view with --web (0: a free one)."),
    unsafe_no_sandbox: bool = typer.Option(False, "--unsafe-no-sandbox", help=UNSAFE_HELP),
    cluster: int = typer.Option(1, "--cluster", min=1, max=7, help="nats-server nodes: 3 runs a JetStream cluster on loopback."),
    replicas: list[str] = typer.Option([], "--replicas", help="Agent processes per role, ROLE=N or all=N (repeatable)."),
) -> None:
    """Start nats-server (JetStream) and the six agents on this machine."""
    from services.lab.supervisor import LabOptions, parse_replicas

    mind_kind, executor_kind = _check_up(_mind(mind), _executor(executor), unsafe_no_sandbox, nats, cluster)
    opts = LabOptions(
        home=lab_home(), port=port, nats_url=nats, mind=mind_kind, executor=executor_kind, sync_always=sync_always,
        cluster=cluster, replicas=parse_replicas(replicas),
    )
    if detach:
        _up_detached(opts, web)
    else:
        _up_here(opts, web, web_port)


def _check_up(mind: str, executor: str, unsafe_no_sandbox: bool, nats: str | None, cluster: int) -> tuple[MindKind, ExecutorKind]:
    """`lab up`'s options, refused in one line before anything starts; the mind and executor, as the kinds they were checked to be."""
    mind_kind = _check_choice("mind", mind, MIND_KINDS)
    executor_kind = _check_choice("executor", executor, EXECUTOR_KINDS)
    _sandbox_gate(mind_kind, executor_kind, unsafe_no_sandbox)
    if nats is not None:
        _check_url(nats)
    if cluster > 1 and nats is not None:
        fail("--cluster starts embedded servers; it cannot be combined with --nats")
    return mind_kind, executor_kind


def _up_detached(opts: LabOptions, web: bool) -> None:
    """`lab up --detach`: a supervisor in the background (this command again, without --detach); returns once all agents are ready."""
    from services.lab.supervisor import up_detached

    argv = [a for a in sys.argv[2:] if a not in ("--detach", "-d")]
    info = up_detached(opts, argv)
    console.print(f"lab is up: NATS at {info.url}, agents {', '.join(info.agents)} ready (home {opts.home}). Stop with `lab down`.")
    if web:
        from services.web.launch import wait_for_link

        console.print(wait_for_link(opts.home), markup=False, soft_wrap=True)


def _up_here(opts: LabOptions, web: bool, web_port: int) -> None:
    """`lab up` in the foreground: supervise the lab (and the web view with --web) until Ctrl-C or SIGTERM."""
    from services.lab.supervisor import Supervisor, Terminated, stop_on_signals

    sup = Supervisor(opts)
    # A signal while the lab starts stops what already started (Supervisor.start), then exits like one after.
    with stop_on_signals() as stopped:
        try:
            info = sup.start()
        except (Terminated, KeyboardInterrupt):
            err.print(f"lab: interrupted by {stopped.name or 'SIGINT'} while starting; stopped what had started", markup=False)
            raise typer.Exit(128 + (stopped.signum or 2)) from None
    console.print(f"lab is up: NATS at {info.url}, six agents ready. Ctrl-C stops all.", markup=False)
    if not web:
        sup.supervise_forever()
    else:
        from services.web.launch import web_child

        with web_child(opts.home, web_port):
            sup.supervise_forever()
    console.print("lab stopped.")


@app.command()
def down() -> None:
    """Stop the lab that `lab up` started (agents first, then the server)."""
    from services.lab.supervisor import down as stop

    if stop(lab_home()):
        console.print("lab stopped.")
    else:
        console.print("no lab is running here.")


@app.command()
def agent(
    role: str = typer.Argument(..., help=f"One of: {', '.join(ROLES)}."),
    nats: str | None = typer.Option(None, "--nats", help="NATS URL (default: LAB_NATS_URL or the local lab)."),
    mind: str | None = typer.Option(None, "--mind", help="offline or llm; default $LAB_MIND, else offline."),
    executor: str | None = typer.Option(None, "--executor", help="local, docker or kubernetes; default $LAB_EXECUTOR, else local."),
) -> None:
    """Run one agent (what `lab up` and the Kubernetes Deployments start)."""
    from services.executors import EXECUTOR_KINDS
    from services.host import wiring
    from services.host.agent import run_agent

    if role not in ROLES:
        fail(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    mind, executor = _mind(mind), _executor(executor)
    mind = _check_choice("mind", mind, MIND_KINDS)
    if nats is not None:
        _check_url(nats)
    config = bus_config(role, nats)
    settings = lab_config()
    if wiring.wiring_class(role).runs_jobs:
        _check_choice("executor", executor, EXECUTOR_KINDS)
        _sandbox_gate(mind, executor, False)
    ports = wiring.build(role, home=lab_home(), config=settings, bus_url=config.url, executor=executor)  # WiringError: one line
    run_agent(role, config, home=lab_home(), mind=mind, mind_config=settings.mind, wiring=ports)


# ---------------------------------------------------------------- status / logs / say


@asynccontextmanager
async def _session(nats: str | None, write: bool = False) -> AsyncIterator[Bus]:
    """The co-PI's connection for one command; a request the server refused says so instead of timing out blind.

    A read on a stopped lab opens its store through a transient server (services.read.stored) and says so
    on stderr in one line; a write (``write``) on a stopped lab is refused in one line.
    """
    from services.read.stored import NOT_RUNNING, lab_connection, unreachable

    with lab_connection("copi", nats, "lab-cli", write=write) as conn:
        if conn.stored:
            err.print(NOT_RUNNING, markup=False)
        try:
            bus = await Bus.connect(conn.config, reconnect=False, timeout=5)
        except ConnectError as e:
            if not write:
                raise
            raise unreachable(conn.config.url, e) from None
        async with _guarded(bus) as b:
            yield b


@asynccontextmanager
async def _guarded(bus: Bus) -> AsyncIterator[Bus]:
    try:
        yield bus
    except BusTimeout:
        refusal = bus.refusal()
        if refusal is None:
            raise
        raise PermissionDenied(f"the NATS server at {bus.config.url} refuses user {bus.config.user!r}: {refusal}") from None
    finally:
        await bus.close()


async def _projects(bus: Bus) -> list[ProjectView]:
    from services.read.projects import project_states

    return await project_states(bus)


def _unknown(project: str, names: list[str]) -> str:
    return f"unknown project {project!r}" + (f"; known: {', '.join(names)}" if names else "")


async def _require_project(bus: Bus, project: str) -> None:
    """UsageError, like `lab say`'s, when no project of that name is known to the PI."""
    await _require_buckets(bus)
    names = [p.project for p in await _projects(bus)]
    if project not in names:
        raise UsageError(_unknown(project, names))


async def _require_buckets(bus: Bus) -> None:
    """A lab whose store lost a bucket says which, in one line (not a traceback from deep inside nats-py)."""
    from bus.schema.constants import STATE_BUCKET

    for bucket in (STATE_BUCKET, AGENTS_BUCKET):
        if not await bus.has_bucket(bucket):
            raise UsageError(f"the lab's store at {bus.config.url} has no {bucket!r} bucket (deleted?); `lab up` or any agent's start recreates it, empty")


@app.command()
def status(
    nats: str | None = typer.Option(None, "--nats"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object, for machines."),
    wide: bool = typer.Option(False, "--wide", "-w", help="Every column, unwrapped, however wide the terminal."),
) -> None:
    """Servers, agents, projects with their stage and budgets spent, jobs running."""

    from services.cli.status import LabStatus

    async def main() -> LabStatus:
        from services.read.projects import active_jobs, project_docs
        from services.read.team import capacity_view, replicas_view

        async with _session(nats) as bus:
            await _require_buckets(bus)
            beats = await Heartbeats.open(bus)
            docs = await project_docs(bus)
            return LabStatus(
                nats=bus.config.url, agents={role: await beats.get(role) for role in ROLES},
                projects=[ProjectView.model_validate(d) for d in docs], jobs=await active_jobs(bus), docs=docs,
                capacity=await capacity_view(await StateStore.open(bus)), instances=await replicas_view(beats),
            )

    data = asyncio.run(main())
    if as_json:
        console.print_json(json.dumps(data.to_json(), default=str))
        return
    from services.cli.status import render

    render(data, console, wide=wide)


@app.command()
def ideas(
    template: str = typer.Option(..., "--template", "-t", help="The template whose archive to list (its name, e.g. grokking)."),
    nats: str | None = typer.Option(None, "--nats"),
    as_json: bool = typer.Option(False, "--json", help="One JSON array of archive records, for machines."),
    wide: bool = typer.Option(False, "--wide", "-w", help="Every column, in full, however wide the terminal."),
) -> None:
    """The idea archive: every idea any project tried on a template, by which project, and what came of it."""
    from services.cli.ideas import render
    from services.read.ideas import archive_records, as_rows

    async def main() -> Any:
        async with _session(nats) as bus:
            return await archive_records(bus, template)

    records = asyncio.run(main())
    if not records:
        _known_template(template)  # a typo (grokkin) is refused in one line, not shown as an empty archive
    if as_json:
        print(json.dumps(as_rows(records)), flush=True)
        return
    render(template, records, console, wide=wide)


def _known_template(name: str) -> None:
    """UsageError (exit 2) naming the nearest template when ``name`` is none on the search path."""
    import difflib

    from agents import templates
    from bus.schema import TemplateError

    try:
        templates.resolve(name)
    except TemplateError:
        known = sorted(d.name for base in templates.search_path() if base.is_dir() for d in base.iterdir() if (d / "template.yaml").is_file())
        near = difflib.get_close_matches(name, known, n=1)
        fail(f"unknown template {name!r}" + (f"; did you mean {near[0]}?" if near else f"; known: {', '.join(known) or 'none'}"))


def print_entry(entry: Any, as_json: bool, wide: bool = False) -> None:
    """One message as one line cut to the terminal's width with an ellipsis (whole with ``wide``; every field with ``as_json``)."""
    env = entry.envelope
    if as_json:
        if env is not None:
            print(json.dumps({"seq": entry.seq, "subject": entry.subject, **env.model_dump(mode="json")}), flush=True)
        else:
            print(json.dumps({"seq": entry.seq, "subject": entry.subject, "invalid": entry.error}), flush=True)
        return
    if env is None:
        console.print(f"[dim]#{entry.seq} {escape(clean(entry.subject))}: invalid message ({escape(clean(entry.error))})[/dim]")
        return
    t = env.created_at.strftime("%H:%M:%S")
    console.print(
        f"[dim]{t}[/dim] [bold]{env.project}[/bold] [cyan]{env.sender}[/cyan] → [magenta]{env.recipient}[/magenta]  {escape(clean(describe(env)))}",
        markup=True, highlight=False, **({"soft_wrap": True} if wide else {"no_wrap": True, "overflow": "ellipsis", "crop": True}),
    )


@app.command()
def logs(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep following new messages."),
    project: str | None = typer.Option(None, "--project", "-p"),
    role: str | None = typer.Option(None, "--role", "-r", help="Only messages sent by or to this role."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, for machines."),
    wide: bool = typer.Option(False, "--wide", "-w", help="Every message whole, however wide the terminal."),
    nats: str | None = typer.Option(None, "--nats"),
) -> None:
    """Replay the conversation from the start (and follow it with -f)."""
    if project:
        subjects.token(project, "project")
    if role and role not in (*ROLES, "copi"):
        fail(f"unknown role {role!r}; choose one of {', '.join((*ROLES, 'copi'))}")

    from services.read.stored import lab_is_running

    # A stopped lab's log is replayed from its store; there is nothing more to follow.
    live = follow and (nats is not None or lab_settings().nats_url is not None or lab_is_running(lab_home()))

    async def replay(bus: Bus) -> None:
        async for entry in read(bus, subjects.convo_all(project), follow=live):
            env = entry.envelope
            if role and env is not None and role not in (env.sender, env.recipient):
                continue
            print_entry(entry, as_json, wide)

    async def main() -> bool:
        """Replay (and follow); False when the lab stopped under a follow."""
        async with _session(nats) as bus:
            if project:
                await _require_project(bus, project)
            if not live:
                await replay(bus)
                return True
            return await _until_lab_stops(bus, replay(bus), nats)

    try:
        if not asyncio.run(main()):
            err.print("lab stopped", markup=False)
    except KeyboardInterrupt:
        pass


async def _until_lab_stops(bus: Bus, following: Any, nats: str | None, every: float = 0.5) -> bool:
    """Run ``following`` until it ends (True) or the lab goes away: `lab down` here, or its server gone (False)."""
    from services.read.stored import lab_is_running

    task = asyncio.ensure_future(following)
    home = lab_home()
    try:
        while not task.done():
            await asyncio.wait([task], timeout=every)
            local = nats is None and lab_settings().nats_url is None
            if not task.done() and (not bus.connected or (local and not lab_is_running(home))):
                return False
        task.result()
        return True
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@app.command()
def say(
    text: str = typer.Argument(..., help="The note, e.g. \"only vary weight decay\"."),
    project: str | None = typer.Option(None, "--project", "-p", help="Default: the one running project."),
    to: str = typer.Option("pi", "--to", help="Which role the note is for (default the PI)."),
    nats: str | None = typer.Option(None, "--nats"),
) -> None:
    """Speak into a running project as co-PI; the addressed role answers in the log."""
    if to not in ROLES:
        fail(f"unknown role {to!r}; choose one of {', '.join(ROLES)}")
    if not text.strip():
        fail("the note is empty")

    async def main() -> str:
        async with _session(nats, write=True) as bus:
            from services.read.projects import running_project, send_note

            target = running_project(await _projects(bus), project)
            note = await send_note(bus, target, text, to)
            return f"note {note.id} sent to {to} in {target}"

    console.print(asyncio.run(main()))


@app.command()
def approve(
    project: str = typer.Argument(..., help="The project waiting for approval (`lab status` shows its estimate)."),
    refuse: str | None = typer.Option(None, "--refuse", help="Refuse it instead, with this reason: the project ends, the reason in its decision."),
    nats: str | None = typer.Option(None, "--nats"),
) -> None:
    """Approve a project's estimate so its runs start (or refuse it with --refuse REASON)."""
    _answer_estimate(project, refuse is None, refuse or "", nats)


@app.command()
def refuse(
    project: str = typer.Argument(..., help="The project waiting for approval."),
    reason: str = typer.Option(..., "--reason", help="Why: the project ends with it in its decision."),
    nats: str | None = typer.Option(None, "--nats"),
) -> None:
    """Refuse a project's estimate: the project ends without running anything (`lab approve --refuse`)."""
    _answer_estimate(project, False, reason, nats)


def _answer_estimate(project: str, approved: bool, reason: str, nats: str | None) -> None:
    if not approved and not reason.strip():
        fail("say why the project is refused (the reason goes into its decision)")

    async def main() -> str:
        async with _session(nats, write=True) as bus:
            from services.read.projects import send_approval

            await _require_buckets(bus)
            await send_approval(bus, await _projects(bus), project, approved, reason)
            return f"{'approved' if approved else 'refused'} {project}" + ("; its runs start now" if approved else f": {reason.strip()}")

    console.print(asyncio.run(main()), markup=False)


@app.command()
def web(
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on (0: a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; keep 127.0.0.1 unless a proxy or port-forward fronts it."),
    nats: str | None = typer.Option(None, "--nats"),
) -> None:
    """Serve the lab in a browser: projects, live conversations, results, paper, and a co-PI box (token printed here)."""
    from services.web.serve import WebOptions
    from services.web.serve import run as serve_web

    if nats is not None:
        _check_url(nats)
    from services.read.stored import NOT_RUNNING, lab_connection

    # A stopped lab is served read-only from its store (a transient server, stopped with the page).
    with lab_connection("web", nats, "lab-web") as conn:
        config = conn.config
        if config.user is None and lab_settings().nats_password is None and read_local_lab() is not None:
            fail("this lab has no `web` NATS user (it was started before the web view existed); restart it with `lab down` and `lab up`")
        # The co-PI's own NATS login also unlocks the actions, where this machine knows it (the local lab's lab.json).
        local = read_local_lab()
        copi = local.credentials.get("copi") if local and not conn.stored else None
        # The token goes to a terminal, never a log file; a stored lab's page takes no action, so no token is shown.
        opts = WebOptions(host=host, port=port, home=lab_home(), show_token=sys.stdout.isatty() and not conn.stored, read_only=conn.stored)
        if conn.stored:
            err.print(NOT_RUNNING, markup=False)
        serve_web(config, opts, lambda line: console.print(line, markup=False, soft_wrap=True), copi)


# ---------------------------------------------------------------- run


@app.command()
def run(
    template: str | None = typer.Option(None, "--template", "-t", help="A template name (see templates/) or a folder."),
    attach: str | None = typer.Option(None, "--attach", help="Follow this running project instead of starting one; write its outputs when it ends."),
    direction: str = typer.Option("", "--direction", help="The research direction, in words."),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", help="Where the paper and results go (default ./lab-out/<project>)."),
    fast: bool = typer.Option(False, "--fast", help="Use the template's fast profile (smaller runs; smoke tests); --profile fast."),
    profile: str = typer.Option("", "--profile", help="A profile the template declares (fast, gpu, ...); it sets knobs and resources."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every experiment fresh: reuse no result from the lab's result cache."),
    max_ideas: int = typer.Option(2, "--max-ideas", min=1),
    max_runs: int = typer.Option(12, "--max-runs", min=1),
    max_rounds: int = typer.Option(1, "--max-rounds", min=0, help="Revision rounds the reviewer may ask for."),
    wall_time: float = typer.Option(3600, "--wall-time", help="Seconds the project may take."),
    max_tokens: int | None = typer.Option(None, "--max-tokens"),
    max_cost: float | None = typer.Option(None, "--max-cost", help="USD the minds may spend; once spent, no new runs."),
    max_gpu_hours: float | None = typer.Option(None, "--max-gpu-hours", min=0, help="GPU-hours the jobs may use; once spent, no new runs."),
    max_cpu_hours: float | None = typer.Option(None, "--max-cpu-hours", min=0, help="CPU-hours the jobs may use; once spent, no new runs."),
    require_approval: bool = typer.Option(False, "--require-approval", help="Wait for `lab approve PROJECT` before the first run."),
    mind: str | None = typer.Option(None, "--mind", help="offline or llm; default $LAB_MIND, else offline."),
    executor: str | None = typer.Option(None, "--executor", help="local, docker or kubernetes; default $LAB_EXECUTOR, else local."),
    nats: str | None = typer.Option(None, "--nats", help="Use the lab on this NATS server instead of a local one."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only progress, not every message."),
    unsafe_no_sandbox: bool = typer.Option(False, "--unsafe-no-sandbox", help=UNSAFE_HELP),
    model: str | None = typer.Option(None, "--model", help="The llm mind's model for this project (with --mind llm)."),
) -> None:
    """Run one research project end to end and write the paper, reviews, results and the log to --out."""
    from services.cli.run import RunOptions, attach_project, run_project

    if (template is None) == (attach is None):
        fail("give --template NAME to start a project, or --attach PROJECT to follow one")
    if nats is not None:
        _check_url(nats)
    if attach is not None:
        raise typer.Exit(attach_project(attach, out, nats, quiet, console))
    mind, executor = _mind(mind), _executor(executor)
    mind = _check_choice("mind", mind, MIND_KINDS)
    executor = _check_choice("executor", executor, EXECUTOR_KINDS)
    _sandbox_gate(mind, executor, unsafe_no_sandbox)
    if model is not None and mind != "llm":
        fail("--model names the llm mind's model: add --mind llm")
    if nats is not None:
        _check_url(nats)
    if fast and profile not in ("", "fast"):
        fail(f"--fast is --profile fast; it cannot go with --profile {profile}")
    assert template is not None  # exactly one of --template / --attach, checked above
    opts = RunOptions(
        template=template, direction=direction, seed=seed, out=out, fast=fast, profile="fast" if fast else profile, max_ideas=max_ideas, max_runs=max_runs,
        no_cache=no_cache, max_rounds=max_rounds, wall_time=wall_time, max_tokens=max_tokens, max_cost=max_cost, mind=mind,
        max_gpu_hours=max_gpu_hours, max_cpu_hours=max_cpu_hours, require_approval=require_approval,
        executor=executor, nats=nats, quiet=quiet, model=model,
    )
    code = run_project(opts, console)
    raise typer.Exit(code)


@app.command()
def evolve(
    template: str = typer.Option("model_merging", "--template", "-t", help="A template with an evolve hook (model_merging)."),
    iterations: int = typer.Option(3, "--iterations", "-n", help="Rounds of propose, run, select."),
    population: int = typer.Option(4, "--population", "-k", help="Candidates proposed per iteration."),
    mind: str = typer.Option("offline", "--mind", help="offline (the template's algorithms and seeded recombinations) or llm."),
    model: str | None = typer.Option(None, "--model", help="The llm mind's model (with --mind llm)."),
    out: Path | None = typer.Option(None, "--out", help="Where evolve/ goes (default ./lab-out/<run>)."),
    seed: int = typer.Option(0, "--seed"),
    fast: bool = typer.Option(False, "--fast", help="Use the template's fast profile; --profile fast."),
    profile: str = typer.Option("", "--profile", help="A profile the template declares (fast, gpu, ...)."),
    keep: int = typer.Option(3, "--keep", help="Best candidates shown to the next iteration as examples."),
    final_top: int = typer.Option(3, "--final-top", help="Best candidates scored once on the held-out test split."),
    max_runs: int | None = typer.Option(None, "--max-runs", help="Jobs in all, final test runs included (default: every candidate once)."),
    wall_time: float = typer.Option(3600, "--wall-time", help="Seconds before no new iteration starts."),
    seed_code: list[Path] = typer.Option([], "--seed-code", help="A .py file defining the hook's function; joins the first population (repeatable)."),
    executor: str | None = typer.Option(
        None, "--executor",
        help="Where an embedded lab runs the candidates: local, docker or kubernetes (a running lab runs them where it runs its jobs).",
    ),
    nats: str | None = typer.Option(None, "--nats", help="Run on the lab at this NATS URL; default: the local lab, or an embedded one for this run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    unsafe_no_sandbox: bool = typer.Option(False, "--unsafe-no-sandbox", help=UNSAFE_HELP),
) -> None:
    """The Self-Developing loop as a lab project: a mind proposes algorithms as code, each runs as the engineer's experiment,
    the best on a dev split carry on, the final best meet the test split."""
    from services.cli.evolve import EvolveOptions, run_evolve

    mind = _check_choice("mind", mind, MIND_KINDS)
    if nats is not None:
        _check_url(nats)
    s = lab_settings()
    if executor is None and "executor" in s.model_fields_set:  # $LAB_EXECUTOR
        executor = s.executor
    if executor is None:  # on the lab `lab up` started here, the executor it runs its experiments with
        local = read_local_lab()
        executor = local.executor if nats is not None and local and local.serves(nats) else "local"
    executor = _check_choice("executor", executor, EXECUTOR_KINDS)
    if model is not None and mind != "llm":
        fail("--model names the llm mind's model: add --mind llm")
    if fast and profile not in ("", "fast"):
        fail(f"--fast is --profile fast; it cannot go with --profile {profile}")
    # Model-written candidates get the same gate as an llm project (the offline mind's are the template's own code).
    _sandbox_gate(mind, executor, unsafe_no_sandbox)
    opts = EvolveOptions(
        template=template, iterations=iterations, population=population, mind=mind, model=model, out=out, seed=seed,
        profile="fast" if fast else profile, keep=keep, final_top=final_top, max_runs=max_runs, wall_time=wall_time,
        executor=executor, nats=nats, seed_code=list(seed_code), quiet=quiet,
    )
    raise typer.Exit(run_evolve(opts, console))


@app.command("export")
def export_cmd(
    project: str = typer.Argument(..., help="The project, as `lab status` lists it."),
    out: Path | None = typer.Option(None, "--out", help="Where to write (default ./lab-out/<project>)."),
    nats: str | None = typer.Option(None, "--nats"),
) -> None:
    """Write a project's paper, reviews, results, figures, analysis and log from the store, finished or not."""
    from services.cli.run import print_refused
    from services.read.export import export_project

    if nats is not None:
        _check_url(nats)
    subjects.token(project, "project")
    dest = out or Path("lab-out") / project

    async def main() -> Any:
        async with _session(nats) as bus:
            return await export_project(bus, project, dest)

    done = asyncio.run(main())
    if done.finished:
        d = done.decision
        console.print(f"{project}: {'ACCEPTED' if d.accepted else 'NOT ACCEPTED'}: {d.reason}", markup=False)
    else:
        console.print(f"{project}: not finished (stage {done.stage}); exported what exists so far (see export.json)", markup=False)
    for label, path in done.files:
        console.print(f"  {label:<18} {path}", markup=False)
    print_refused(err, done)


# ---------------------------------------------------------------- backup / restore / prune (services/cli/backup.py)

app.command("backup")(backup_cmd)
app.command("restore")(restore_cmd)
app.command("prune")(prune_cmd)


# ---------------------------------------------------------------- helpers


def _sandbox_gate(mind: str, executor: str, unsafe: bool) -> None:
    """One line when experiments will run unconfined; refuse model-written code there unless the risk is accepted."""
    from services.runner import sandbox
    warning = sandbox.check_start(mind, executor, unsafe)  # SandboxUnavailable: a LabError, printed as one line
    if unsafe:
        os.environ.update(Settings.environ(unsafe_no_sandbox=True))  # the agents this process starts inherit the user's choice
    if warning:
        err.print(f"lab: {warning}", markup=False, soft_wrap=True)


def _mind(flag: str | None) -> str:
    """--mind, else $LAB_MIND (read now, not when the CLI was imported), else offline."""
    return flag if flag is not None else lab_settings().mind


def _executor(flag: str | None) -> str:
    """--executor, else $LAB_EXECUTOR, else local."""
    return flag if flag is not None else lab_settings().executor


_Kind = TypeVar("_Kind", bound=str)


def _check_choice(what: str, value: str, choices: tuple[_Kind, ...]) -> _Kind:
    """``value`` as the closed kind it names (``MindKind``, ``ExecutorKind``), else a one-line refusal."""
    for choice in choices:
        if value == choice:
            return choice
    fail(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _check_url(url: str) -> None:
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("nats", "tls") or not u.hostname:
        fail(f"bad NATS URL {url!r}: expected nats://host:port")
    try:
        _ = u.port  # urllib parses the port lazily: reading it raises ValueError when it is not a number
    except ValueError:
        fail(f"bad NATS URL {url!r}: the port is not a number")


def _mount_optional() -> None:
    """Sub-commands whose modules may be absent in a slim install."""
    for name, module in (("job", "services.cli.job"), ("lit", "services.cli.lit"), ("template", "services.cli.template")):
        try:
            mod = __import__(module, fromlist=["app"])
        except ImportError:
            continue
        app.add_typer(mod.app, name=name)


_mount_optional()


def main() -> None:
    run_app(app)  # each command maps its errors to one line itself, usage errors here: services.cli.errors


if __name__ == "__main__":
    main()
