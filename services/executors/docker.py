"""Experiments as Docker containers on one host, two containers and a volume per JobSpec.

A job is a runner container (the NATS credential, the job's status key) and an
experiment container (another uid, no credential, no network unless the
template asks, its own pid namespace, the GPUs), sharing one tmpfs volume and
nothing else (``services/runner/split.py``). Everything is named after the job, so a
second submit finds the first one instead of starting the experiment twice;
the runner container's state is the job's. Containers are kept after they exit
(poll reads the runner's exit code and both containers' OOM flags: the kernel's
kill of either is "killed: out of memory (limit N MiB)") and removed, with the volume,
by ``cancel`` and ``cleanup``. Docker has no activeDeadlineSeconds, so ``poll``
kills a job that outlives its wall time plus a margin: the backstop for a
runner that hangs.

GPUs are handed out by device ID from the lab's pool (``gpu_devices``, or
``0..gpus-1``), so two 1-GPU jobs never share GPU 0. Which container holds
which GPUs is read back from the containers' own labels at each submit, so the
pool survives a restart of the engineer. An engine without the NVIDIA Container
Toolkit refuses such a container at start: the job's objects are removed and the
refusal is one line saying so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest

from bus.schema import JobPhase, JobSpec
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_INFRA
from services.executors.base import ExecutorError
from services.executors.render import (
    GPU_DEVICES_LABEL,
    JOB_ID_ANNOTATION,
    JOB_SECRET_KEY,
    PROJECT_LABEL,
    WALL_TIME_LABEL,
    DockerSettings,
    container_name,
    docker_container,
    docker_experiment_container,
    docker_job_dir,
    docker_job_file,
    docker_volume,
    experiment_name,
    foreign_owner,
    label_value,
    settings,
    volume_name,
)

T = TypeVar("T")
_EXIT_MEANING = {
    EXIT_EXPERIMENT_FAILED: "the experiment failed (runner exit 3)",
    EXIT_INFRA: "the runner could not reach NATS (exit 4)",
}
NO_GPU_DRIVER = "could not select device driver"  # the engine's refusal of a GPU device request it has no driver for
NO_GPU_RUNTIME = "this Docker engine has no GPU runtime: install the NVIDIA Container Toolkit"
_HOLDING = ("created", "running", "restarting", "paused")  # states in which a container keeps its GPUs


def _started_at(value: str) -> dt.datetime | None:
    """Docker's StartedAt has nanoseconds; Python parses microseconds."""
    if not value or value.startswith("0001-"):
        return None
    head, _, frac = value.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def _adopt(container: Any, job: JobSpec) -> None:
    """Refuse a container of this job's name that another job (or nothing of the lab's) owns."""
    reason = foreign_owner(container.labels, job)
    if reason is not None:
        raise ExecutorError(f"docker: {reason}")


def _make_container(c: docker.DockerClient, job: JobSpec, kwargs: dict[str, Any]) -> Any:
    """One container; an existing one of that name (a submit cut short) is adopted if it is this job's."""
    if "device_requests" in kwargs:
        kwargs["device_requests"] = [
            DeviceRequest(driver=d["Driver"], count=d.get("Count", 0), device_ids=d.get("DeviceIDs"),
                          capabilities=d["Capabilities"])
            for d in kwargs["device_requests"]
        ]
    image = kwargs.pop("image")
    try:
        return c.containers.create(image, **kwargs)
    except ImageNotFound:
        try:
            c.images.pull(image)
        except DockerException as e:  # no such repository, or (a real engine with no registry in reach) no registry at all
            explanation = getattr(e, "explanation", None) or e
            raise ExecutorError(f"docker: image {image} not found and not pullable: {explanation}") from None
        return c.containers.create(image, **kwargs)
    except APIError as e:
        if e.status_code != 409:
            raise
        container = c.containers.get(kwargs["name"])  # created concurrently by another submit
        _adopt(container, job)
        return container


def image_ran(c: docker.DockerClient, container: Any, ref: str) -> str:
    """The image a created container runs, for env.json: its repository digest when the engine has one, else the
    configured reference with the image id; the reference alone when the engine tells neither."""
    image_id = str((getattr(container, "attrs", None) or {}).get("Image") or "")
    try:
        digests = c.images.get(image_id or ref).attrs.get("RepoDigests") or []
    except DockerException:
        digests = []
    if digests:
        return str(digests[0])
    return f"{ref} (image id {image_id})" if image_id else ref


def engine_host(c: docker.DockerClient) -> str:
    """The Docker engine's host name (the node a job runs on); "" when the engine does not say."""
    try:
        return str(c.info().get("Name") or "")
    except DockerException:
        return ""


class DockerExecutor:
    name = "docker"

    def __init__(self, **options: Any) -> None:
        self.settings: DockerSettings = settings(DockerSettings, options)
        self._client: docker.DockerClient | None = None
        self._gpu_lock = threading.Lock()  # one pick-and-create at a time, or two jobs get the same GPU
        self._host: str | None = None  # the engine's host name, asked once (env.json's node)

    def capacity(self) -> int | None:
        return len(self.settings.gpu_pool()) or self.settings.max_jobs

    def _free_gpus(self, c: docker.DockerClient) -> list[str]:
        """The pool minus the GPUs that live containers hold (from their labels)."""
        held: set[str] = set()
        for container in c.containers.list(all=True, filters={"label": GPU_DEVICES_LABEL}):
            if container.status in _HOLDING:
                held.update(d for d in (container.labels or {}).get(GPU_DEVICES_LABEL, "").split(",") if d)
        return [d for d in self.settings.gpu_pool() if d not in held]

    def _docker(self) -> docker.DockerClient:
        # Connecting asks the engine for its API version, so it happens on first use, in a thread.
        if self._client is None:
            s = self.settings
            try:
                if s.base_url:
                    self._client = docker.DockerClient(base_url=s.base_url, version=s.api_version, timeout=int(s.timeout_s))
                else:
                    self._client = docker.from_env(version=s.api_version, timeout=int(s.timeout_s))
            except DockerException as e:
                raise ExecutorError(f"docker: no Docker engine reachable at {s.base_url or 'DOCKER_HOST/local socket'}: {e}") from None
        return self._client

    async def _call(self, what: str, fn: Callable[[docker.DockerClient], T]) -> T:
        def run() -> T:
            return fn(self._docker())

        try:
            return await asyncio.to_thread(run)
        except NotFound:
            raise
        except APIError as e:
            raise ExecutorError(f"docker: cannot {what}: {e.explanation or e}") from None
        except DockerException as e:
            raise ExecutorError(f"docker: cannot {what}: {e}") from None

    async def submit(self, job: JobSpec) -> None:
        s = self.settings
        if job.network and not s.open_network:
            raise ExecutorError(
                f"docker: job {job.job_id} asks for the network (network: true) but executor option "
                "open_network is not set; refusing to run it on the NATS-only network"
            )
        name = docker_container(job, s)["name"]
        try:
            await self._call(f"start container {name}", lambda c: self._create(c, job, name))
        except NotFound as e:
            raise ExecutorError(f"docker: image {self.settings.image} not found and not pullable: {e.explanation or e}") from None

    def _create(self, c: docker.DockerClient, job: JobSpec, name: str) -> None:
        """Start the job's two containers, making them first unless a submit already did (then they must be this job's)."""
        try:
            runner = c.containers.get(name)
            _adopt(runner, job)
            experiment = c.containers.get(experiment_name(job.job_id))
        except NotFound:
            with self._gpu_lock:
                runner, experiment = self._make(c, job)
        for container in (experiment, runner):  # the launcher first: it waits for the runner's "ready"
            if container.status == "created":
                try:
                    container.start()
                except NotFound as e:  # a real engine looks the network up at start, not at create
                    self._network_gone(c, job, e)
                    raise
                except APIError as e:
                    if NO_GPU_DRIVER not in str(e.explanation or e):
                        raise
                    _remove(c, job.job_id, self.settings)  # a resubmit would only meet the same refusal
                    raise ExecutorError(f"docker: {NO_GPU_RUNTIME} (job {job.job_id} asks for {job.gpu} GPU(s))") from None

    def _network_gone(self, c: docker.DockerClient, job: JobSpec, e: NotFound) -> None:
        """A network job whose open network the engine does not know: removed (a resubmit must never start it offline) and refused."""
        if job.network and not isinstance(e, ImageNotFound):
            _remove(c, job.job_id, self.settings)
            raise ExecutorError(f"docker: cannot connect job {job.job_id} to network {self.settings.open_network}: "
                                f"{e.explanation or e}") from None

    def _make(self, c: docker.DockerClient, job: JobSpec) -> tuple[Any, Any]:
        """The volume, the job file and both containers, with GPUs picked from those free in the pool."""
        s = self.settings
        devices = None
        if job.gpu and s.gpu_pool():
            free = self._free_gpus(c)
            if len(free) < job.gpu:
                raise ExecutorError(f"docker: job {job.job_id} needs {job.gpu} GPU(s), {len(free)} of {s.gpu_pool()} free")
            devices = free[: job.gpu]
        c.volumes.create(**docker_volume(job, s))
        write_job_file(job, s)
        try:
            experiment = _make_container(c, job, docker_experiment_container(job, s, devices))
        except NotFound as e:
            self._network_gone(c, job, e)
            _remove(c, job.job_id, s)  # a job that cannot start leaves nothing behind (its volume, its description)
            raise
        except ExecutorError:
            _remove(c, job.job_id, s)
            raise
        if self._host is None:
            self._host = engine_host(c)
        # After the experiment container: the engine has resolved (or pulled) the image the job runs by now.
        return _make_container(c, job, docker_container(job, s, devices, image_ran(c, experiment, s.image), self._host)), experiment

    async def _container(self, job_id: str) -> Any | None:
        name = container_name(job_id)
        try:
            return await self._call(f"inspect container {name}", lambda c: c.containers.get(name))
        except NotFound:
            return None

    async def poll(self, job_id: str) -> JobPhase:
        container = await self._container(job_id)
        if container is None:
            return JobPhase(state="missing")
        state = container.attrs.get("State", {})
        status = state.get("Status", container.status)
        if status == "created":
            return JobPhase(state="pending", reason="created, not started")
        if status in ("running", "restarting", "paused"):
            wall = float(container.labels.get(WALL_TIME_LABEL, 0)) or None
            started = _started_at(state.get("StartedAt", ""))
            if wall is not None and started is not None:
                age = (dt.datetime.now(dt.UTC) - started).total_seconds()
                if age > wall + self.settings.startup_margin_s:
                    await self._call(f"kill container {container.name}", lambda c: _kill(c, job_id))
                    return JobPhase(state="failed", reason=f"DeadlineExceeded: ran {age:.0f}s, wall time {wall:.0f}s")
            return JobPhase(state="running")
        # The runner is done: an experiment container still running has nobody to report to.
        await self._call(f"stop the experiment of {job_id}", lambda c: _kill(c, job_id, experiment_only=True))
        code = int(state.get("ExitCode", -1))
        oom = await self._out_of_memory(job_id, container)
        if oom:
            return JobPhase(state="failed", reason=oom)
        if code == 0:
            return JobPhase(state="succeeded")
        detail = state.get("Error") or ""
        return JobPhase(state="failed", reason=_EXIT_MEANING.get(code, f"runner exited {code}") + (f": {detail}" if detail else ""))

    async def _out_of_memory(self, job_id: str, runner: Any) -> str | None:
        """The kernel's OOM kill of either container (Docker's OOMKilled), with the limit it hit; None if neither.

        The experiment's limit is the job's memory (its container holds the launcher's overhead above it).
        """
        name = experiment_name(job_id)
        try:
            experiment = await self._call(f"inspect container {name}", lambda c: c.containers.get(name))
        except NotFound:
            experiment = None
        for container, overhead, whose in ((experiment, self.settings.launcher_overhead_mb, ""), (runner, 0, ", the runner's")):
            if container is not None and container.attrs.get("State", {}).get("OOMKilled"):
                limit = int(container.attrs.get("HostConfig", {}).get("Memory") or 0) // (1 << 20) - overhead
                return f"killed: out of memory (limit {limit} MiB{whose})"
        return None

    async def cancel(self, job_id: str) -> None:
        await self._call(f"remove the containers of job {job_id}", lambda c: _remove(c, job_id, self.settings))

    async def cleanup(self, project: str) -> None:
        value = label_value(project)

        def remove_all(c: docker.DockerClient) -> None:
            for container in c.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={value}"}):
                labels = container.labels or {}
                if labels.get(PROJECT_LABEL) == value and JOB_ID_ANNOTATION in labels:
                    try:
                        container.remove(force=True)
                    except NotFound:
                        pass
            for volume in c.volumes.list(filters={"label": f"{PROJECT_LABEL}={value}"}):
                found = volume.attrs.get("Labels") or {}
                if found.get(PROJECT_LABEL) == value and JOB_ID_ANNOTATION in found:
                    try:
                        volume.remove(force=True)
                    except NotFound:
                        pass
                    _remove_job_dir(found[JOB_ID_ANNOTATION], self.settings)  # the job's description goes with its volume

        await self._call(f"remove containers of project {project}", remove_all)

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None


def _kill(c: docker.DockerClient, job_id: str, experiment_only: bool = False) -> None:
    """Kill the job's containers that still run (the experiment's first); gone ones are fine."""
    names = [experiment_name(job_id)] + ([] if experiment_only else [container_name(job_id)])
    for name in names:
        try:
            container = c.containers.get(name)
            if container.status in ("running", "restarting", "paused"):
                container.kill()
        except NotFound:
            pass
        except APIError as e:
            if e.status_code != 409:  # 409: it stopped in between
                raise


def write_job_file(job: JobSpec, s: DockerSettings) -> None:
    """The job's description as a 0400 file of the runner's uid, in a folder of its own (0500), for a read-only bind.

    An engineer running as root (`lab up`) hands the file to the runner's uid, which alone may read it; one
    running as that uid (compose) keeps it. Any other uid cannot give a file away, so the file is made
    readable to all and its privacy rests on the folders above it ($LAB_HOME is the lab user's alone).
    """
    folder = Path(docker_job_dir(job.job_id, s))
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o711)  # traverse only: no listing of the jobs
    folder.mkdir(exist_ok=True, mode=0o700)
    folder.chmod(0o700)  # a retried submit: writable again for its owner
    path = folder / JOB_SECRET_KEY
    tmp = folder / f".{JOB_SECRET_KEY}.tmp"
    tmp.unlink(missing_ok=True)
    uid, gid = (int(x) for x in s.user.split(":"))
    own = os.geteuid() in (0, uid)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400 if own else 0o444)
    with os.fdopen(fd, "w") as f:
        f.write(docker_job_file(job, s))
    if os.geteuid() == 0:
        os.chown(tmp, uid, gid)
        os.chown(folder, uid, gid)
    tmp.replace(path)
    folder.chmod(0o500 if own else 0o555)


def _remove(c: docker.DockerClient, job_id: str, s: DockerSettings) -> None:
    """Remove the job's containers, its volume and its description's folder; whatever is already gone is fine."""
    for name in (experiment_name(job_id), container_name(job_id)):
        try:
            c.containers.get(name).remove(force=True)
        except NotFound:
            pass
    try:
        c.volumes.get(volume_name(job_id)).remove(force=True)
    except NotFound:
        pass
    _remove_job_dir(job_id, s)


def _remove_job_dir(job_id: str, s: DockerSettings) -> None:
    folder = Path(docker_job_dir(job_id, s))
    if folder.is_dir():
        folder.chmod(0o700)  # it was made read-only for the bind; its owner (or root) may remove it
        shutil.rmtree(folder, ignore_errors=True)
