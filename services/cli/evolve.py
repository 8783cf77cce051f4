"""`lab evolve`: the Self-Developing loop's activities — running candidates as jobs and writing ``evolve/``.

The decisions (what to run, what was best, which pairs to keep) are
``agents/evolve/workflow.py``'s; this module gives them side effects. Candidates run
exactly as the engineer's experiments do: the template bundle with the
candidate switched in by a guarded edit goes to the object store, a
``JobSpec`` goes to an executor from ``make_executor``, and the job runner
reports back on the bus. With no ``--nats`` a private NATS server (and the
local executor, by default) is started for the run, so it works on a laptop
like `lab run`.

On a running lab (``--nats``) the candidates share the lab's capacity with its
projects: each job takes a hold in the lab's slot ledger (``bus/ledger.py``)
before it is submitted and gives it back when it ends, waiting its fair turn
when the lab is full. Its holds are leased (the engineer's reconcile cannot
see jobs no project's state lists) and renewed while the run lasts, so a
killed `lab evolve` frees them when the lease passes.

Budgets: ``max_runs`` counts every job (the final test runs included, and
reserved for them); ``wall_time`` stops new iterations, not the final test.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.markup import escape

from agents.codeedit import EditError
from agents.engineer.jobs import plan_job
from agents.evolve import workflow
from agents.evolve.workflow import EvolveError, EvolveMind, Hook, ProposeRequest
from agents.templates import bundle, bundle_files, replace_files
from bus import subjects
from bus.client import Bus, BusConfig
from bus.jobkeys import JobKeys, new_secret
from bus.ledger import SlotLedger
from bus.permissions import ADMIN, JOB_USER, RUNNER
from bus.retry import poll
from bus.schema import ExecutorKind, JobSpec, JobStatus, MindKind, NatsAccess, ProfileName, TemplateSpec, decode
from bus.schema.evolve import Candidate, IterationSummary, PreferencePair, Proposal, Split
from bus.server import EmbeddedServer, new_credentials
from bus.settings import settings
from bus.store import Artifacts, StateStore
from services.cli.run import load_template, new_project_id
from services.common.config import bus_config, lab_config, read_local_lab, secrets_dir
from services.executors import Executor, make_executor
from services.host.jobs import ledger_for, runner_access
from services.lab.lifecycle import check_store

POLL_S = 2.0
LOST_GRACE_S = 5.0  # an executor's "failed" waits this long for the runner's own status, which says more
# On a running lab: a hold in its slot ledger outlives a killed `lab evolve` by at most LEASE_S; the run renews
# its leases every RENEW_S (well inside LEASE_S), and a candidate refused capacity asks again every WAIT_POLL_S.
LEASE_S = 60.0
RENEW_S = 20.0
WAIT_POLL_S = 1.0

log = structlog.get_logger()


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
    final_top: int = 3  # best candidates scored on the test split at the end
    max_runs: int | None = None  # default: every candidate once plus the final runs
    wall_time: float = 3600.0
    executor: ExecutorKind = "local"
    nats: str | None = None  # a running lab's NATS; None: a private server for this run
    seed_code: list[Path] = field(default_factory=list)
    quiet: bool = False

    def check(self) -> None:
        for name in ("iterations", "population", "keep", "final_top"):
            if getattr(self, name) < 1:
                raise EvolveError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.max_runs is not None and self.max_runs <= self.final_top:
            raise EvolveError(f"--max-runs {self.max_runs} leaves no run for the loop after the {self.final_top} final test runs")
        if self.wall_time <= 0:
            raise EvolveError("--wall-time must be positive")
        if self.mind not in ("offline", "llm"):
            raise EvolveError(f"unknown mind {self.mind!r}; choose offline or llm")


def seed_proposals(paths: list[Path]) -> list[Proposal]:
    out = []
    for p in paths:
        try:
            out.append(Proposal(name=p.stem, code=p.read_text(), rationale=f"seeded from {p.name}"))
        except (OSError, UnicodeDecodeError) as e:
            raise EvolveError(f"--seed-code {p}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    return out


def make_evolve_mind(opts: EvolveOptions, hook: Hook, experiment: str) -> EvolveMind:
    if opts.mind == "llm":
        from agents.evolve.llm import make

        return make(opts.seed, {"model": opts.model} if opts.model else {})
    from agents.evolve.offline import OfflineEvolveMind, builtin_pool

    return OfflineEvolveMind(hook, builtin_pool(experiment, hook), opts.seed)


# ------------------------------------------------------------------ running candidates (activities)


class CandidateRunner:
    """Runs one candidate on one split as a job and returns it as a Candidate record.

    With a ``ledger`` (a running lab's) each job holds its units there while it runs; without one
    (the run's private server) only the local limit of the executor's capacity applies.
    """

    def __init__(self, bus: Bus, artifacts: Artifacts, executor: Executor, project: str, spec: TemplateSpec, profile: str,
                 base_bundle: bytes, hook: Hook, job_nats: NatsAccess, keys: JobKeys,
                 ledger: SlotLedger | None = None, console: Console | None = None) -> None:
        self.bus, self.artifacts, self.executor, self.project = bus, artifacts, executor, project
        self.spec, self.hook, self.base, self.job_nats = spec, hook, base_bundle, job_nats
        self.files = bundle_files(base_bundle)
        self.profile = profile or None
        self.metric = spec.primary_metric
        self.waiting: dict[str, asyncio.Future[JobStatus]] = {}
        self.keys = keys  # a candidate's result counts only with its own job's signature
        self.runs = 0
        self._pump: asyncio.Task[None] | None = None
        self._renew: asyncio.Task[None] | None = None
        self.slots = asyncio.Semaphore(max(1, executor.capacity() or 4))
        self.ledger = ledger
        self.console = console
        self._told_waiting = False

    async def start(self) -> None:
        feed = await self.bus.feed(subjects.job_statuses(self.project), subjects.JOBS_STREAM)

        async def pump() -> None:
            async for data in feed:
                env = decode(data)
                body = env.body
                if isinstance(body, JobStatus) and (why := self.keys.refusal(env.project, body)):
                    log.warning("job status refused", reason=why)
                    continue
                if isinstance(body, JobStatus) and body.state in ("succeeded", "failed", "cancelled"):
                    fut = self.waiting.get(body.job_id)
                    if fut is not None and not fut.done():
                        fut.set_result(body)

        self._pump = asyncio.create_task(pump())
        if self.ledger is not None:
            self._renew = asyncio.create_task(self._renew_leases(self.ledger))

    async def _renew_leases(self, ledger: SlotLedger) -> None:
        """Keep this run's holds (and its waiting) in the lab's ledger alive while the process lives."""
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                await ledger.renew(self.project, LEASE_S)
            except Exception as e:  # the next renewal tries again, well before the lease passes
                log.warning("ledger lease renewal failed", error=str(e))

    async def stop(self) -> None:
        """Stop reading statuses and renewing leases."""
        for task in (self._pump, self._renew):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def give_back(self) -> None:
        """Give back whatever this run still holds or waits for in the lab's ledger (once its jobs are gone)."""
        if self.ledger is not None:
            try:
                await self.ledger.forget(self.project)
            except Exception as e:  # the lease frees them soon anyway
                log.warning("could not give back this run's ledger holds; their lease frees them", error=str(e))

    async def run(self, cid: str, iteration: int, p: Proposal, split: Split) -> Candidate:
        base = dict(id=cid, iteration=iteration, name=p.name, code=p.code, rationale=p.rationale, parents=p.parents, split=split)
        try:
            files = workflow.patched(self.files, self.hook, p.code)
        except EditError as e:
            return Candidate(**base, state="failed", reason=f"edit refused: {e}")
        async with self.slots:
            self.runs += 1
            planned = plan_job(
                self.spec, self.profile, job_id=f"{self.project}-{cid}", project=self.project, experiment_id=cid,
                bundle_object=await self.artifacts.put(f"{self.project}/bundles/{cid}.tar.gz", replace_files(self.base, files)),
                seeds=list(range(self.spec.seeds)),
            )
            # The split is the loop's, not a knob an idea may move: it goes to the experiment beside the planned overrides.
            key = self.keys.key(self.project, planned.job_id)
            job = planned.model_copy(update={"overrides": {**planned.overrides, "split": split},
                                                "nats": runner_access(self.job_nats, planned, key), "status_key": key})
            status = await self._held_wait(job)
        base.update(job_id=job.job_id, wall_s=round(status.wall_s, 2))
        if status.state != "succeeded" or status.final_info is None:
            return Candidate(**base, state="failed", reason=status.reason or status.state)
        info = status.final_info
        scored = (info.model_extra or {}).get("split", split)
        if scored != split or self.metric not in info.metrics:
            why = f"the experiment scored the {scored} split" if scored != split else f"no {self.metric} in final_info.json"
            return Candidate(**base, state="failed", reason=why)
        stat = info.metrics[self.metric]
        return Candidate(**base, state="succeeded", score=stat.mean, stderr=stat.stderr,
                         metrics={m: s.mean for m, s in info.metrics.items()})

    async def _held_wait(self, job: JobSpec) -> JobStatus:
        """Run the job holding its units in the lab's ledger (when there is one): waiting for them, giving them back at its end."""
        if self.ledger is None:
            return await self._timed_wait(job)
        ledger = self.ledger
        units = ledger.units_of(job.gpu)
        if ledger.capacity is not None and units > ledger.capacity:
            return JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="failed",
                             reason=f"needs {units} {ledger.counts}, the lab has {ledger.capacity}")
        def waiting(_: int) -> None:
            if not self._told_waiting and self.console is not None:
                self._told_waiting = True
                self.console.print(f"[yellow]waiting for lab capacity[/yellow]: the lab's {ledger.counts} are in use or other "
                                   "projects wait for their share (`lab status` shows who holds them)")

        try:
            # As long as it takes: the lease (renewed while this process lives) bounds what a dead run holds.
            await poll(lambda: ledger.acquire(self.project, job.job_id, units, lease_s=LEASE_S), every_s=WAIT_POLL_S, on_wait=waiting)
            return await self._timed_wait(job)
        finally:
            try:
                await ledger.release([job.job_id])
            except Exception as e:  # its lease frees it soon; the candidate's result stands
                log.warning("could not give back a ledger hold; its lease frees it", job=job.job_id, error=str(e))

    async def _timed_wait(self, job: JobSpec) -> JobStatus:
        """The job's end, with the time it took from submission where the runner did not say."""
        started = time.monotonic()
        status = await self._wait(job)
        return status if status.wall_s else status.model_copy(update={"wall_s": time.monotonic() - started})

    async def _wait(self, job: JobSpec) -> JobStatus:
        fut: asyncio.Future[JobStatus] = asyncio.get_running_loop().create_future()
        self.waiting[job.job_id] = fut
        try:
            try:
                await self.executor.submit(job)
            except Exception as e:  # an executor error fails this candidate, not the loop
                return JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="failed", reason=f"dispatch failed: {e}")
            deadline = time.monotonic() + job.wall_time_s + 120
            lost_since: float | None = None
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), POLL_S)
                except TimeoutError:
                    pass
                phase = await self.executor.poll(job.job_id)
                if phase.state in ("failed", "missing"):
                    lost_since = lost_since or time.monotonic()
                    if time.monotonic() - lost_since > LOST_GRACE_S:
                        return JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="failed", reason=phase.reason or phase.state)
                if time.monotonic() > deadline:
                    await self.executor.cancel(job.job_id)
                    return JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="failed", reason="timeout: no result from the runner")
        finally:
            self.waiting.pop(job.job_id, None)


# ------------------------------------------------------------------ writing evolve/


class EvolveFiles:
    """``evolve/`` in the output folder, written as the loop goes so an interrupted run keeps what it did."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "evolve"
        (self.dir / "candidates").mkdir(parents=True, exist_ok=True)
        for name in ("candidates.jsonl", "iterations.jsonl", "preferences.jsonl", "final.jsonl"):
            (self.dir / name).write_text("")

    def _append(self, name: str, line: str) -> None:
        with open(self.dir / name, "a") as f:
            f.write(line + "\n")

    def candidate(self, c: Candidate) -> None:
        self._append("final.jsonl" if c.split == "test" else "candidates.jsonl", c.model_dump_json())
        score = f"{c.score:.4f}" if c.score is not None else "failed"
        (self.dir / "candidates" / f"{c.id}.py").write_text(f"# {c.name} ({c.split}: {score})\n{c.code.rstrip()}\n")

    def iteration(self, s: IterationSummary, prompt: str) -> None:
        self._append("iterations.jsonl", s.model_dump_json())
        (self.dir / f"prompt-i{s.iteration}.md").write_text(prompt)

    def preference(self, pair: PreferencePair) -> None:
        self._append("preferences.jsonl", pair.model_dump_json())

    def summary(self, data: dict[str, Any]) -> None:
        (self.dir / "summary.json").write_text(json.dumps(data, indent=2))

    def plot(self, iterations: list[IterationSummary], final: list[Candidate], metric: str) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs = [s.iteration for s in iterations]
        ax.plot(xs, [s.best if s.best is not None else float("nan") for s in iterations], "o-", label="best (dev)")
        ax.plot(xs, [s.median if s.median is not None else float("nan") for s in iterations], "s--", label="median (dev)")
        tested = [c.score for c in final if c.score is not None]
        if tested:
            ax.axhline(max(tested), color="k", lw=0.8, ls=":", label="best final (test)")
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.set_xticks(xs)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = self.dir / "progress.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


# ------------------------------------------------------------------ the loop


@dataclass(frozen=True)
class LabAccess:
    """How `lab evolve` meets a running lab: its bus (as the co-PI), the runners' credential, the job secret."""

    bus: BusConfig
    runner: NatsAccess
    job_secret: str | None  # None: not known here; the lab's engineer then refuses (dead-letters) these statuses


def _local_secret(url: str, name: str) -> str | None:
    """A credential `lab up` wrote under ``$LAB_HOME/secrets/`` for the lab at ``url`` (a file of this user's, 0600)."""
    local = read_local_lab()
    path = secrets_dir() / name
    if not local or not local.serves(url) or not path.is_file():
        return None
    return path.read_text().strip() or None


def lab_access(url: str, executor_options: dict[str, Any]) -> LabAccess:
    """The settings `lab evolve --nats URL` runs with, as `lab up` or a Deployment gives them to the engineer.

    Each comes from the environment first (``LAB_NATS_USER``/``LAB_NATS_PASSWORD[_FILE]`` for the co-PI's
    login, ``LAB_RUNNER_NATS_URL``, ``LAB_RUNNER_USER``, ``LAB_RUNNER_PASSWORD[_FILE]``, ``LAB_JOB_SECRET[_FILE]``),
    else from the files `lab up` wrote for the lab at that URL. EvolveError when the lab checks logins and
    no runner credential is known: the jobs could not report, and the loop would wait them out blind.
    """
    config = bus_config("copi", url, name="lab-evolve")
    s = settings()
    job_secret = s.secret("job_secret") or _local_secret(url, "job-secret")
    local = read_local_lab()
    # A lab that runs the auth service (`lab up`) admits each runner as its own user, its job's key as
    # password (services/jobs.runner_access): then the job secret is the runners' credential.
    per_job = s.runner_user == JOB_USER or (s.runner_user is None and local is not None and local.serves(url) and local.runner_user == JOB_USER)
    password = None if per_job else s.secret("runner_password") or _local_secret(url, RUNNER)
    runner = NatsAccess(
        url=s.runner_nats_url or url,
        user=JOB_USER if per_job else s.runner_user or (RUNNER if password else None),
        password=password,
    )
    if per_job and job_secret is None:
        raise EvolveError(f"the lab at {url} admits runners by their job's key, and no job secret is known here: set LAB_JOB_SECRET_FILE")
    # The kubernetes and docker executors can hand the runner a credential of their own (a Secret, a file).
    own = executor_options.get("nats_secret") or executor_options.get("nats_password_file")
    if config.password is not None and password is None and not own and not per_job:
        raise EvolveError(
            f"no runner credential for the lab at {url}: set LAB_RUNNER_PASSWORD_FILE (`lab up` writes $LAB_HOME/secrets/runner), "
            "or the executor's nats_secret (kubernetes) / nats_password_file (docker) in the lab config"
        )
    return LabAccess(bus=config, runner=runner, job_secret=job_secret)


def run_evolve(opts: EvolveOptions, console: Console) -> int:
    opts.check()
    folder, spec = load_template(opts.template)
    hook = workflow.hook_for(spec.name)
    spec.profile(opts.profile or None)  # an unknown profile is one readable line, before anything starts
    seeds = seed_proposals(opts.seed_code)
    executor_options = lab_config().executor_options(opts.executor)
    if opts.nats is not None:
        access = lab_access(opts.nats, executor_options)
        if access.job_secret is None:
            console.print("[yellow]no lab job secret here (LAB_JOB_SECRET_FILE): the lab's engineer will dead-letter these jobs' statuses; "
                          "the loop checks them with a key of its own[/yellow]")
        executor = make_executor(opts.executor, executor_options)
        keys = JobKeys(access.job_secret or new_secret())
        return asyncio.run(_evolve(opts, folder, spec, hook, seeds, executor, access.bus, access.runner, keys, console, lab=True))
    with tempfile.TemporaryDirectory(prefix="lab-evolve-") as tmp:
        credentials = new_credentials()
        server = EmbeddedServer(Path(tmp) / "nats", credentials=credentials, max_store_bytes=2 << 30)
        server.start()
        try:
            if opts.executor == "local":
                executor_options = {"jobs_dir": str(Path(tmp) / "jobs"), **executor_options}
            executor = make_executor(opts.executor, executor_options)
            job_nats = NatsAccess(url=server.url, user=RUNNER, password=credentials[RUNNER])
            config = BusConfig(url=server.url, user=ADMIN, password=credentials[ADMIN], name="lab-evolve")
            keys = JobKeys(new_secret())  # this run's own: a candidate's result counts only with its job's signature
            return asyncio.run(_evolve(opts, folder, spec, hook, seeds, executor, config, job_nats, keys, console, lab=False))
        finally:
            server.stop()


async def _evolve(opts: EvolveOptions, folder: Path, spec: TemplateSpec, hook: Hook, seeds: list[Proposal], executor: Executor,
                  config: BusConfig, job_nats: NatsAccess, keys: JobKeys, console: Console, lab: bool) -> int:
    project = subjects.token(new_project_id(f"evolve-{spec.name}", opts.seed)[:48], "project")
    out = opts.out or Path("lab-out") / project
    files = EvolveFiles(out)
    max_runs = opts.max_runs or opts.iterations * opts.population + opts.final_top
    deadline = time.monotonic() + opts.wall_time
    try:
        bus = await Bus.connect(config)  # ConnectError (one line) when no lab answers at that URL
    except BaseException:
        await executor.close()
        raise
    mind: EvolveMind | None = None
    runner: CandidateRunner | None = None
    try:
        await _prepare_store(bus, config, lab)
        base = bundle(folder)
        runner = await _start_runner(bus, executor, project, spec, opts.profile, base, hook, job_nats, keys, console, lab)
        mind = make_evolve_mind(opts, hook, bundle_files(base)["experiment.py"])
        metric, direction = spec.primary_metric, spec.metrics[spec.primary_metric].direction
        console.print(f"evolving [bold]{spec.name}[/bold]'s {hook.function}() with the {opts.mind} mind: "
                      f"{opts.iterations} iterations × {opts.population} candidates, scored by {metric} ({direction}) on the dev split; "
                      f"output in {files.dir}")
        everything, summaries, stopped = await _iterate(opts, spec, hook, seeds, mind, runner, files, console, max_runs, deadline)
        if stopped:
            console.print(f"[yellow]stopped before iteration {len(summaries)}: {stopped} is spent[/yellow]")
        return await _final_test(opts, spec, project, runner, files, console, everything, summaries, stopped, max_runs)
    finally:
        if runner is not None:
            await runner.stop()
        if mind is not None:
            await mind.close()
        await executor.cleanup(project)
        if runner is not None:
            await runner.give_back()
        await executor.close()
        await bus.close()


async def _prepare_store(bus: Bus, config: BusConfig, lab: bool) -> None:
    """A running lab's store must have room (its topology is its own: the co-PI may not create streams); a private one is set up."""
    if lab:
        local = read_local_lab()
        await check_store(bus, config.url, local.max_store_bytes if local and local.serves(config.url) else None)
    else:
        await bus.ensure_topology()


async def _start_runner(bus: Bus, executor: Executor, project: str, spec: TemplateSpec, profile: str, base: bytes, hook: Hook,
                        job_nats: NatsAccess, keys: JobKeys, console: Console, lab: bool) -> CandidateRunner:
    """The candidate runner, reading its jobs' statuses; on a running lab its jobs take their turn in the lab's slot ledger."""
    artifacts = await Artifacts.open(bus)
    ledger = ledger_for(executor, await StateStore.open(bus)) if lab else None
    runner = CandidateRunner(bus, artifacts, executor, project, spec, profile, base, hook, job_nats, keys, ledger, console)
    await runner.start()
    return runner


async def _iterate(opts: EvolveOptions, spec: TemplateSpec, hook: Hook, seeds: list[Proposal], mind: EvolveMind, runner: CandidateRunner,
                   files: EvolveFiles, console: Console, max_runs: int, deadline: float) -> tuple[list[Candidate], list[IterationSummary], str]:
    """Propose, run and summarise until the iterations, the run budget or the wall time (``deadline``) are spent: every
    candidate, each iteration's summary, and which budget stopped the loop early ("" when none did)."""
    metric, direction = spec.primary_metric, spec.metrics[spec.primary_metric].direction
    everything: list[Candidate] = []
    summaries: list[IterationSummary] = []
    for it in range(opts.iterations):
        left = max_runs - opts.final_top - runner.runs
        if left <= 0 or time.monotonic() > deadline:
            return everything, summaries, "the run budget" if left <= 0 else "the wall time"
        shown = workflow.examples(everything, opts.keep, direction)
        k = min(opts.population, left)
        text = workflow.prompt(hook, spec.task, metric, direction, k, shown)
        proposals = await _propose(mind, console, it, k, text, shown, [*seeds[:k]] if it == 0 else [], everything)
        batch = await _run_batch(runner, files, console, it, proposals, "dev", opts.quiet, metric)
        everything += batch
        s = workflow.summary(it, batch, direction)
        summaries.append(s)
        files.iteration(s, text)
        if (pair := workflow.preference(text, batch, direction)) is not None:
            files.preference(pair)
        best = f"{s.best:.4f}" if s.best is not None else "—"
        median = f"{s.median:.4f}" if s.median is not None else "—"
        console.print(f"[bold]iteration {it}[/bold]: best {metric} {best}, median {median} ({s.succeeded} ran, {s.failed} failed)")
    return everything, summaries, ""


async def _propose(mind: EvolveMind, console: Console, it: int, k: int, text: str, shown: list[Candidate], proposals: list[Proposal],
                   everything: list[Candidate]) -> list[Proposal]:
    """``k`` proposals for iteration ``it``: the seeded ones given, the rest from the mind (none from a mind that fails)."""
    if len(proposals) < k:
        request = ProposeRequest(iteration=it, k=k - len(proposals), prompt=text, examples=shown, tried=[c.code for c in everything])
        try:
            proposals += (await mind.propose(request))[: request.k]
        except Exception as e:  # a mind that fails loses this iteration's proposals, not the loop
            console.print(f"[red]iteration {it}: the mind proposed nothing[/red]: {escape(str(e))}")
    return proposals


async def _final_test(opts: EvolveOptions, spec: TemplateSpec, project: str, runner: CandidateRunner, files: EvolveFiles, console: Console,
                      everything: list[Candidate], summaries: list[IterationSummary], stopped: str, max_runs: int) -> int:
    """Score the best on the held-out test split, write the plot and summary.json, and say which won (1: none finished)."""
    metric, direction = spec.primary_metric, spec.metrics[spec.primary_metric].direction
    finalists = workflow.examples(everything, opts.final_top, direction)
    final = await _run_batch(
        runner, files, console, len(summaries), [Proposal(name=c.name, code=c.code, rationale=c.rationale, parents=[c.id]) for c in finalists],
        "test", opts.quiet, metric, ids=[f"final-{c.id}" for c in finalists],
    )
    plot = files.plot(summaries, final, metric)
    tested = workflow.ranked(final, direction)

    def dev_score(c: Candidate) -> float | None:
        return next((d.score for d in finalists if f"final-{d.id}" == c.id), None)

    files.summary({
        "template": spec.name, "project": project, "mind": opts.mind, "metric": metric, "direction": direction,
        "iterations": [s.model_dump() for s in summaries], "runs": runner.runs, "max_runs": max_runs, "stopped": stopped,
        "final": [{"id": c.id, "name": c.name, "dev": dev_score(c), "test": c.score,
                   "test_stderr": c.stderr, "state": c.state, "reason": c.reason} for c in final],
    })
    console.print(f"\nprogress plot: {plot}")
    for c in final:
        dev = dev_score(c)
        score = f"{c.score:.4f} ± {c.stderr:.4f}" if c.score is not None and c.stderr is not None else f"failed: {c.reason}"
        console.print(f"  {c.name:<40} dev {dev:.4f}  test {escape(score)}" if dev is not None else f"  {c.name}: {escape(score)}")
    if not tested:
        console.print("[red]no candidate finished on the test split[/red]")
        return 1
    console.print(f"[bold]best on the held-out test split[/bold]: {tested[0].name} ({metric} {tested[0].score:.4f}); "
                  f"preference pairs in {files.dir / 'preferences.jsonl'}")
    return 0


async def _run_batch(runner: CandidateRunner, files: EvolveFiles, console: Console, it: int, proposals: list[Proposal], split: Split,
                     quiet: bool, metric: str, ids: list[str] | None = None) -> list[Candidate]:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    ids = ids or [f"i{it}-c{i}" for i in range(len(proposals))]
    what = "final test" if split == "test" else f"iteration {it}"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True, disable=quiet) as progress:
        task = progress.add_task(f"{what}: running {len(proposals)} candidates on the {split} split", total=len(proposals))

        async def one(cid: str, p: Proposal) -> Candidate:
            c = await runner.run(cid, it, p, split)
            files.candidate(c)
            progress.advance(task)
            if c.state == "succeeded":
                progress.console.print(f"  {cid:<12} {escape(c.name[:40]):<40} {split} {metric} {c.score:.4f}")
            else:
                progress.console.print(f"  {cid:<12} {escape(c.name[:40]):<40} [red]failed[/red]: {escape(c.reason[:160])}")
            return c

        return list(await asyncio.gather(*(one(cid, p) for cid, p in zip(ids, proposals, strict=True))))


__all__ = ["CandidateRunner", "EvolveFiles", "EvolveOptions", "LabAccess", "lab_access", "run_evolve", "seed_proposals"]
