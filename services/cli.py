"""`lab`: start the lab, run projects, watch the agents talk, speak into a project as co-PI."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from bus import subjects
from bus.client import AGENTS_BUCKET, Bus
from bus.errors import LabBusError
from bus.messages import ROLES, CoPINote, CoPINoteMsg, Envelope
from bus.replay import read
from bus.store import StateStore
from services.config import ConfigError, bus_config, lab_config, lab_home
from services.render import describe

app = typer.Typer(help="Kenkyu Lab: six agents on NATS run real experiments and write a reviewed paper.", no_args_is_help=True, add_completion=False)
console = Console(stderr=False, highlight=False)
err = Console(stderr=True, highlight=False)


class UsageError(Exception):
    """Bad input on the command line: one line, exit 2."""


def _fail(message: str, code: int = 2) -> None:
    err.print(f"lab: error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


# ---------------------------------------------------------------- up / down / agent


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once all agents are ready; `lab down` stops them."),
    nats: Optional[str] = typer.Option(None, "--nats", help="Use an existing NATS server (nats://host:4222) instead of the embedded one."),
    port: int = typer.Option(0, "--port", help="Port for the embedded nats-server (default: a free one)."),
    mind: str = typer.Option(os.environ.get("LAB_MIND", "offline"), "--mind", help="offline (default, no network) or llm."),
    executor: str = typer.Option(os.environ.get("LAB_EXECUTOR", "local"), "--executor", help="local, docker or kubernetes."),
    sync_always: bool = typer.Option(False, "--sync-always", help="fsync every JetStream write (durability over speed)."),
) -> None:
    """Start nats-server (JetStream) and the six agents on this machine."""
    from services.lab import LabOptions, Supervisor, up_detached

    _check_choice("mind", mind, ("offline", "llm"))
    _check_choice("executor", executor, ("local", "docker", "kubernetes"))
    if nats is not None:
        _check_url(nats)
    opts = LabOptions(home=lab_home(), port=port, nats_url=nats, mind=mind, executor=executor, sync_always=sync_always)
    if detach:
        argv = [a for a in sys.argv[2:] if a not in ("--detach", "-d")]
        info = up_detached(opts, argv)
        console.print(f"lab is up: NATS at {info['url']}, agents {', '.join(info['agents'])} ready (home {opts.home}). Stop with `lab down`.")
        return
    sup = Supervisor(opts)
    info = sup.start()
    console.print(f"lab is up: NATS at {info['url']}, six agents ready. Ctrl-C stops all.", markup=False)
    sup.supervise_forever()
    console.print("lab stopped.")


@app.command()
def down() -> None:
    """Stop the lab that `lab up` started (agents first, then the server)."""
    from services.lab import down as stop

    if stop(lab_home()):
        console.print("lab stopped.")
    else:
        console.print("no lab is running here.")


@app.command()
def agent(
    role: str = typer.Argument(..., help=f"One of: {', '.join(ROLES)}."),
    nats: Optional[str] = typer.Option(None, "--nats", help="NATS URL (default: LAB_NATS_URL or the local lab)."),
    mind: str = typer.Option(os.environ.get("LAB_MIND", "offline"), "--mind"),
    executor: str = typer.Option(os.environ.get("LAB_EXECUTOR", "local"), "--executor"),
) -> None:
    """Run one agent (what `lab up` and the Kubernetes Deployments start)."""
    from services.executors import make_executor
    from services.executors.base import NatsAccess
    from services.host import run_agent

    if role not in ROLES:
        _fail(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    _check_choice("mind", mind, ("offline", "llm"))
    if nats is not None:
        _check_url(nats)
    config = bus_config(role, nats)
    settings = lab_config()
    ex = job_nats = None
    if role == "engineer":
        _check_choice("executor", executor, ("local", "docker", "kubernetes"))
        ex = make_executor(executor, (settings.get("executor") or {}).get(executor, {}))
        job_nats = NatsAccess(
            url=os.environ.get("LAB_RUNNER_NATS_URL", config.url),
            user=os.environ.get("LAB_RUNNER_USER"),
            password=os.environ.get("LAB_RUNNER_PASSWORD"),
        )
    run_agent(role, config, home=lab_home(), mind=mind, mind_config=settings.get("mind"), executor=ex, job_nats=job_nats)


# ---------------------------------------------------------------- status / logs / say


async def _connect(nats: str | None) -> Bus:
    return await Bus.connect(bus_config("copi", nats, name="lab-cli"), reconnect=False, timeout=5)


async def _projects(bus: Bus) -> list[dict[str, Any]]:
    states = await StateStore.open(bus)
    out = []
    for key in await states.keys("pi."):
        doc, _ = await states.read(key)
        if doc and doc.get("state"):
            out.append(doc["state"])
    return out


def _unknown(project: str, names: list[str]) -> str:
    return f"unknown project {project!r}" + (f"; known: {', '.join(names)}" if names else "")


async def _require_project(bus: Bus, project: str) -> None:
    """UsageError, like `lab say`'s, when no project of that name is known to the PI."""
    await _require_buckets(bus)
    names = [p["project"] for p in await _projects(bus)]
    if project not in names:
        raise UsageError(_unknown(project, names))


async def _require_buckets(bus: Bus) -> None:
    """A lab whose store lost a bucket says which, in one line (not a traceback from deep inside nats-py)."""
    from nats.js.errors import BucketNotFoundError

    from bus.client import STATE_BUCKET

    for bucket in (STATE_BUCKET, AGENTS_BUCKET):
        try:
            await bus.js.key_value(bucket)
        except BucketNotFoundError:
            raise UsageError(f"the lab's store at {bus.config.url} has no {bucket!r} bucket (deleted?); `lab up` or any agent's start recreates it, empty") from None


@app.command()
def status(
    nats: Optional[str] = typer.Option(None, "--nats"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object, for machines."),
) -> None:
    """Servers, agents, projects with their stage and budgets spent, jobs running."""

    async def main() -> dict[str, Any]:
        bus = await _connect(nats)
        try:
            await _require_buckets(bus)
            kv = await bus.js.key_value(AGENTS_BUCKET)
            agents = {}
            for role in ROLES:
                try:
                    agents[role] = json.loads((await kv.get(role)).value)
                except Exception:
                    agents[role] = None
            projects = await _projects(bus)
            states = await StateStore.open(bus)
            jobs = []
            for key in await states.keys("engineer."):
                doc, _ = await states.read(key)
                for j in ((doc or {}).get("state") or {}).get("jobs", {}).values():
                    if j["state"] in ("queued", "dispatched", "pending", "running"):
                        jobs.append({"project": key.split(".", 1)[1], "job": j["job_id"], "experiment": j["experiment_id"], "state": j["state"], "reason": j.get("reason", "")})
            return {"nats": bus.config.url, "agents": agents, "projects": projects, "jobs": jobs}
        finally:
            await bus.close()

    data = asyncio.run(main())
    if as_json:
        console.print_json(json.dumps(data, default=str))
        return
    import time as _t

    from rich.table import Table

    console.print(f"NATS: {data['nats']}")
    t = Table("agent", "state", "pid", "mind", "handled")
    for role, a in data["agents"].items():
        alive = a is not None and _t.time() - a["seen"] < 20
        t.add_row(role, "up" if alive else "down", str(a["pid"]) if a else "-", a["mind"] if a else "-", str(a["handled"]) if a else "-")
    console.print(t)
    p = Table("project", "template", "stage", "ideas", "runs", "round", "tokens", "cost $", "outcome")
    for s in data["projects"]:
        b = s["budget"]
        tokens = sum(u["prompt_tokens"] + u["completion_tokens"] for u in s.get("usage", {}).values())
        cost = sum(u["cost_usd"] for u in s.get("usage", {}).values())
        p.add_row(
            s["project"], s["template"], s["stage"], f"{len(s['ideas'])}/{b['max_ideas']}", f"{len(s['experiments'])}/{b['max_runs']}",
            f"{s['round']}/{b['max_revision_rounds']}", str(tokens), f"{cost:.4f}", s.get("outcome", ""),
        )
    console.print(p)
    finished = [s for s in data["projects"] if s["stage"] in ("done", "failed")]
    if finished:  # plain lines, never cut to the terminal's width: the command is meant to be copied
        console.print("finished projects (paper, reviews and results with `lab export PROJECT [--out DIR]`):")
        for s in finished:
            verdict = "ACCEPTED" if s.get("accepted") else ("FAILED" if s["stage"] == "failed" else "NOT ACCEPTED")
            console.print(f"  {s['project']}: {verdict}: {s.get('outcome', '')}  →  lab export {s['project']}", markup=False, soft_wrap=True)
    if data["jobs"]:
        j = Table("project", "job", "experiment", "state", "reason")
        for row in data["jobs"]:
            j.add_row(row["project"], row["job"], row["experiment"], row["state"], row["reason"])
        console.print(j)


def print_entry(entry: Any, as_json: bool) -> None:
    env = entry.envelope
    if as_json:
        if env is not None:
            print(json.dumps({"seq": entry.seq, "subject": entry.subject, **env.model_dump(mode="json")}), flush=True)
        else:
            print(json.dumps({"seq": entry.seq, "subject": entry.subject, "invalid": entry.error}), flush=True)
        return
    if env is None:
        console.print(f"[dim]#{entry.seq} {entry.subject}: invalid message ({entry.error})[/dim]")
        return
    t = env.created_at.strftime("%H:%M:%S")
    console.print(f"[dim]{t}[/dim] [bold]{env.project}[/bold] [cyan]{env.sender}[/cyan] → [magenta]{env.recipient}[/magenta]  {escape(describe(env))}", markup=True, highlight=False, soft_wrap=True)


@app.command()
def logs(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep following new messages."),
    project: Optional[str] = typer.Option(None, "--project", "-p"),
    role: Optional[str] = typer.Option(None, "--role", "-r", help="Only messages sent by or to this role."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, for machines."),
    nats: Optional[str] = typer.Option(None, "--nats"),
) -> None:
    """Replay the conversation from the start (and follow it with -f)."""
    if project:
        subjects.token(project, "project")
    if role and role not in (*ROLES, "copi"):
        _fail(f"unknown role {role!r}; choose one of {', '.join((*ROLES, 'copi'))}")

    async def main() -> None:
        bus = await _connect(nats)
        try:
            if project:
                await _require_project(bus, project)
            async for entry in read(bus, subjects.convo_all(project), follow=follow):
                env = entry.envelope
                if role and env is not None and role not in (env.sender, env.recipient):
                    continue
                print_entry(entry, as_json)
        finally:
            await bus.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


@app.command()
def say(
    text: str = typer.Argument(..., help="The note, e.g. \"only vary weight decay\"."),
    project: Optional[str] = typer.Option(None, "--project", "-p", help="Default: the one running project."),
    to: str = typer.Option("pi", "--to", help="Which role the note is for (default the PI)."),
    nats: Optional[str] = typer.Option(None, "--nats"),
) -> None:
    """Speak into a running project as co-PI; the addressed role answers in the log."""
    if to not in ROLES:
        _fail(f"unknown role {to!r}; choose one of {', '.join(ROLES)}")
    if not text.strip():
        _fail("the note is empty")

    async def main() -> str:
        bus = await _connect(nats)
        try:
            projects = await _projects(bus)
            names = [p["project"] for p in projects]
            target = project
            if target is None:
                running = [p["project"] for p in projects if p["stage"] not in ("done", "failed")]
                if len(running) != 1:
                    raise UsageError(f"{'no project is running' if not running else 'several projects run: ' + ', '.join(running)}; name one with --project")
                target = running[0]
            subjects.token(target, "project")
            if target not in names:
                raise UsageError(_unknown(target, names))
            note = CoPINote(id=uuid.uuid4().hex[:12], text=text, to=to)  # type: ignore[arg-type]
            await bus.publish(Envelope(project=target, sender="copi", recipient=to, body=CoPINoteMsg(note=note)))  # type: ignore[arg-type]
            return f"note {note.id} sent to {to} in {target}"
        finally:
            await bus.close()

    console.print(asyncio.run(main()))


# ---------------------------------------------------------------- run


@app.command()
def run(
    template: Optional[str] = typer.Option(None, "--template", "-t", help="A template name (see templates/) or a folder."),
    attach: Optional[str] = typer.Option(None, "--attach", help="Follow this running project instead of starting one; write its outputs when it ends."),
    direction: str = typer.Option("", "--direction", help="The research direction, in words."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the paper and results go (default ./lab-out/<project>)."),
    fast: bool = typer.Option(False, "--fast", help="Use the template's fast profile (smaller runs; smoke tests)."),
    max_ideas: int = typer.Option(2, "--max-ideas", min=1),
    max_runs: int = typer.Option(12, "--max-runs", min=1),
    max_rounds: int = typer.Option(1, "--max-rounds", min=0, help="Revision rounds the reviewer may ask for."),
    wall_time: float = typer.Option(3600, "--wall-time", help="Seconds the project may take."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens"),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="USD the minds may spend."),
    mind: str = typer.Option(os.environ.get("LAB_MIND", "offline"), "--mind"),
    executor: str = typer.Option(os.environ.get("LAB_EXECUTOR", "local"), "--executor"),
    nats: Optional[str] = typer.Option(None, "--nats", help="Use the lab on this NATS server instead of a local one."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only progress, not every message."),
) -> None:
    """Run one research project end to end and write the paper, reviews, results and the log to --out."""
    from services.project import RunOptions, attach_project, run_project

    if (template is None) == (attach is None):
        _fail("give --template NAME to start a project, or --attach PROJECT to follow one")
    if nats is not None:
        _check_url(nats)
    if attach is not None:
        raise typer.Exit(attach_project(attach, out, nats, quiet, console))
    _check_choice("mind", mind, ("offline", "llm"))
    _check_choice("executor", executor, ("local", "docker", "kubernetes"))
    if nats is not None:
        _check_url(nats)
    opts = RunOptions(
        template=template, direction=direction, seed=seed, out=out, fast=fast, max_ideas=max_ideas, max_runs=max_runs,
        max_rounds=max_rounds, wall_time=wall_time, max_tokens=max_tokens, max_cost=max_cost, mind=mind,
        executor=executor, nats=nats, quiet=quiet,
    )
    code = run_project(opts, console)
    raise typer.Exit(code)


@app.command("export")
def export_cmd(
    project: str = typer.Argument(..., help="The project, as `lab status` lists it."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write (default ./lab-out/<project>)."),
    nats: Optional[str] = typer.Option(None, "--nats"),
) -> None:
    """Write a project's paper, reviews, results, figures, analysis and log from the store, finished or not."""
    from services.export import export_project

    if nats is not None:
        _check_url(nats)
    subjects.token(project, "project")
    dest = out or Path("lab-out") / project

    async def main() -> Any:
        bus = await _connect(nats)
        try:
            return await export_project(bus, project, dest)
        finally:
            await bus.close()

    done = asyncio.run(main())
    if done.finished:
        d = done.decision
        console.print(f"{project}: {'ACCEPTED' if d.accepted else 'NOT ACCEPTED'}: {d.reason}", markup=False)
    else:
        console.print(f"{project}: not finished (stage {done.stage}); exported what exists so far (see export.json)", markup=False)
    for label, path in done.files:
        console.print(f"  {label:<18} {path}", markup=False)


# ---------------------------------------------------------------- helpers


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _check_url(url: str) -> None:
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("nats", "tls") or not u.hostname:
        _fail(f"bad NATS URL {url!r}: expected nats://host:port")
    try:
        u.port
    except ValueError:
        _fail(f"bad NATS URL {url!r}: the port is not a number")


def _mount_optional() -> None:
    """Sub-commands whose modules may be absent in a slim install."""
    for name, module in (("job", "services.cli_job"), ("lit", "services.cli_lit")):
        try:
            mod = __import__(module, fromlist=["app"])
        except ImportError:
            continue
        app.add_typer(mod.app, name=name)


_mount_optional()


def main() -> None:
    from agents.templates import TemplateError
    from services.errors import describe_os_error
    from services.executors.base import ExecutorError
    from services.export import UnknownProject
    from services.lab import LabError
    from services.lifecycle import StoreFull

    try:
        app(standalone_mode=True)
    except (LabBusError, TemplateError, ConfigError, ExecutorError, LabError, UsageError, UnknownProject, StoreFull) as e:
        err.print(f"lab: error: {str(e) or type(e).__name__}", markup=False, soft_wrap=True)
        sys.exit(2)
    except (OSError, UnicodeError) as e:  # the environment, not the code: one line naming the file or setting at fault
        err.print(f"lab: error: {describe_os_error(e, lab_home())}", markup=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
