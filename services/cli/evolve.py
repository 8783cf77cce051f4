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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.markup import escape

from agents.codeedit import EditError
from agents.engineer.jobs import plan_job
from agents.evolve import workflow
from agents.evolve.race import FINAL_RUNS, Loop, LoopConfig, Report, Run
from agents.evolve.stats import interval
from agents.evolve.workflow import EvolveError, EvolveMind
from agents.templates import bundle, bundle_files, replace_files
from bus import subjects
from bus.client import Bus, BusConfig
from bus.jobkeys import JobKeys, new_secret
from bus.ledger import SlotLedger
from bus.permissions import ADMIN, JOB_USER, RUNNER
from bus.retry import poll
from bus.schema import ExecutorKind, JobSpec, JobStatus, MindKind, NatsAccess, ProfileName, TemplateSpec, decode
from bus.schema.evolve import Candidate, EvolveSpec, IterationSummary, PreferencePair, Proposal, Split
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
    final_top: int = 3  # kept for the CLI flag: the final comparison is always the leader, the baseline and the best built-in
    max_runs: int | None = None  # default: two jobs per candidate (racing) plus the final runs
    wall_time: float = 3600.0
    executor: ExecutorKind = "local"
    nats: str | None = None  # a running lab's NATS; None: a private server for this run
    seed_code: list[Path] = field(default_factory=list)
    quiet: bool = False

    def check(self) -> None:
        for name in ("iterations", "population", "keep", "final_top"):
            if getattr(self, name) < 1:
                raise EvolveError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.max_runs is not None and self.max_runs <= FINAL_RUNS:
            raise EvolveError(f"--max-runs {self.max_runs} leaves no run for the loop after the {FINAL_RUNS} final test runs")
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


def make_evolve_mind(opts: EvolveOptions, ev: EvolveSpec, experiment: str) -> tuple[EvolveMind, list[Proposal]]:
    """The mind, and the template's built-ins (the baseline first): the llm mind starts from them too."""
    from agents.evolve.offline import OfflineEvolveMind, builtin_pool

    pool = builtin_pool(experiment, ev)
    if opts.mind == "llm":
        from agents.evolve.llm import make

        return make(opts.seed, {"model": opts.model} if opts.model else {}), pool
    return OfflineEvolveMind(ev, pool, opts.seed), pool


# ------------------------------------------------------------------ running candidates (activities)


class CandidateRunner:
    """Runs one candidate on one split as a job and returns it as a Candidate record.

    With a ``ledger`` (a running lab's) each job holds its units there while it runs; without one
    (the run's private server) only the local limit of the executor's capacity applies.
    """

    def __init__(self, bus: Bus, artifacts: Artifacts, executor: Executor, project: str, spec: TemplateSpec, profile: str,
                 base_bundle: bytes, ev: EvolveSpec, job_nats: NatsAccess, keys: JobKeys,
                 ledger: SlotLedger | None = None, console: Console | None = None) -> None:
        self.bus, self.artifacts, self.executor, self.project = bus, artifacts, executor, project
        self.spec, self.ev, self.hook, self.base, self.job_nats = spec, ev, ev.hook, base_bundle, job_nats
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

    async def __call__(self, cid: str, proposal: Proposal, seeds: list[int], split: Split) -> Run:
        """One job: the candidate switched in, on ``seeds`` of ``split``; its per-seed scores and behaviour."""
        try:
            files = workflow.patched(self.files, self.hook, proposal.code)
        except EditError as e:
            return Run(ok=False, reason=f"edit refused: {e}")
        jid = f"{cid}-{split}-s{seeds[0]}"
        async with self.slots:
            self.runs += 1
            planned = plan_job(
                self.spec, self.profile, job_id=f"{self.project}-{jid}", project=self.project, experiment_id=jid,
                bundle_object=await self.artifacts.put(f"{self.project}/bundles/{jid}.tar.gz", replace_files(self.base, files)),
                seeds=seeds,
            )
            # The split and the template's evolve overrides are the loop's, not knobs an idea may move.
            key = self.keys.key(self.project, planned.job_id)
            overrides = {**planned.overrides, **self.ev.overrides, self.ev.split_flag: split}
            job = planned.model_copy(update={"overrides": overrides, "nats": runner_access(self.job_nats, planned, key), "status_key": key})
            status = await self._held_wait(job)
        return self._result(job.job_id, status, split, seeds)

    def _result(self, job_id: str, status: JobStatus, split: Split, seeds: list[int]) -> Run:
        base = Run(ok=False, job_id=job_id, wall_s=round(status.wall_s, 2))
        if status.state != "succeeded" or status.final_info is None:
            return replace(base, reason=status.reason or status.state)
        info = status.final_info
        extra = info.model_extra or {}
        scored = extra.get("split", split)
        stat = info.metrics.get(self.metric)
        if scored != split or stat is None or len(stat.values) != len(info.seeds):
            why = f"the experiment scored the {scored} split" if scored != split else f"no per-seed {self.metric} in final_info.json"
            return replace(base, reason=why)
        behaviour = [str(b) for b in extra.get("behaviour", [])]
        return replace(base, ok=True, seeds=list(info.seeds), values=list(stat.values),
                       behaviour=behaviour if len(behaviour) == len(info.seeds) else [],
                       metrics={m: x.mean for m, x in info.metrics.items()})

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
    """``evolve/`` in the output folder, written as the loop goes so an interrupted run keeps what it did (the loop's Sink)."""

    def __init__(self, out: Path, console: Console | None = None) -> None:
        self.dir = out / "evolve"
        self.console = console
        (self.dir / "candidates").mkdir(parents=True, exist_ok=True)
        for name in ("candidates.jsonl", "iterations.jsonl", "preferences.jsonl", "final.jsonl"):
            (self.dir / name).write_text("")

    def _append(self, name: str, line: str) -> None:
        with open(self.dir / name, "a") as f:
            f.write(line + "\n")

    def candidates(self, archive: list[Candidate]) -> None:
        """Every candidate as it stands now (its seeds so far, duplicate of, eliminated), and its code and diff."""
        (self.dir / "candidates.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in archive))
        for c in archive:
            self._code(c)

    def _code(self, c: Candidate) -> None:
        score = f"{c.score:.4f} over {len(c.values)} seeds" if c.score is not None else c.state
        (self.dir / "candidates" / f"{c.id}.py").write_text(f"# {c.name} ({c.split}: {score})\n{c.code.rstrip()}\n")
        if c.diff:
            (self.dir / "candidates" / f"{c.id}.diff").write_text(c.diff)

    def final(self, c: Candidate) -> None:
        self._append("final.jsonl", c.model_dump_json())
        self._code(c)

    def iteration(self, s: IterationSummary, prompt: str) -> None:
        self._append("iterations.jsonl", s.model_dump_json())
        (self.dir / f"prompt-i{s.iteration}.md").write_text(prompt)

    def preference(self, pair: PreferencePair) -> None:
        self._append("preferences.jsonl", pair.model_dump_json())

    def say(self, line: str) -> None:
        if self.console is not None:
            self.console.print(escape(line))

    def summary(self, data: dict[str, Any]) -> None:
        (self.dir / "summary.json").write_text(json.dumps(data, indent=2))

    def plot(self, report: Report, metric: str, baseline: str) -> Path:
        """Best so far (95% interval) and median per iteration on dev, the baseline's dev mean, the test result marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        its = report.summaries
        xs = [s.iteration for s in its]
        nan = float("nan")
        best = [s.best if s.best is not None else nan for s in its]
        err = [[(s.best - s.best_lo) if s.best is not None and s.best_lo is not None else 0 for s in its],
               [(s.best_hi - s.best) if s.best is not None and s.best_hi is not None else 0 for s in its]]
        ax.errorbar(xs, best, yerr=err, fmt="o-", capsize=3, label="best so far (dev, 95% CI)")
        ax.plot(xs, [s.median if s.median is not None else nan for s in its], "s--", label="median of iteration (dev)")
        base = next((c for c in report.archive if c.builtin and c.name == baseline and c.values), None)
        if base is not None and base.score is not None:
            ax.axhline(base.score, color="grey", lw=1, ls="-.", label=f"baseline {baseline} (dev)")
        for i, c in enumerate(c for c in report.final if c.values):
            lo, hi = interval(c.values)
            m = sum(c.values) / len(c.values)
            x = (xs[-1] if xs else 0) + 0.25 * (i + 1)
            ax.errorbar([x], [m], yerr=[[m - lo], [hi - m]], fmt="*" if i == 0 else "d", ms=9, capsize=3,
                        label=f"{c.name[:24]} (test, 95% CI)")
        ax.set_xlabel("iteration")
        ax.set_ylabel(metric)
        ax.set_xticks(xs)
        ax.legend(fontsize=7)
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
    ev = workflow.load_spec(folder, spec.name)
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
        return asyncio.run(_evolve(opts, folder, spec, ev, seeds, executor, access.bus, access.runner, keys, console, lab=True))
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
            return asyncio.run(_evolve(opts, folder, spec, ev, seeds, executor, config, job_nats, keys, console, lab=False))
        finally:
            server.stop()


async def _evolve(opts: EvolveOptions, folder: Path, spec: TemplateSpec, ev: EvolveSpec, seeds: list[Proposal], executor: Executor,
                  config: BusConfig, job_nats: NatsAccess, keys: JobKeys, console: Console, lab: bool) -> int:
    project = subjects.token(new_project_id(f"evolve-{spec.name}", opts.seed)[:48], "project")
    out = opts.out or Path("lab-out") / project
    files = EvolveFiles(out, None if opts.quiet else console)
    max_runs = opts.max_runs or 2 * opts.iterations * opts.population + FINAL_RUNS
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
        runner = await _start_runner(bus, executor, project, spec, opts.profile, base, ev, job_nats, keys, console, lab)
        mind, pool = make_evolve_mind(opts, ev, bundle_files(base)["experiment.py"])
        metric, direction = spec.primary_metric, spec.metrics[spec.primary_metric].direction
        console.print(f"evolving [bold]{spec.name}[/bold]'s {ev.hook.function}() with the {opts.mind} mind: "
                      f"{opts.iterations} iterations × {opts.population} candidates, {metric} ({direction}) raced on the dev split, "
                      f"compared with the baseline ({ev.baseline}) on the held-out test split; output in {files.dir}")
        # The offline mind brings the pool itself; with the llm mind the baseline runs first, so it can be compared with.
        own = seeds if opts.mind == "offline" else [*seeds, *pool[:1]]
        cfg = LoopConfig(spec=ev, task=spec.task, metric=metric, direction=direction, iterations=opts.iterations,
                         population=opts.population, keep=opts.keep, max_runs=max_runs, deadline=deadline, seed_proposals=own)
        report = await Loop(cfg, mind, runner, files).run()
        return _report(opts, spec, ev, project, runner, files, console, report, max_runs)
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


async def _start_runner(bus: Bus, executor: Executor, project: str, spec: TemplateSpec, profile: str, base: bytes, ev: EvolveSpec,
                        job_nats: NatsAccess, keys: JobKeys, console: Console, lab: bool) -> CandidateRunner:
    """The candidate runner, reading its jobs' statuses; on a running lab its jobs take their turn in the lab's slot ledger."""
    artifacts = await Artifacts.open(bus)
    ledger = ledger_for(executor, await StateStore.open(bus)) if lab else None
    runner = CandidateRunner(bus, artifacts, executor, project, spec, profile, base, ev, job_nats, keys, ledger, console)
    await runner.start()
    return runner


def _report(opts: EvolveOptions, spec: TemplateSpec, ev: EvolveSpec, project: str, runner: CandidateRunner, files: EvolveFiles,
            console: Console, report: Report, max_runs: int) -> int:
    """Write the final runs, the plot and summary.json, and say the verdict (1: nothing finished on the test split)."""
    metric, direction = spec.primary_metric, spec.metrics[spec.primary_metric].direction
    for c in report.final:
        files.final(c)
    plot = files.plot(report, metric, ev.baseline)
    dev = {c.id: c for c in report.archive}
    files.summary({
        "template": spec.name, "project": project, "mind": opts.mind, "metric": metric, "direction": direction,
        "splits": ev.splits, "baseline": ev.baseline, "overrides": ev.overrides, "seeds": ev.seeds.model_dump(),
        "iterations": [s.model_dump() for s in report.summaries], "runs": runner.runs, "max_runs": max_runs, "stopped": report.stopped,
        "duplicates": {c.id: c.same_as for c in report.archive if c.same_as}, "preference_pairs": report.pairs,
        "final": [{"id": c.id, "name": c.name, "builtin": c.builtin, "dev": dev[c.id.removeprefix("test-")].score,
                   "dev_seeds": len(dev[c.id.removeprefix("test-")].values), "test": c.score, "test_stderr": c.stderr,
                   "test_values": c.values, "test_seeds": c.seeds, "state": c.state, "reason": c.reason} for c in report.final],
        "comparisons": {k: v.model_dump() for k, v in report.comparisons.items()},
        "verdict": report.verdict, "beat_baseline": report.beat_baseline,
    })
    if report.stopped:
        console.print(f"[yellow]stopped early: {report.stopped} is spent[/yellow]")
    console.print(f"\nprogress plot: {plot}")
    for c in report.final:
        score = f"{c.score:.4f} ± {c.stderr:.4f} ({len(c.values)} seeds)" if c.score is not None and c.stderr is not None else f"failed: {c.reason}"
        console.print(f"  {escape(c.name[:40]):<40} test {escape(score)}")
    for what, cmp in report.comparisons.items():
        console.print(f"  best vs {what}: {cmp.diff:+.4f}, 95% CI [{cmp.lo:+.4f}, {cmp.hi:+.4f}], p = {cmp.p:.3g}")
    console.print(f"[bold]{escape(report.verdict)}[/bold]; {report.pairs} preference pairs in {files.dir / 'preferences.jsonl'}")
    return 0 if any(c.state == "succeeded" for c in report.final) else 1


__all__ = ["CandidateRunner", "EvolveFiles", "EvolveOptions", "LabAccess", "lab_access", "run_evolve", "seed_proposals"]
