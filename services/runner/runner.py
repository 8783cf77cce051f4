"""`python -m services.runner`: runs one experiment under limits the experiment cannot touch.

The runner is the experiment's parent and a child subreaper: it owns the
wall-time clock and the memory and process watch over its whole process tree
(read from /proc, so ``setsid`` does not hide a grandchild), kills that tree
when a limit is exceeded, and is the only one that reports the outcome and
talks to NATS. The experiment runs inside the bubblewrap sandbox of
:mod:`services.runner.sandbox` when the machine has one (no credential, no network
unless the template asks, no view of the lab or of other processes, dies with
the runner), under per-process rlimits either way. Nothing the runner trusts
lives where the experiment can write: process handles stay in memory.

On Docker and Kubernetes (``$LAB_SHARED_DIR`` set) the experiment runs in a
container of its own instead, started by :mod:`services.runner.launcher` under
another uid and without any credential; the runner hands it the code and
follows it through a shared volume (:mod:`services.runner.split`).

Exit codes (Kubernetes' podFailurePolicy reads them): 0 ok, 3 the experiment
failed (do not retry), 4 the bus or object store was unreachable (retry).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from agents.templates import unbundle
from bus import jobkeys, metrics, provenance, subjects
from bus.client import Bus, BusConfig
from bus.permissions import chunk_prefix, files_subject, job_of_user
from bus.schema import Envelope, FinalInfo, JobEnvironment, JobSpec, JobStatus, NatsAccess, derive_id
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_INFRA, EXIT_OK
from bus.schema.formats import RESULT_FILE, JobLogLine, dump_result
from bus.schema.results import INVALID_OUTPUT, LOG_TAIL_NAME, clean_text
from bus.settings import ConfigError, Settings, settings
from bus.store import Artifacts
from services.common.config import lab_home
from services.runner import box, checkpoint, envs, outputs, proctree, sandbox, split, usage

PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "matplotlib")
MEMORY_POLL_S = 0.25
PLOT_LIMIT_S = 120.0
BOX_DEFAULT_MB = 4096  # the private tmpfs's size when the template declares no scratch disk (as on Kubernetes)


def environment(device: str = "cpu") -> JobEnvironment:
    """The machine as it is, read from the system, never assumed."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus: list[str] = []
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10,
            ).stdout
            for row in out.strip().splitlines():
                name, _, drv = row.partition(",")
                gpus.append(name.strip())
                driver = drv.strip() or driver
        except (OSError, subprocess.SubprocessError):
            pass
    packages = {}
    for p in PACKAGES:
        try:
            packages[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    cuda = None
    try:
        import torch  # only to read what the wheel was built for

        cuda = torch.version.cuda
    except ImportError:
        pass  # no torch in this image: nothing to record
    except Exception as e:  # torch present but broken (CUDA libraries, ABI): only this metadata is lost, the job may not need it
        print(f"runner: torch does not import, CUDA version not recorded: {type(e).__name__}: {e}", file=sys.stderr)
    # Seeds make CPU runs reproducible; GPU kernels (cuBLAS, cuDNN, atomics) are not, which a reader should know.
    notes = ["GPU kernels are not deterministic: reruns of a seed on a GPU may differ slightly"] if device == "cuda" else []
    s = settings()
    return JobEnvironment(
        notes=notes,
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        cpu=cpu,
        cpu_count=os.cpu_count() or 0,
        gpus=gpus,
        cuda=cuda,
        driver=driver,
        device=device,
        packages=packages,
        executor=s.executor_kind,
        node=s.node_name or socket.gethostname(),
        image=s.job_image or "",
        interpreter=f"{sys.executable} {platform.python_version()}",
        packages_sha256=provenance.packages_sha256(packages),
    )


def _flag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _torchrun() -> list[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def _multinode(job: JobSpec) -> list[str]:
    """torchrun's flags for one node of a multi-node job: a static rendezvous at node 0 (``LAB_RDZV_ENDPOINT``).

    Static, not c10d: node ``LAB_NODE_RANK`` gets global ranks R*P..R*P+P-1, so global rank 0 (which writes
    the results and the checkpoint) is always on node 0, whose runner reports and uploads (docs/gpu.md).
    """
    s = settings()
    host, _, port = (s.rdzv_endpoint or "").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"a job over {job.nodes} nodes needs LAB_RDZV_ENDPOINT=host:port (set by the kubernetes executor); "
                          f"got {s.rdzv_endpoint!r}")
    return [f"--nnodes={job.nodes}", f"--node_rank={s.node_rank}", f"--nproc_per_node={max(job.gpu, 1)}",
            f"--master_addr={host}", f"--master_port={port}"]


def command(job: JobSpec, code: Path, out: Path) -> list[str]:
    """The experiment's argv: one process, ``torchrun`` with one process per GPU when a job asks for several,
    or ``torchrun`` on each of ``job.nodes`` nodes joined at node 0."""
    if job.nodes > 1:
        cmd = [*_torchrun(), *_multinode(job), str(code / "experiment.py")]
    elif job.gpu > 1:
        cmd = [*_torchrun(), "--standalone", f"--nproc_per_node={job.gpu}", str(code / "experiment.py")]
    else:
        cmd = [sys.executable, str(code / "experiment.py")]
    cmd += ["--out_dir", str(out), "--seeds", ",".join(map(str, job.seeds))]
    for k, v in sorted(job.overrides.items()):
        cmd += [f"--{k}", _flag(v)]
    return cmd


class Launch(NamedTuple):
    """How to start one process of the job: the full argv (sandbox included), its environment, its limits."""

    argv: list[str]
    env: dict[str, str]
    preexec: Callable[[], None] | None


def confine(
    argv: list[str], job: JobSpec, workdir: Path, readonly: list[Path], writable: list[Path], extra_env: dict[str, str] | None = None,
    use_sandbox: bool = True,
) -> Launch:
    """Wrap an experiment's argv (from :func:`command`) in the sandbox and the kernel limits.

    The argv is built elsewhere and only wrapped here, so a different launcher
    (e.g. torchrun) changes :func:`command`, not this. ``use_sandbox=False``: the
    container is the boundary (:mod:`services.runner.launcher`), only the limits apply.
    """
    env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(max(1, int(job.cpu))), "MPLBACKEND": "Agg", **(extra_env or {})}
    limits = sandbox.Limits(
        # Private writable memory, not address space (CUDA reserves terabytes it never touches): a backstop
        # well above the limit, none on GPU jobs; the exact limit is the runner's watch over the summed
        # resident memory of the whole tree (and the container's cgroup on Docker and Kubernetes).
        data_mb=None if job.gpu else max(4 * job.memory_mb, job.memory_mb + 4096),
        cpu_s=max(10, math.ceil(job.wall_time_s * max(job.cpu, 1.0)) + 10),
    )
    bwrap = sandbox.tool() if use_sandbox else None
    if bwrap is None:
        tmp = workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        # Unconfined (the lab said so at start, and refuses model-written code here without --unsafe-no-sandbox):
        # still no credential in the environment, and the same limits.
        env.update({"HOME": str(tmp), "TMPDIR": str(tmp), "MPLCONFIGDIR": str(tmp / ".mpl")})
        return Launch(argv, sandbox.sandbox_env(env), sandbox.preexec(limits))
    binds = [sandbox.Bind(source=p, name=p.name) for p in readonly] + [sandbox.Bind(source=p, name=p.name, writable=True) for p in writable]
    env = {k: sandbox.translate([v], binds)[0] for k, v in env.items()}  # host paths (a checkpoint dir) as seen inside
    policy = sandbox.Policy(
        binds=binds, tmp_mb=max(64, job.memory_mb // 4), shm_mb=job.memory_mb, cwd=readonly[0].name if readonly else "", network=job.network,
        devices=sandbox.gpu_devices() if job.gpu else [], env=env,
    )
    # bwrap itself gets the sandbox's environment too: pid 1 inside is bwrap, and its environ is readable there.
    return Launch(sandbox.wrap(argv, policy, bwrap), sandbox.sandbox_env(env), sandbox.preexec(limits))


class Outcome:
    def __init__(self, state: str, reason: str = "", exit_code: int | None = None):
        self.state, self.reason, self.exit_code = state, reason, exit_code


async def supervise(launch: Launch, cwd: Path, job: JobSpec, on_line: Any, term: asyncio.Event | None = None) -> Outcome:
    """Run ``launch`` under the job's wall time, memory and process limits; nothing it started outlives it.

    When ``term`` is set (the runner got SIGTERM) the experiment gets SIGTERM and a grace period to checkpoint.
    """
    proc = await asyncio.create_subprocess_exec(
        *launch.argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        env=launch.env, preexec_fn=launch.preexec,
    )
    me = os.getpid()  # the tree under the runner is the job: only its children, and orphans reparented to it
    s = settings()
    tail: list[str] = []
    killed: list[str] = []
    pumping = asyncio.create_task(_pump(proc, tail, on_line))
    watching = asyncio.create_task(_watch_tree(me, job, killed))
    forwarding = asyncio.create_task(checkpoint.forward_term(me, term, s.term_grace_s, on_line)) if term else None
    try:
        await asyncio.wait_for(proc.wait(), timeout=job.wall_time_s)
    except TimeoutError:
        killed.append(f"timeout: exceeded the wall-time limit of {job.wall_time_s:.0f}s")
        proctree.kill_descendants(me)
        await proc.wait()
    finally:
        watching.cancel()
        if forwarding is not None:
            forwarding.cancel()
        proctree.kill_descendants(me)  # nothing the experiment started outlives it, nor holds its stdout open
    try:
        await asyncio.wait_for(pumping, timeout=5)
    except TimeoutError:
        pumping.cancel()
    return _ended(proc.returncode, term, killed, tail)


async def _pump(proc: asyncio.subprocess.Process, tail: list[str], on_line: Any) -> None:
    """Hand each line the process prints to ``on_line``, keeping the last 20 in ``tail`` (for a crash's reason).

    Read in blocks, not by line: a line of any length (or none ending) is cut to ``LAB_JOB_LOG_LINE_MAX_BYTES``.
    """
    assert proc.stdout is not None
    clip = outputs.LineClipper(settings().job_log_line_max_bytes)
    while data := await proc.stdout.read(1 << 16):
        for line in clip.feed(data):
            tail.append(line)
            del tail[:-20]
            await on_line(line)
    for line in clip.rest():
        tail.append(line)
        await on_line(line)


async def _watch_tree(me: int, job: JobSpec, killed: list[str]) -> None:
    """Kill the process tree under ``me`` once it holds more memory or processes than the job may; why goes in ``killed``."""
    max_processes = settings().job_max_processes  # a fork bomb is killed, not waited out
    while True:
        await asyncio.sleep(MEMORY_POLL_S)
        tree = proctree.usage(me)  # files in the sandbox's /dev/shm and /tmp are memory too; threads count as tasks
        used = (tree.rss + tree.tmpfs) / (1 << 20)
        if used > job.memory_mb:
            files = f", incl. {tree.tmpfs / (1 << 20):.0f} MiB of files in /dev/shm and /tmp" if tree.tmpfs >= 1 << 20 else ""
            killed.append(f"oom: used {used:.0f} MiB > limit {job.memory_mb} MiB{files}")
        elif tree.tasks > max_processes:
            killed.append(f"pids: {tree.processes} processes with {tree.tasks} tasks (threads) > limit {max_processes}")
        else:
            continue
        proctree.kill_descendants(me)
        return


def _ended(returncode: int | None, term: asyncio.Event | None, killed: list[str], tail: list[str]) -> Outcome:
    """What came of the process: preempted, killed for a limit, crashed (with its last line), or succeeded."""
    if term is not None and term.is_set():
        return Outcome("preempted", "preempted: SIGTERM", returncode)
    if killed:
        return Outcome("failed", killed[0], returncode)
    if returncode != 0:
        last = next((line for line in reversed(tail) if line.strip()), "")
        return Outcome("failed", f"crashed: exit code {returncode}: {clean_text(last, 300)}", returncode)
    return Outcome("succeeded", "", 0)


class _JobLog:
    """The job's log: every line goes to a file in the runner's folder, to stdout and to the job's log subject.

    Bounded (:class:`services.runner.outputs.BoundedLog`): past its first ``LAB_JOB_LOG_KEEP_BYTES`` only the last
    as many are kept, and the experiment's lines are no longer shown live; the runner's own (``note``) still are.
    """

    def __init__(self, path: Path, bus: Bus, job: JobSpec) -> None:
        self.path = path
        self.store = outputs.BoundedLog(path, settings().job_log_keep_bytes)
        self._bus, self._job = bus, job
        self._subject = subjects.job_log(job.project, job.job_id)
        self._said_full = False

    async def __call__(self, line: str) -> None:
        metrics.runner_line(self._job.job_id)
        if self.store.write(line):
            await self._show(line)
        elif not self._said_full:
            self._said_full = True
            await self._show(f"[runner] the log passed {self.store.keep} bytes: further output is not shown live, "
                             "and only its end is kept")

    async def note(self, line: str) -> None:
        """One of the runner's own lines: kept, and shown even once the log is full."""
        self.store.write(line)
        await self._show(line)

    async def _show(self, line: str) -> None:
        print(line, flush=True)  # also to stdout: `kubectl logs`, `docker logs` and log collectors see it
        await self._bus.publish_unacked(self._subject, JobLogLine(job=self._job.job_id, line=line, t=time.time()).dump())

    def close(self) -> bytes:
        """Close the log; its bytes as kept (bounded)."""
        self.store.close()
        return self.path.read_bytes()


class _Ran(NamedTuple):
    """What the experiment's run left: how it ended, the split plot's failure (None: not plotted there), the machine it measured."""

    outcome: Outcome
    plot_failed: str | None
    measured: JobEnvironment | None
    wall: float
    sync: checkpoint.CheckpointSync | None
    cpu_s: float | None = None  # the experiment's CPU-seconds: None where this runner cannot see them


def _children_cpu_s() -> float:
    """User + system seconds of this process's children that have ended and been waited for, their own waited-for
    descendants included (the sandbox's pid 1 reaps the experiment's processes, and the runner reaps the sandbox)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _where(launch: Launch | None, cmd: list[str]) -> str:
    if launch is None:
        return "in the experiment container (no credential there)"
    return "in the sandbox" if launch.argv is not cmd else "UNCONFINED (no sandbox tool on this machine)"


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_final_info(raw: bytes) -> FinalInfo:
    """final_info.json as strict JSON (no NaN, no Infinity, no number that overflows to one) and as the schema says.

    Raises ValueError (a ValidationError is one) with the reason.
    """
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return FinalInfo.model_validate(data)


def _read_final_info(outcome: Outcome, out: Path) -> tuple[Outcome, FinalInfo | None]:
    """The experiment's final_info.json when it succeeded; one missing, too large or off-schema fails the run as invalid output."""
    if outcome.state != "succeeded":
        return outcome, None
    limit = settings().job_final_info_max_bytes
    try:
        return outcome, parse_final_info(split.read_regular(out / "final_info.json", limit))
    except (OSError, split.SplitError, ValueError) as e:
        if isinstance(e, split.SplitError):
            what = f"{e} (LAB_JOB_FINAL_INFO_MAX_BYTES)" if "over the limit" in str(e) else str(e)
        elif isinstance(e, OSError):
            what = "final_info.json missing"
        elif isinstance(e, ValidationError):
            first = e.errors()[0]
            what = f"final_info.json does not match the schema: {'.'.join(map(str, first['loc']))}: {first['msg']}"
        else:
            what = f"final_info.json is not valid JSON: {e}"
        return Outcome("failed", f"{INVALID_OUTPUT}: {clean_text(what, 400)}", 0), None


def _run_environment(final_info: FinalInfo | None, measured: JobEnvironment | None, code_sha256: str = "",
                     interpreter: str = "") -> JobEnvironment:
    """The machine the experiment ran on, with its provenance: the node, image and code hash are the runner's to say.

    ``interpreter``: the template's own environment's python when it ran the experiment ("": this process's).
    """
    device = str(final_info.model_extra.get("device", "cpu")) if final_info and final_info.model_extra else "cpu"
    envinfo = environment(device)
    if measured is not None:  # the experiment container's machine (its GPUs); the executor, node and image are ours to say
        envinfo = measured.model_copy(update={"executor": envinfo.executor, "node": envinfo.node, "image": envinfo.image})
    update = {"code_sha256": code_sha256} | ({"interpreter": interpreter} if interpreter else {})
    return envinfo.model_copy(update=update)


class Runner:
    """Runs one job; with ``shared`` (a volume the experiment container also mounts) the experiment runs there."""

    def __init__(self, job: JobSpec, workdir: Path, shared: Path | None = None, box: Path | None = None):
        self.job = job
        self.workdir = workdir  # the runner's own: its log, env.json, result.json
        # Where the sandbox's folders live: the runner's private tmpfs (services/runner/box.py), else workdir.
        self.box = box or workdir
        self.layout = split.Layout(shared) if shared is not None else None
        self._term = asyncio.Event()  # set on SIGTERM once the experiment started (_experiment)
        self.python: Path | None = None  # the template's own environment's python (it declares requirements), else the lab's
        self.metrics_url = ""  # where this runner serves its metrics ("": it does not; LAB_RUNNER_METRICS_PORT)

    @staticmethod
    def credential(nats: NatsAccess) -> tuple[str | None, str | None]:
        """(user, password) for the bus: the job's own user if it has one, else the shared runner credential.

        A job's own user (``job.<project>.<job>``, admitted by the auth callout) is never replaced; the
        shared credential mounted from a Secret (Kubernetes: ``LAB_NATS_USER_FILE``, ``LAB_NATS_PASSWORD_FILE``) or a
        file (Docker) wins over one carried in the job.
        """
        if job_of_user(nats.user):
            return nats.user, nats.password
        s = settings()
        return s.secret("nats_user") or nats.user, s.secret("nats_password") or nats.password

    async def publish_status(self, status: JobStatus) -> None:
        if self.job.status_key:  # the engineer believes only statuses signed with this job's key
            status = jobkeys.sign(self.job.status_key, self.job.project, status)
        env = Envelope(
            id=derive_id(self.job.job_id, f"status-{status.state}"),
            project=self.job.project,
            sender="runner",
            recipient="engineer",
            body=status,
        )
        await self.bus.publish_job(subjects.job_status(self.job.project, self.job.job_id), env)

    async def _checkpoints(self, artifacts: Artifacts, env: dict[str, str], on_line: Any) -> checkpoint.CheckpointSync:
        """Fetch the experiment's last checkpoint and tell the experiment where it is (``LAB_CHECKPOINT_DIR``)."""
        folder = self.layout.checkpoint if self.layout else self.box / "checkpoint"
        folder.mkdir(parents=True, exist_ok=True)  # bound writable into the sandbox, so it must exist
        got = await checkpoint.restore(artifacts, self.job, folder)
        if self.layout:
            split.open_tree(folder, writable=True)  # the experiment's uid overwrites what was restored
        if got:
            await on_line(f"[runner] restored a checkpoint ({got} bytes) from {checkpoint.object_name(self.job)}")
        env.update(Settings.environ(checkpoint_dir=folder))
        return checkpoint.CheckpointSync(artifacts, self.job, folder)

    async def run(self) -> int:
        if self.layout is None:
            return await self._run()
        try:
            self.layout.prepare()
        except OSError as e:
            print(f"runner: cannot prepare the shared volume {self.layout.root.parent}: {e.strerror or e}", file=sys.stderr)
            return EXIT_INFRA
        alive = asyncio.create_task(split.keep_alive(self.layout.alive))
        try:
            return await self._run()
        finally:
            alive.cancel()
            if not self.layout.stop.exists():  # whatever happened, the launcher must not wait for us
                self.layout.stop.write_text("the runner ended\n")

    async def _run(self) -> int:
        """Connect, fetch the code, run the experiment, and report what came of it: each a step below."""
        job = self.job
        if job.nats is None:
            print("runner: the job carries no bus access (nats); the executor must fill it in", file=sys.stderr)
            return EXIT_INFRA
        opened = await self._connect(job.nats)
        if opened is None:
            return EXIT_INFRA
        artifacts, bundle = opened
        code, out, figs = self._unpack(bundle)
        # Hashed as unpacked, before the experiment runs and may write into it: the code edits are in the bundle already.
        code_sha256 = provenance.tree_sha256(code)
        log = _JobLog(self.workdir / "log.txt", self.bus, job)
        if job.nodes == 1 or settings().node_rank == 0:
            await self.publish_status(JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="running"))
        ran = await self._experiment(artifacts, code, out, log)
        if job.nodes > 1:  # one node of a multi-node job (docs/gpu.md): only node 0 reports
            ran = await self._settle(ran, log)
            if settings().node_rank > 0:
                return await self._worker_done(artifacts, ran, log)
        if ran.outcome.state == "preempted":
            return await self._preempted(artifacts, ran, log)
        outcome, final_info = _read_final_info(ran.outcome, out)
        envinfo = _run_environment(final_info, ran.measured, code_sha256, self._interpreter())
        uploaded: list[str] = []
        if final_info is not None:
            uploaded, refused = await self._results(artifacts, code, out, figs, ran, log)
            if refused:  # over a cap: nothing of it was uploaded, and the run failed for it
                outcome, final_info = Outcome("failed", f"{INVALID_OUTPUT}: {refused}", 0), None
        if outcome.reason.startswith(INVALID_OUTPUT):
            await log.note(f"[runner] the run's output is refused: {outcome.reason}")
        return await self._report(artifacts, log, outcome, final_info, envinfo, uploaded, ran)

    @property
    def _prefix(self) -> str:
        return f"{self.job.project}/runs/{self.job.job_id}"

    async def _connect(self, nats: NatsAccess) -> tuple[Artifacts, bytes] | None:
        """Log in to the bus, open the object store and fetch the code bundle; None (said on stderr) when unreachable."""
        job = self.job
        try:
            user, password = self.credential(nats)
            config = BusConfig(url=nats.url, user=user, password=password, name=f"runner-{job.job_id}")
            self.bus = await asyncio.wait_for(Bus.connect(config), settings().runner_connect_timeout_s)
            if job_of_user(user):  # its own user: objects are committed by the auth service (bus.store.CommittedObjects)
                artifacts = await Artifacts.open_for_job(self.bus, files_subject(job.project, job.job_id), chunk_prefix(job.project, job.job_id))
            else:
                artifacts = await Artifacts.open(self.bus)
            return artifacts, await artifacts.get(job.bundle_object)
        except (TimeoutError, Exception) as e:
            print(f"runner: cannot reach the bus or the bundle: {e or type(e).__name__}", file=sys.stderr)
            return None

    def _unpack(self, bundle: bytes) -> tuple[Path, Path, Path]:
        """Unpack the code; (code, out, figures) folders, on the shared volume when the experiment runs apart."""
        if self.layout:
            code, out, figs = self.layout.code, self.layout.out, self.layout.figures
        else:
            code, out, figs = self.box / "code", self.box / "out", self.box / "figures"
        unbundle(bundle, code)
        if self.layout:
            split.open_tree(code)  # readable by the experiment container's uid, writable only by ours
        out.mkdir(parents=True, exist_ok=True)
        return code, out, figs

    async def _experiment(self, artifacts: Artifacts, code: Path, out: Path, log: _JobLog) -> _Ran:
        """Run the experiment (in this machine's sandbox, or in its own container) with its checkpoints, until it ends."""
        job = self.job
        cmd = command(job, code, out)
        extra_env = Settings.environ(checkpoint_every=settings().checkpoint_every)  # passed on to the experiment, if set
        sync = await self._checkpoints(artifacts, extra_env, log) if job.resumable else None
        writable = [out] + ([sync.folder] if sync else [])
        term = self._term = checkpoint.catch_sigterm(asyncio.get_running_loop())
        unmet = await self._template_env(code, log)
        if unmet:
            return _Ran(Outcome("failed", unmet), None, None, 0.0, sync)
        if self.python is not None:  # its env, read-only in the sandbox, runs the experiment and comes first on PATH
            cmd = envs.with_python(cmd, self.python)
            extra_env["PATH"] = f"{self.python.parent}:{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
        readonly = [code, *self._env_folder()]
        launch = None if self.layout else confine(cmd, job, self.workdir, readonly=readonly, writable=writable, extra_env=extra_env)
        await log(f"[runner] starting job {job.job_id} {_where(launch, cmd)}: {' '.join(cmd)}")
        started = time.monotonic()
        measuring = await self._measure(launch, started, log)
        # Only node 0 uploads the checkpoint (global rank 0 writes it there); the other nodes only restore it.
        syncing = asyncio.create_task(sync.run()) if sync and settings().node_rank == 0 else None
        plot_failed: str | None = None
        measured: JobEnvironment | None = None
        cpu_s: float | None = None
        try:
            if launch is None:
                assert self.layout is not None
                record = await split.await_experiment(self.layout, job, extra_env, log, term, PLOT_LIMIT_S, settings().term_grace_s,
                                                      usage=self.metrics_url != "")
                outcome, plot_failed = Outcome(record.state, record.reason, record.exit_code), record.plot_failed
                measured = record.environment
            else:
                cpu_before = _children_cpu_s()  # one job per runner, nothing else of it running: the delta is the experiment
                outcome = await supervise(launch, code, job, log, term)
                proctree.reap_orphans(os.getpid())  # the sandbox's pid 1, which holds the experiment's CPU time
                # Another node's processes are out of sight: a multi-node job's CPU time is not known whole.
                cpu_s = _children_cpu_s() - cpu_before if job.nodes == 1 else None
        except BaseException as e:  # cancelled or the runner broke: keep the log
            await _save_log(artifacts, f"{self._prefix}/log.txt", log, e)
            raise
        finally:
            if measuring is not None:
                measuring.cancel()
        wall = time.monotonic() - started
        if sync is not None and syncing is not None:
            syncing.cancel()
            await sync.sync()  # what the experiment saved on SIGTERM, or its last periodic checkpoint
            if sync.refused:
                await log.note(f"[runner] checkpoint not uploaded: {sync.refused}")
        return _Ran(outcome, plot_failed, measured, wall, sync, cpu_s)

    async def _measure(self, launch: Launch | None, started: float, log: _JobLog) -> asyncio.Task[None] | None:
        """With metrics served: the job's series from now on, its usage measured here (the sandbox) or by the launcher."""
        if not self.metrics_url:
            return None
        job = self.job
        metrics.runner_started(job.project, job.experiment_id, job.job_id, started)
        await log.note(f"[runner] metrics at {self.metrics_url}")
        measure: usage.Meter | Path
        if launch is None:  # the experiment's own container: its launcher samples, into the shared volume
            assert self.layout is not None
            measure = self.layout.usage
        else:
            measure = usage.Meter(gpus=job.gpu > 0)
        return asyncio.create_task(usage.publish(job.job_id, measure))

    def _interpreter(self) -> str:
        """The template's own environment's python, when it ran the experiment; "" when this process's did."""
        return f"{self.python} (the template's environment)" if self.python is not None else ""

    def _env_folder(self) -> list[Path]:
        return [self.python.parent.parent] if self.python is not None else []

    async def _template_env(self, code: Path, log: _JobLog) -> str:
        """The template's extra packages (:mod:`services.runner.envs`): "" when ready, else the one line the job fails with.

        Here (the local executor) its environment is built, once per requirements, outside the sandbox; on Docker and
        Kubernetes the job image (the runner's and the experiment container's) must hold them.
        """
        reqs = envs.requirements_of(code)
        if not reqs:
            return ""
        if self.layout is not None:
            unmet = envs.missing(reqs) or ""
        else:
            try:
                env, built = await asyncio.to_thread(envs.ensure, reqs, lab_home() / "envs")
                self.python = envs.python_of(env)
                await log.note(f"[runner] the template's environment ({', '.join(reqs)}): {env}" + (" (built now)" if built else ""))
                return ""
            except (envs.EnvError, OSError, subprocess.SubprocessError) as e:
                unmet = str(e) if isinstance(e, envs.EnvError) else f"cannot build the template's environment: {e}"
        if unmet:
            await log.note(f"[runner] {unmet}")
        return unmet

    async def _preempted(self, artifacts: Artifacts, ran: _Ran, log: _JobLog) -> int:
        """Save the log and exit for a retry: not the experiment's fault; Kubernetes retries the pod, which resumes."""
        saved = f"its checkpoint is in {checkpoint.object_name(self.job)}" if ran.sync and ran.sync.uploads else "no checkpoint was saved"
        await log.note(f"[runner] preempted after {ran.wall:.0f}s; {saved}; exiting for a retry")
        await artifacts.put(f"{self._prefix}/log.txt", log.close())
        await self.bus.close()
        return EXIT_INFRA

    async def _settle(self, ran: _Ran, log: _JobLog) -> _Ran:
        """Multi-node: an experiment that failed while this pod was not told to stop waits to be stopped.

        A peer's preemption or failure reaches this node first as a broken collective; the gang's
        restart (or its failure) then stops this pod with SIGTERM within moments. Only when no
        SIGTERM comes within ``LAB_GANG_SETTLE_S`` is the failure this node's own.
        """
        if ran.outcome.state != "failed":
            return ran
        wait_s = settings().gang_settle_s
        await log(f"[runner] the experiment failed on node {settings().node_rank}; waiting up to {wait_s:.0f}s in case the gang is stopping")
        try:
            await asyncio.wait_for(self._term.wait(), wait_s)
        except TimeoutError:
            return ran
        return ran._replace(outcome=Outcome("preempted", f"preempted: SIGTERM after {ran.outcome.reason}", ran.outcome.exit_code))

    async def _worker_done(self, artifacts: Artifacts, ran: _Ran, log: _JobLog) -> int:
        """A node other than 0 (worker mode): no status and no results, its log as log-node<R>.txt, the exit code its share earned."""
        rank = settings().node_rank
        state = ran.outcome.state
        await log(f"[runner] node {rank} done: {state}{': ' + ran.outcome.reason if ran.outcome.reason else ''}")
        data = log.close()
        try:
            await asyncio.wait_for(artifacts.put(f"{self._prefix}/log-node{rank}.txt", data), 10)
        except (TimeoutError, Exception) as e:
            print(f"runner: could not upload log-node{rank}.txt: {e or type(e).__name__}", file=sys.stderr)
        await self.bus.close()
        return EXIT_OK if state == "succeeded" else EXIT_INFRA if state == "preempted" else EXIT_EXPERIMENT_FAILED

    async def _results(self, artifacts: Artifacts, code: Path, out: Path, figs: Path, ran: _Ran, log: _JobLog) -> tuple[list[str], str]:
        """Plot the results (unless the experiment container did) in what is left of the wall time, and upload them.

        (names uploaded, why the outputs are refused: "" when they are not). Only regular files under safe
        names are taken, as bytes (:func:`services.runner.outputs.collect`); outputs over the job's caps are
        refused whole, and nothing of them is uploaded.
        """
        job = self.job
        remaining = max(10.0, min(PLOT_LIMIT_S, job.wall_time_s - ran.wall))
        plot_job = job.model_copy(update={"wall_time_s": remaining})
        figs.mkdir(parents=True, exist_ok=True)
        plot_failed = ran.plot_failed
        if plot_failed is None:  # in this process's sandbox; split, the experiment container ran it
            plot_cmd = [str(self.python or sys.executable), str(code / "plot.py"), "--run_dir", str(out), "--out_dir", str(figs)]
            plot_bins = [code, out, *self._env_folder()]
            plot = await supervise(confine(plot_cmd, plot_job, self.workdir, readonly=plot_bins, writable=[figs]), code, plot_job, log)
            plot_failed = "" if plot.state == "succeeded" else plot.reason
        if plot_failed:
            await log.note(f"[runner] plot.py failed: {clean_text(plot_failed, 500)}")
        got = outputs.collect([(out, ".json", "out"), (figs, ".png", "figures")], outputs.Caps.of(settings()))
        for note in got.notes:
            await log.note(f"[runner] {note}")
        if got.invalid:
            return [], got.invalid
        return [await artifacts.put(f"{self._prefix}/{name}", data) for name, data in got.files], ""

    async def _report(
        self, artifacts: Artifacts, log: _JobLog, outcome: Outcome, final_info: FinalInfo | None, envinfo: JobEnvironment,
        uploaded: list[str], ran: _Ran,
    ) -> int:
        """Upload the machine's description and the log, then publish the job's final status (and keep it in result.json).

        Its compute: the experiment's CPU-seconds as measured (None when it ran in its own container), and
        GPU-seconds as its wall seconds times every GPU it was given (on each of its nodes).
        """
        job = self.job
        kept = log.close()
        (self.workdir / "env.json").write_text(envinfo.model_dump_json(indent=2))
        uploaded.append(await artifacts.put(f"{self._prefix}/env.json", (self.workdir / "env.json").read_bytes()))
        uploaded.append(await artifacts.put(f"{self._prefix}/log.txt", kept))
        # The end of the log, which the engineer reads (never the whole log) when a run fails.
        uploaded.append(await artifacts.put(f"{self._prefix}/{LOG_TAIL_NAME}", log.store.last_bytes()))
        status = JobStatus(
            job_id=job.job_id,
            experiment_id=job.experiment_id,
            state="succeeded" if outcome.state == "succeeded" else "failed",
            reason=outcome.reason,
            exit_code=outcome.exit_code,
            final_info=final_info,
            environment=envinfo,
            artifacts=uploaded,
            wall_s=ran.wall,
            cpu_s=None if ran.cpu_s is None else round(ran.cpu_s, 3),
            gpu_s=round(ran.wall * job.gpu * job.nodes, 3),
        )
        (self.workdir / RESULT_FILE).write_text(dump_result(status))
        await self.publish_status(status)
        await self.bus.close()
        return EXIT_OK if status.state == "succeeded" else EXIT_EXPERIMENT_FAILED


def _job_json(s: Settings) -> str | None:
    """The job from ``LAB_JOB``, or from the 0600 file ``LAB_JOB_FILE`` names (keeps its credential out of /proc)."""
    if s.job is not None:
        return s.job.get_secret_value()
    if s.job_file is not None:
        try:
            return s.job_file.read_text()
        except OSError as e:
            print(f"runner: cannot read LAB_JOB_FILE {s.job_file} ({e.strerror})", file=sys.stderr)
            sys.exit(2)
    return None


async def _save_log(artifacts: Artifacts, name: str, log: _JobLog, why: BaseException) -> None:
    """Upload what the log holds so far; bounded, so a dying pod's grace period is not used up."""
    reason = "cancelled (SIGTERM)" if isinstance(why, asyncio.CancelledError) else f"{type(why).__name__}: {why}"
    log.store.write(f"[runner] stopped before the end: {reason}")
    print(f"[runner] stopped before the end: {reason}", flush=True)
    try:
        await asyncio.wait_for(artifacts.put(name, log.close()), 10)
    except (TimeoutError, Exception) as e:
        print(f"runner: could not upload log.txt: {e or type(e).__name__}", file=sys.stderr)


async def _run_until_stopped(runner: Runner) -> int:
    """Run the job; SIGTERM (a deleted pod, a stopped container) cancels it so the log still gets out."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await runner.run()
    except asyncio.CancelledError:
        return 128 + signal.SIGTERM


def main() -> None:
    try:
        s = settings()
    except ConfigError as e:
        print(f"runner: {e}", file=sys.stderr)
        sys.exit(2)
    raw = _job_json(s)
    if not raw:
        print("runner: neither LAB_JOB nor LAB_JOB_FILE is set (they hold the job as JSON)", file=sys.stderr)
        sys.exit(2)
    try:
        job = JobSpec.model_validate_json(raw)
    except ValidationError as e:
        print(f"runner: LAB_JOB is not a valid job: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}", file=sys.stderr)
        sys.exit(2)
    if s.job_dir is not None:
        workdir = s.job_dir
    elif s.scratch is not None:  # a container's writable scratch volume
        workdir = s.scratch / job.job_id
    else:
        workdir = Path(tempfile.mkdtemp(prefix=f"lab-{job.job_id}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(Settings.environ(job_dir=workdir))
    sandbox.become_subreaper()
    shared = s.shared_dir
    private = None
    if s.job_dir is not None and shared is None and sandbox.tool() is not None:  # the local sandbox (not a container's)
        try:
            private = box.enter(workdir, job.disk_mb or BOX_DEFAULT_MB)
        except (box.BoxError, OSError) as e:
            print(f"runner: no private filesystem for the job ({e}); the sandbox binds the job folder, whose path it can read",
                  file=sys.stderr)
    runner = Runner(job, workdir, shared, private)
    runner.metrics_url = metrics.serve_or_log(s.runner_metrics_port, "runner")
    sys.exit(asyncio.run(_run_until_stopped(runner)))


if __name__ == "__main__":
    main()
