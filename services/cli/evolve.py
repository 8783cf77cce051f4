"""`lab evolve`: start an evolve project on the lab (an embedded one when none is up, as `lab run` does) and follow it.

The loop runs in the lab, not here: the PI replays it as results arrive (``agents/evolve/project.py``) and each
candidate is an experiment the engineer runs like any other (its guarded edit, the lab's capacity ledger, the
job watch, the result cache). This process checks the arguments, sends the ``StartProject`` that carries the
``EvolveRequest``, follows the conversation to the decision, and writes the project's outputs with `lab export`'s
code: ``evolve/`` (final.jsonl with per-seed values, preferences.jsonl, progress.png, ...) among them.

Budgets: ``max_runs`` counts every job (the final test runs included, and reserved for them); ``wall_time`` stops
new iterations, not the final test.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from agents import templates
from agents.evolve import workflow
from agents.evolve.offline import builtin_pool
from agents.evolve.race import FINAL_RUNS
from agents.evolve.workflow import EvolveError
from bus.client import Bus
from bus.errors import ConnectError
from bus.schema import Budget, Envelope, ExecutorKind, MindChoice, MindKind, ProfileName, StartProject
from bus.schema.evolve import EvolveRequest, Proposal
from services.cli.run import RunOptions, _follow, load_template, new_project_id, start_project, starter
from services.common.config import bus_config, lab_home, read_local_lab
from services.lab.lifecycle import check_store
from services.read.export import export_project
from services.read.stored import unreachable


@dataclass
class EvolveOptions:
    template: str = "model_merging"
    iterations: int = 2
    population: int = 4
    mind: MindKind = "offline"
    model: str | None = None
    out: Path | None = None
    seed: int = 0
    profile: ProfileName = ""
    keep: int = 3  # best candidates shown to the next iteration
    final_top: int = 3  # kept for the CLI flag: the final comparison is always the leader, the baseline and the best built-in
    max_runs: int | None = None  # default: two jobs per candidate (racing) plus the final runs
    wall_time: float = 3600.0
    executor: ExecutorKind = "local"  # an embedded lab's; a running lab runs its jobs where it runs them
    nats: str | None = None  # a running lab's NATS; None: the local lab, or an embedded one started for this run
    seed_code: list[Path] = field(default_factory=list)
    quiet: bool = False

    def check(self) -> None:
        for name in ("iterations", "population", "keep", "final_top"):
            if getattr(self, name) < 1:
                raise EvolveError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.max_runs is not None and self.max_runs <= FINAL_RUNS:
            raise EvolveError(f"--max-runs {self.max_runs} leaves no run for the loop after the {FINAL_RUNS} final test runs")
        if self.max_runs is not None and self.max_runs > 1000:
            raise EvolveError(f"--max-runs {self.max_runs} is over the lab's 1000 runs per project")
        if self.wall_time <= 0:
            raise EvolveError("--wall-time must be positive")
        if self.mind not in ("offline", "llm"):
            raise EvolveError(f"unknown mind {self.mind!r}; choose offline or llm")

    @property
    def runs(self) -> int:
        return min(1000, self.max_runs or 2 * self.iterations * self.population + FINAL_RUNS)


def seed_proposals(paths: list[Path]) -> list[Proposal]:
    out = []
    for p in paths:
        try:
            out.append(Proposal(name=p.stem, code=p.read_text(), rationale=f"seeded from {p.name}"))
        except (OSError, UnicodeDecodeError) as e:
            raise EvolveError(f"--seed-code {p}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    return out


def evolve_request(opts: EvolveOptions, folder: Path, bundle: bytes, name: str) -> EvolveRequest:
    """What the PI needs to run the loop: the template's evolve.yaml, its built-ins, the seeded code, the budgets."""
    ev = workflow.load_spec(folder, name)
    pool = builtin_pool(templates.bundle_files(bundle)["experiment.py"], ev)
    return EvolveRequest(spec=ev, iterations=opts.iterations, population=opts.population, keep=opts.keep, max_runs=opts.runs,
                         wall_time_s=opts.wall_time, mind=opts.mind, model=opts.model, pool=pool, seeds=seed_proposals(opts.seed_code))


def run_evolve(opts: EvolveOptions, console: Console) -> int:
    from services.lab.supervisor import LabOptions, Supervisor, Terminated, refuse_if_full, running_lab, stop_on_signals

    opts.check()
    folder, spec = load_template(opts.template)
    bundle = templates.bundle(folder)
    request = evolve_request(opts, folder, bundle, spec.name)
    spec.profile(opts.profile or None)  # an unknown profile is one readable line, before a lab starts
    home = lab_home()
    sup = None
    with stop_on_signals((signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) as stopped:
        try:
            if opts.nats is None:
                refuse_if_full(home)
            if opts.nats is None and not running_lab(home):
                console.print(f"starting an embedded lab in {home} for this run…")
                sup = Supervisor(LabOptions(home=home, mind=opts.mind, executor=opts.executor))
                sup.start()
            return asyncio.run(_evolve(opts, spec.name, spec.model_dump(mode="json"), bundle, request, console, sup))
        except (Terminated, KeyboardInterrupt):
            what = "stopping the embedded lab this run started" if sup is not None else "the evolve project goes on in the lab"
            console.print(f"interrupted{' by ' + stopped.name if stopped.name else ''}; {what}")
            return 128 + (stopped.signum or signal.SIGINT)
        finally:
            if sup is not None:
                sup.stop()


async def _evolve(opts: EvolveOptions, template: str, spec: dict[str, object], bundle: bytes, request: EvolveRequest,
                  console: Console, sup: object) -> int:
    project = new_project_id(f"evolve-{template}", opts.seed)[:48]
    out = opts.out or Path("lab-out") / project
    config = bus_config("copi", opts.nats, name="lab-evolve")
    try:
        bus = await Bus.connect(config)
    except ConnectError as e:
        raise unreachable(config.url, e) from None
    try:
        local = read_local_lab()
        await check_store(bus, bus.config.url, local.max_store_bytes if local and local.serves(bus.config.url) else None)
        budget = Budget(max_ideas=1, max_runs=request.max_runs, max_revision_rounds=0, wall_time_s=opts.wall_time)

        def start_envelope(bundle_name: str) -> Envelope:
            start = StartProject(template=template, template_object=bundle_name, spec=spec, seed=opts.seed, budget=budget,
                                 fast=opts.profile == "fast", profile=opts.profile, mind=opts.mind, user=starter(), evolve=request)
            return Envelope(project=project, sender="copi", recipient="pi", body=start, mind=MindChoice(kind=opts.mind, model=opts.model))

        await start_project(bus, project, bundle, start_envelope)
        hook = request.spec.hook.function
        console.print(f"evolve project [bold]{project}[/bold]: {template}'s {hook}() with the {opts.mind} mind, {opts.iterations} iterations × "
                      f"{opts.population} candidates, raced on the dev split, compared with {request.spec.baseline} on the test split; "
                      f"follow with `lab logs -f --project {project}`")
        follow = RunOptions(template=template, quiet=opts.quiet, mind=opts.mind, nats=opts.nats)
        # The wall time stops new iterations; the running one and the final test runs finish after it.
        decision = await _follow(bus, project, follow, console, sup, deadline=time.monotonic() + 2 * opts.wall_time + 600)
        done = await export_project(bus, project, out)
        if decision is None:
            console.print(f"[red]evolve project {project} did not finish in time[/red]; what it had so far is in {out}")
            return 1
        return _report(console, out, done.out)
    finally:
        await bus.close()


def _report(console: Console, out: Path, folder: Path) -> int:
    """Say the verdict from ``evolve/summary.json`` (1: nothing finished on the test split)."""
    path = folder / "evolve" / "summary.json"
    if not path.is_file():
        console.print(f"[red]the evolve project wrote no evolve/summary.json[/red]; its outputs are in {out}")
        return 1
    s = json.loads(path.read_text())
    if s["stopped"]:
        console.print(f"[yellow]stopped early: {s['stopped']} is spent[/yellow]")
    console.print(f"\nprogress plot: {folder / 'evolve' / 'progress.png'}")
    for c in s["final"]:
        score = f"{c['test']:.4f} ± {c['test_stderr']:.4f} ({len(c['test_values'])} seeds)" if c["test"] is not None else f"failed: {c['reason']}"
        console.print(f"  {escape(c['name'][:40]):<40} test {escape(score)}")
    for what, cmp in s["comparisons"].items():
        console.print(f"  best vs {what}: {cmp['diff']:+.4f}, 95% CI [{cmp['lo']:+.4f}, {cmp['hi']:+.4f}], p = {cmp['p']:.3g}")
    console.print(f"[bold]{escape(s['verdict'])}[/bold]; {s['preference_pairs']} preference pairs in {folder / 'evolve' / 'preferences.jsonl'}")
    return 0 if any(c["state"] == "succeeded" for c in s["final"]) else 1


__all__ = ["EvolveOptions", "evolve_request", "run_evolve", "seed_proposals"]
