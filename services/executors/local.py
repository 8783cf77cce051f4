"""Jobs as local processes: the laptop executor.

Each job runner starts in its own session (so it survives the engineer that
started it, and a restarted engineer finds it by its pid file) with its job
directory as scratch space. Submitting is idempotent: the job directory is
created atomically, and a second submit of the same id finds it.

Cancelling kills only what this executor started: the runner by the handle it
kept, or after a restart by the pid it recorded outside the experiment's reach
(the job directory is not in the sandbox) and only once /proc confirms that
pid is still this job's runner. Killing the runner kills the experiment: the
sandbox dies with its parent. No file under ``work/`` is ever read to decide
what to kill.

Job folders are 0700 and the lab's: the sandbox reaches its own folders only
through the binds the runner gives it (:mod:`services.runner.jail`). When the
runner is gone, :meth:`LocalExecutor.poll` (or :meth:`cancel`) keeps the
runner's own files (``log.txt``, ``env.json``, ``result.json``, moved up into
the job folder) and removes ``work/``: whatever the experiment left there
(code, outputs, a file with a setuid bit) does not outlive its job on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from bus.schema import JobPhase, JobSpec
from bus.schema.formats import RESULT_FILE, FormatError, read_result
from bus.settings import Settings, env_name
from bus.settings import settings as lab_settings
from services.common.config import write_secret
from services.common.process import alive
from services.executors.base import ExecutorError

KEPT = ("log.txt", "env.json", RESULT_FILE)  # the runner's own files in work/, kept in the job folder when work/ goes


def sweep(d: Path) -> None:
    """Move the runner's own files from ``d/work`` up into ``d``, then remove ``work/`` and all the experiment left in it."""
    work = d / "work"
    for name in KEPT:
        f = work / name
        if f.is_file() and not f.is_symlink():
            os.replace(f, d / name)
    shutil.rmtree(work, ignore_errors=True)


def recorded_runner(d: Path) -> int | None:
    """The runner's pid from job folder ``d``'s pid file, only if /proc says that process is this job's runner.

    The runner is ``python -m services.runner`` started with the job folder as its working directory;
    a pid that now names anything else (reused, or a tampered record) is not touched.
    """
    try:
        pid = int((d / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except (OSError, ValueError):
        return None
    if not {b"services.runner", b"services.runner.runner"} & set(cmdline) or cwd != d.resolve():
        return None  # the pid was reused by another process, or the record was tampered with
    return pid


def stop_runners(jobs_dir: Path) -> list[int]:
    """End every job runner recorded under ``jobs_dir`` with its whole process tree; the runners' pids.

    What the lab that started them calls as it stops (and the next start, for a lab that was SIGKILLed):
    nothing a lab started outlives it. The runner is a child subreaper, so while it lives every process
    of its job (a ``setsid`` grandchild included) is in the tree under it: that tree is killed first, then
    the runner's own session. The job folder keeps the runner's files; ``work/`` goes (:func:`sweep`).
    """
    from services.runner.proctree import kill_descendants

    stopped = []
    for d in sorted(jobs_dir.iterdir()) if jobs_dir.is_dir() else []:
        pid = recorded_runner(d)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGSTOP)  # it forks no more while its tree is taken down
        except ProcessLookupError:
            continue
        kill_descendants(pid)
        try:
            os.killpg(pid, signal.SIGKILL)  # the runner leads its own session: pgid == pid
        except (ProcessLookupError, PermissionError):
            pass
        stopped.append(pid)
        sweep(d)
    return stopped


class LocalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capacity: int | None = None  # default: one job per CPU core
    jobs_dir: str | None = None


class LocalExecutor:
    name = "local"

    def __init__(self, **options: object):
        settings = LocalSettings.model_validate(options)
        self._capacity = settings.capacity or max(1, os.cpu_count() or 1)
        from services.common.config import lab_home

        self.jobs_dir = Path(settings.jobs_dir) if settings.jobs_dir else lab_home() / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def capacity(self) -> int | None:
        return self._capacity

    def _dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    async def submit(self, job: JobSpec) -> None:
        d = self._dir(job.job_id)
        try:
            d.mkdir(mode=0o700)  # the lab's alone (the sandbox reaches its binds through the jail's gates)
        except FileExistsError:
            self._adopt(job, d)
            return  # already submitted: never run a job twice
        d.chmod(0o700)  # whatever the umask
        (d / "work").mkdir(mode=0o700)
        (d / "job.json").write_text(json.dumps({"project": job.project, "experiment_id": job.experiment_id}))
        # The runner gets the job's own credential, never the engineer's, and in a 0600 file outside the
        # sandbox rather than in its environment (readable in /proc by every process of this user).
        inherited = {k: v for k, v in os.environ.items()
                     if not k.startswith(("LAB_NATS_", "LAB_RUNNER_", "LAB_JOB_SECRET"))
                     and k not in (env_name("job"), env_name("job_file"), env_name("job_image"))}  # no container image here
        spec = write_secret(d / "job.spec.json", job.model_dump_json())
        env = {**inherited, **Settings.environ(job_file=spec, job_dir=d / "work", executor_kind="local")}
        # The runner serves its metrics only when the lab says so (0: a free port each; the job's log says which).
        env.update(Settings.environ(runner_metrics_port=lab_settings().runner_metrics_port))
        if ca := lab_settings().nats_ca_file:  # a NATS that speaks TLS: the runner trusts the lab's CA (public), never a client key
            env.update(Settings.environ(nats_ca_file=ca))
        with open(d / "runner.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.runner"],
                env=env,
                cwd=d,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._procs[job.job_id] = proc
        (d / "pid").write_text(str(proc.pid))

    @staticmethod
    def _adopt(job: JobSpec, d: Path) -> None:
        """A second submit adopts the job only if it was recorded for the same project and experiment."""
        meta = d / "job.json"
        try:
            recorded = json.loads(meta.read_text())
        except FileNotFoundError:
            return  # the first submit is between mkdir and writing job.json
        except (OSError, ValueError) as e:
            raise ExecutorError(f"local: job directory {d} exists but its job.json is unreadable ({e})") from None
        mine = {"project": job.project, "experiment_id": job.experiment_id}
        theirs = {k: recorded.get(k) for k in mine}
        if theirs != mine:
            raise ExecutorError(
                f"local: job {job.job_id} already exists for project {theirs['project']!r}, experiment "
                f"{theirs['experiment_id']!r}, not {job.project!r}/{job.experiment_id!r}; refusing to adopt it"
            )

    async def poll(self, job_id: str) -> JobPhase:
        d = self._dir(job_id)
        if not d.is_dir():
            return JobPhase(state="missing")
        proc = self._procs.get(job_id)
        if proc is not None and proc.poll() is None:
            return JobPhase(state="running")
        pid_file = d / "pid"
        if proc is None and pid_file.is_file() and alive(int(pid_file.read_text())):
            return JobPhase(state="running")
        if (d / "work").exists() and (pid_file.is_file() or (d / "work" / RESULT_FILE).is_file()):
            sweep(d)  # the runner is gone: nothing of the experiment's stays on the host
        result = d / RESULT_FILE
        if result.is_file():
            try:
                outcome = read_result(result.read_text())
            except FormatError as e:  # the runner's own file: not one means the runner broke
                return JobPhase(state="failed", reason=str(e))
            if outcome.state == "succeeded":
                return JobPhase(state="succeeded")
            return JobPhase(state="failed", reason=outcome.reason)
        if not pid_file.is_file():
            return JobPhase(state="pending")
        code = proc.returncode if proc is not None else None
        tail = (d / "runner.log").read_text(errors="replace").strip().splitlines()[-1:] if (d / "runner.log").is_file() else []
        return JobPhase(state="failed", reason=f"runner exited ({code}) without a result: {tail[0] if tail else 'no output'}")

    async def cancel(self, job_id: str) -> None:
        proc = self._procs.pop(job_id, None)
        pid = proc.pid if proc is not None and proc.poll() is None else self._recorded_runner(job_id)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)  # the runner leads its own session: pgid == pid
            except (ProcessLookupError, PermissionError):
                pass
        if proc is not None:
            proc.wait()
        d = self._dir(job_id)
        if pid is not None or proc is not None or (d / "work").exists():
            # The runner is gone now: killed here, or it ended while no process of this executor watched it (the
            # engineer restarted in between, so nothing polled it): either way nothing of the experiment's stays.
            sweep(d)

    def _recorded_runner(self, job_id: str) -> int | None:
        return recorded_runner(self._dir(job_id))

    async def cleanup(self, project: str) -> None:
        for d in self.jobs_dir.iterdir() if self.jobs_dir.is_dir() else []:
            meta = d / "job.json"
            if meta.is_file() and json.loads(meta.read_text()).get("project") == project:
                await self.cancel(d.name)

    async def close(self) -> None:
        for proc in self._procs.values():
            proc.poll()
