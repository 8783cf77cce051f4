"""`python -m services.jobrunner`: runs one experiment under limits the experiment cannot touch.

The runner is the experiment's parent: it owns the wall-time clock and the
memory watch, kills the whole process group when either is exceeded, and is
the only one that reports the outcome. The experiment gets a scratch copy of
its template, no network unless the template asks (``unshare -n`` where the
host allows it), and no way to extend its own time or relaunch itself: a
relaunched child is still in the group and dies with it.

Exit codes (Kubernetes' podFailurePolicy reads them): 0 ok, 3 the experiment
failed (do not retry), 4 the bus or object store was unreachable (retry).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agents.templates import unbundle
from bus import subjects
from bus.client import Bus, BusConfig
from bus.messages import Envelope, FinalInfo, JobEnvironment, JobStatus, derive_id
from bus.store import Artifacts
from services import checkpoint
from services.executors.base import EXIT_EXPERIMENT_FAILED, EXIT_INFRA, EXIT_OK, JobSpec

PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "matplotlib")
MEMORY_POLL_S = 0.25
PLOT_LIMIT_S = 120.0
CONNECT_TIMEOUT_S = float(os.environ.get("LAB_RUNNER_CONNECT_TIMEOUT_S", "30"))


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
    except Exception:
        pass
    # Seeds make CPU runs reproducible; GPU kernels (cuBLAS, cuDNN, atomics) are not, which a reader should know.
    notes = ["GPU kernels are not deterministic: reruns of a seed on a GPU may differ slightly"] if device == "cuda" else []
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
        executor=os.environ.get("LAB_EXECUTOR_KIND", "local"),
    )


def _flag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def command(job: JobSpec, code: Path, out: Path) -> list[str]:
    """The experiment's argv: one process, or ``torchrun`` with one process per GPU when a job asks for several."""
    if job.gpu > 1:
        torchrun = Path(sys.executable).with_name("torchrun")
        head = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
        cmd = [*head, "--standalone", f"--nproc_per_node={job.gpu}", str(code / "experiment.py")]
    else:
        cmd = [sys.executable, str(code / "experiment.py")]
    cmd += ["--out_dir", str(out), "--seeds", ",".join(map(str, job.seeds))]
    for k, v in sorted(job.overrides.items()):
        cmd += [f"--{k}", _flag(v)]
    return cmd


def isolate(cmd: list[str], job: JobSpec) -> list[str]:
    """No network for the experiment (``unshare -n``) where the host allows it.

    torchrun's processes meet on 127.0.0.1, which a new network namespace starts
    with down: a multi-process job brings its loopback up, or keeps the network
    when it cannot.
    """
    if job.network or not _can_unshare():
        return cmd
    if job.gpu > 1:
        if not shutil.which("ip"):
            return cmd
        return ["unshare", "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
    return ["unshare", "-n", "--", *cmd]


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the group, from /proc."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:
                continue
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    return total / (1 << 20)


class Outcome:
    def __init__(self, state: str, reason: str = "", exit_code: int | None = None):
        self.state, self.reason, self.exit_code = state, reason, exit_code


async def supervise(
    cmd: list[str], cwd: Path, job: JobSpec, on_line: Any, env: dict[str, str], term: asyncio.Event | None = None
) -> Outcome:
    """Run ``cmd`` as its own process group under the job's wall time and memory limits.

    When ``term`` is set (the runner got SIGTERM) the group gets SIGTERM and a grace period.
    """
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=env
    )
    pgid = proc.pid
    # Whoever cancels the job (the executor) kills this group too, even if the runner is gone.
    (Path(env.get("LAB_JOB_DIR", cwd)) / "child.pgid").write_text(str(pgid))
    tail: list[str] = []
    killed: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            del tail[:-20]
            await on_line(line)

    async def watch_memory() -> None:
        while True:
            await asyncio.sleep(MEMORY_POLL_S)
            used = group_rss_mb(pgid)
            if used > job.memory_mb:
                killed.append(f"oom: used {used:.0f} MiB > limit {job.memory_mb} MiB")
                _kill_group(pgid)
                return

    pumping = asyncio.create_task(pump())
    memory = asyncio.create_task(watch_memory())
    forwarding = asyncio.create_task(checkpoint.forward_term(pgid, term, checkpoint.GRACE_S, on_line)) if term else None
    try:
        await asyncio.wait_for(proc.wait(), timeout=job.wall_time_s)
    except asyncio.TimeoutError:
        killed.append(f"timeout: exceeded the wall-time limit of {job.wall_time_s:.0f}s")
        _kill_group(pgid)
        await proc.wait()
    finally:
        memory.cancel()
        if forwarding is not None:
            forwarding.cancel()
        _kill_group(pgid)  # nothing the experiment started outlives it
    try:
        await asyncio.wait_for(pumping, timeout=5)
    except asyncio.TimeoutError:
        pumping.cancel()
    if term is not None and term.is_set():
        return Outcome("preempted", "preempted: SIGTERM", proc.returncode)
    if killed:
        return Outcome("failed", killed[0], proc.returncode)
    if proc.returncode != 0:
        last = next((l for l in reversed(tail) if l.strip()), "")
        return Outcome("failed", f"crashed: exit code {proc.returncode}: {last[:300]}", proc.returncode)
    return Outcome("succeeded", "", 0)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Runner:
    def __init__(self, job: JobSpec, workdir: Path):
        self.job = job
        self.workdir = workdir

    async def publish_status(self, status: JobStatus) -> None:
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
        folder = self.workdir / "checkpoint"
        got = await checkpoint.restore(artifacts, self.job, folder)
        if got:
            await on_line(f"[runner] restored a checkpoint ({got} bytes) from {checkpoint.object_name(self.job)}")
        env[checkpoint.CHECKPOINT_ENV] = str(folder)
        return checkpoint.CheckpointSync(artifacts, self.job, folder)

    async def run(self) -> int:
        job = self.job
        try:
            # A credential mounted from a Secret (Kubernetes) wins over one carried in the job.
            user = os.environ.get("LAB_NATS_USER") or job.nats.user
            password = os.environ.get("LAB_NATS_PASSWORD") or job.nats.password
            config = BusConfig(url=job.nats.url, user=user, password=password, name=f"runner-{job.job_id}")
            self.bus = await asyncio.wait_for(Bus.connect(config), CONNECT_TIMEOUT_S)
            artifacts = await Artifacts.open(self.bus)
            bundle = await artifacts.get(job.bundle_object)
        except (Exception, asyncio.TimeoutError) as e:
            print(f"runner: cannot reach the bus or the bundle: {e or type(e).__name__}", file=sys.stderr)
            return EXIT_INFRA
        code, out, figs = self.workdir / "code", self.workdir / "out", self.workdir / "figures"
        unbundle(bundle, code)
        out.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "log.txt"
        log_file = open(log_path, "a")
        log_subject = subjects.job_log(job.project, job.job_id)

        async def on_line(line: str) -> None:
            log_file.write(line + "\n")
            log_file.flush()
            await self.bus.nc.publish(log_subject, json.dumps({"job": job.job_id, "line": line, "t": time.time()}).encode())

        await self.publish_status(JobStatus(job_id=job.job_id, experiment_id=job.experiment_id, state="running"))
        cmd = isolate(command(job, code, out), job)
        env = {k: v for k, v in os.environ.items() if k not in ("LAB_JOB", "LAB_NATS_USER", "LAB_NATS_PASSWORD")}
        env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(max(1, int(job.cpu))), "MPLBACKEND": "Agg", "HOME": str(self.workdir)})
        sync = await self._checkpoints(artifacts, env, on_line) if job.resumable else None
        term = checkpoint.catch_sigterm(asyncio.get_running_loop())
        await on_line(f"[runner] starting job {job.job_id}: {' '.join(cmd)}")
        started = time.monotonic()
        syncing = asyncio.create_task(sync.run()) if sync else None
        outcome = await supervise(cmd, code, job, on_line, env, term)
        wall = time.monotonic() - started
        if sync is not None and syncing is not None:
            syncing.cancel()
            await sync.sync()  # what the experiment saved on SIGTERM, or its last periodic checkpoint
        if outcome.state == "preempted":
            saved = f"its checkpoint is in {checkpoint.object_name(job)}" if sync and sync.uploads else "no checkpoint was saved"
            await on_line(f"[runner] preempted after {wall:.0f}s; {saved}; exiting for a retry")
            log_file.close()
            await artifacts.put(f"{job.project}/runs/{job.job_id}/log.txt", log_path.read_bytes())
            await self.bus.close()
            return EXIT_INFRA  # not the experiment's fault: Kubernetes retries the pod, which resumes
        final_info = None
        if outcome.state == "succeeded":
            try:
                final_info = FinalInfo.model_validate_json((out / "final_info.json").read_text())
            except (OSError, ValidationError) as e:
                outcome = Outcome("failed", f"invalid_output: final_info.json {'missing' if isinstance(e, OSError) else 'does not match the schema'}", 0)
        device = str(final_info.model_extra.get("device", "cpu")) if final_info and final_info.model_extra else "cpu"
        envinfo = environment(device)
        uploaded: list[str] = []
        prefix = f"{job.project}/runs/{job.job_id}"
        if final_info is not None:
            remaining = max(10.0, min(PLOT_LIMIT_S, job.wall_time_s - wall))
            plot_job = job.model_copy(update={"wall_time_s": remaining})
            plot = await supervise([sys.executable, str(code / "plot.py"), "--run_dir", str(out), "--out_dir", str(figs)], code, plot_job, on_line, env)
            if plot.state != "succeeded":
                await on_line(f"[runner] plot.py failed: {plot.reason}")
            files = sorted(out.glob("*.json")) + (sorted(figs.glob("*.png")) if figs.exists() else [])
            for f in files:
                uploaded.append(await artifacts.put(f"{prefix}/{f.name}", f.read_bytes()))
        log_file.close()
        (self.workdir / "env.json").write_text(envinfo.model_dump_json(indent=2))
        uploaded.append(await artifacts.put(f"{prefix}/env.json", (self.workdir / "env.json").read_bytes()))
        uploaded.append(await artifacts.put(f"{prefix}/log.txt", log_path.read_bytes()))
        status = JobStatus(
            job_id=job.job_id,
            experiment_id=job.experiment_id,
            state="succeeded" if outcome.state == "succeeded" else "failed",
            reason=outcome.reason,
            exit_code=outcome.exit_code,
            final_info=final_info,
            environment=envinfo,
            artifacts=uploaded,
            wall_s=wall,
        )
        (self.workdir / "result.json").write_text(status.model_dump_json())
        await self.publish_status(status)
        await self.bus.close()
        return EXIT_OK if status.state == "succeeded" else EXIT_EXPERIMENT_FAILED


def main() -> None:
    raw = os.environ.get("LAB_JOB")
    if not raw:
        print("runner: LAB_JOB is not set (it holds the job as JSON)", file=sys.stderr)
        sys.exit(2)
    try:
        job = JobSpec.model_validate_json(raw)
    except ValidationError as e:
        print(f"runner: LAB_JOB is not a valid job: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}", file=sys.stderr)
        sys.exit(2)
    if os.environ.get("LAB_JOB_DIR"):
        workdir = Path(os.environ["LAB_JOB_DIR"])
    elif os.environ.get("LAB_SCRATCH"):  # a container's writable scratch volume
        workdir = Path(os.environ["LAB_SCRATCH"]) / job.job_id
    else:
        workdir = Path(tempfile.mkdtemp(prefix=f"lab-{job.job_id}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["LAB_JOB_DIR"] = str(workdir)
    sys.exit(asyncio.run(Runner(job, workdir).run()))


if __name__ == "__main__":
    main()
