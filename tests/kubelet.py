"""A test kubelet and job controller for kmock's KubernetesEmulator.

The emulator stores objects but runs nothing. This helper plays the parts of a
cluster the executor depends on, through the same HTTP API a real kubelet uses:
it creates pods for Jobs, schedules them against a fixed number of GPUs (a pod
that needs more than are free stays Pending with an Unschedulable condition),
runs each pod's container command as a local process with the pod's env, and
writes pod and Job status back: exit codes, podFailurePolicy, backoffLimit,
activeDeadlineSeconds, evictions, garbage collection of orphaned pods.

It is only as faithful as the executor needs: one container, one completion,
no parallelism within a Job.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client

REPO = Path(__file__).resolve().parent.parent
JOB_NAME = "batch.kubernetes.io/job-name"
MERGE = "application/merge-patch+json"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw(resp: Any) -> Any:
    return json.loads(resp.data)


class Kubelet:
    """Runs Jobs found in ``namespace`` until stopped; use as ``async with``."""

    def __init__(self, host: str, namespace: str = "lab", gpus: int = 0, bad_images: set[str] | None = None,
                 tick_s: float = 0.05, reject_pods: str | None = None) -> None:
        cfg = client.Configuration()
        cfg.host = host
        self._api = client.ApiClient(cfg)
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self.namespace = namespace
        self.gpus = gpus
        self.bad_images = bad_images or set()
        # Admission refusing every pod (a full quota, Pod Security): the job controller records a
        # FailedCreate event on the Job with this message instead of creating the pod.
        self.reject_pods = reject_pods
        self.tick_s = tick_s
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._gpu_use: dict[str, int] = {}
        self._counter = 0
        self._task: asyncio.Task[None] | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="kubelet-")
        self.started: dict[str, float] = {}  # pod name -> monotonic start time of its process
        self.ended: dict[str, float] = {}
        self.evict_requests: set[str] = set()  # job names whose running pod should be evicted

    @property
    def free_gpus(self) -> int:
        return self.gpus - sum(self._gpu_use.values())

    async def __aenter__(self) -> "Kubelet":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for name in list(self._procs):
            self._kill(name)
        for proc in self._procs.values():
            await proc.wait()
        await asyncio.to_thread(self._api.close)
        self._scratch.cleanup()

    async def _run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.tick_s)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return asyncio.to_thread(fn, *args, **kwargs)

    async def tick(self) -> None:
        jobs = _raw(await self._call(self._batch.list_namespaced_job, self.namespace, _preload_content=False))["items"]
        pods = _raw(await self._call(self._core.list_namespaced_pod, self.namespace, _preload_content=False))["items"]
        names = {j["metadata"]["name"] for j in jobs}
        for pod in pods:  # the garbage collector: a deleted Job takes its pods along
            if pod["metadata"].get("labels", {}).get(JOB_NAME) not in names:
                self._kill(pod["metadata"]["name"])
                await self._call(self._core.delete_namespaced_pod, pod["metadata"]["name"], self.namespace)
        for job in jobs:
            mine = [p for p in pods if p["metadata"].get("labels", {}).get(JOB_NAME) == job["metadata"]["name"]]
            await self._sync_job(job, mine)

    # ------------------------------------------------------------------ job controller

    async def _sync_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        status = job.get("status") or {}
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in status.get("conditions", [])):
            return
        spec = job["spec"]
        if spec.get("suspend"):
            return
        name = job["metadata"]["name"]
        if not status.get("startTime"):
            status = {**status, "startTime": now()}
            await self._patch_job(name, {"startTime": status["startTime"]})
        started = dt.datetime.strptime(status["startTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
        deadline = spec.get("activeDeadlineSeconds")
        active = [p for p in pods if p["status"].get("phase") in ("Pending", "Running")]
        if deadline is not None and time.time() - started >= deadline:
            for pod in active:
                await self._finish_pod(pod, exit_code=137, reason="DeadlineExceeded")
            await self._fail_job(name, "DeadlineExceeded", "Job was active longer than specified deadline")
            return
        for pod in active:
            await self._sync_pod(job, pod)
        if not active and not any(p["status"].get("phase") in ("Pending", "Running") for p in pods):
            if not any(p["status"].get("phase") == "Succeeded" for p in pods):
                await self._create_pod(job)

    async def _create_pod(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        self._counter += 1
        if self.reject_pods is not None:
            await self._failed_create(job, f"{name}-{self._counter:05d}")
            return
        template = job["spec"]["template"]
        labels = {**template.get("metadata", {}).get("labels", {}), JOB_NAME: name, "job-name": name}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{self._counter:05d}",
                "namespace": self.namespace,
                "labels": labels,
                "creationTimestamp": now(),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": name, "controller": True}],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        await self._call(self._core.create_namespaced_pod, self.namespace, pod)
        await self._patch_job(name, {"active": 1})

    async def _failed_create(self, job: dict[str, Any], pod_name: str) -> None:
        name = job["metadata"]["name"]
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{self._counter:05d}", "namespace": self.namespace},
            "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": name, "namespace": self.namespace},
            "reason": "FailedCreate", "type": "Warning", "count": 1,
            "message": f'Error creating: pods "{pod_name}" is forbidden: {self.reject_pods}',
            "firstTimestamp": now(), "lastTimestamp": now(), "source": {"component": "job-controller"},
        }
        await self._call(self._core.create_namespaced_event, self.namespace, event)

    async def _patch_job(self, name: str, status: dict[str, Any]) -> None:
        await self._call(self._batch.patch_namespaced_job_status, name, self.namespace, {"status": status}, _content_type=MERGE)

    async def _fail_job(self, name: str, reason: str, message: str) -> None:
        cond = {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()}
        await self._patch_job(name, {"conditions": [cond], "active": 0})

    async def _job_pod_ended(self, job: dict[str, Any], pod: dict[str, Any], exit_code: int, reason: str) -> None:
        """podFailurePolicy and backoffLimit, as the real job controller applies them."""
        name = job["metadata"]["name"]
        status = job.get("status") or {}
        if exit_code == 0:
            conds = [{"type": t, "status": "True", "lastTransitionTime": now()} for t in ("SuccessCriteriaMet", "Complete")]
            await self._patch_job(name, {"succeeded": 1, "active": 0, "conditions": conds, "completionTime": now()})
            return
        disrupted = reason == "Evicted"
        for i, rule in enumerate(job["spec"].get("podFailurePolicy", {}).get("rules", [])):
            on_codes = rule.get("onExitCodes")
            on_conds = rule.get("onPodConditions")
            matched = False
            if on_codes and not disrupted:
                inside = exit_code in on_codes["values"]
                matched = inside if on_codes["operator"] == "In" else not inside
            if on_conds and disrupted:
                matched = any(c["type"] == "DisruptionTarget" for c in on_conds)
            if not matched:
                continue
            if rule["action"] == "FailJob":
                msg = f"Container runner for pod {self.namespace}/{pod['metadata']['name']} failed with exit code {exit_code} matching FailJob rule at index {i}"
                await self._fail_job(name, "PodFailurePolicy", msg)
                return
            if rule["action"] == "Ignore":
                await self._patch_job(name, {"active": 0})
                return
            break  # Count: fall through to the backoff limit
        failed = int(status.get("failed") or 0) + 1
        await self._patch_job(name, {"failed": failed, "active": 0})
        if failed > int(job["spec"].get("backoffLimit", 6)):
            await self._fail_job(name, "BackoffLimitExceeded", "Job has reached the specified backoff limit")

    # ------------------------------------------------------------------ kubelet

    async def _sync_pod(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if name in self._procs:
            proc = self._procs[name]
            if job["metadata"]["name"] in self.evict_requests:
                self.evict_requests.discard(job["metadata"]["name"])
                await self._finish_pod(pod, exit_code=137, reason="Evicted")
                await self._job_pod_ended(job, pod, 137, "Evicted")
            elif proc.returncode is not None:
                await self._finish_pod(pod, exit_code=proc.returncode, reason="Completed" if proc.returncode == 0 else "Error")
                await self._job_pod_ended(job, pod, proc.returncode, "Error")
            return
        container = pod["spec"]["containers"][0]
        if container["image"] in self.bad_images:
            waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{container["image"]}"'}
            await self._patch_pod(name, {"phase": "Pending", "containerStatuses": [self._cstatus(container, {"waiting": waiting})]})
            return
        need = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        if need > self.free_gpus:
            cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": f"0/1 nodes are available: 1 Insufficient nvidia.com/gpu (needs {need}, {self.free_gpus} free)."}
            await self._patch_pod(name, {"phase": "Pending", "conditions": [cond]})
            return
        env = await self._env(container, pod)
        if env is None:
            return
        self._gpu_use[name] = need
        cmd = list(container["command"]) + list(container.get("args", []))
        if cmd[0] in ("python", "python3"):
            cmd[0] = sys.executable
        self._procs[name] = await asyncio.create_subprocess_exec(
            *cmd, env=env, cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started[name] = time.monotonic()
        running = {"running": {"startedAt": now()}}
        cond = {"type": "PodScheduled", "status": "True"}
        await self._patch_pod(name, {"phase": "Running", "conditions": [cond], "containerStatuses": [self._cstatus(container, running)]})

    async def _env(self, container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str] | None:
        """The container's environment with secrets resolved and mount paths mapped to local folders."""
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
        if "LAB_LIT_SOURCES" in os.environ:  # the test suite's pin to local literature reaches the pods too (tests/conftest.py)
            env["LAB_LIT_SOURCES"] = os.environ["LAB_LIT_SOURCES"]
        for var in container.get("env", []):
            if "value" in var:
                value = var["value"]
                if value in mounts and not os.access(value, os.W_OK):
                    local = Path(self._scratch.name) / pod["metadata"]["name"] / value.strip("/").replace("/", "_")
                    local.mkdir(parents=True, exist_ok=True)
                    value = str(local)
                env[var["name"]] = value
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            try:
                secret = _raw(await self._call(self._core.read_namespaced_secret, ref["name"], self.namespace, _preload_content=False))
            except client.ApiException:
                waiting = {"reason": "CreateContainerConfigError", "message": f'secret "{ref["name"]}" not found'}
                await self._patch_pod(pod["metadata"]["name"], {"phase": "Pending", "containerStatuses": [self._cstatus(container, {"waiting": waiting})]})
                return None
            if ref["key"] in (secret.get("stringData") or {}):
                env[var["name"]] = secret["stringData"][ref["key"]]
            else:
                env[var["name"]] = base64.b64decode((secret.get("data") or {}).get(ref["key"], "")).decode()
        return env

    def _cstatus(self, container: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        return {"name": container["name"], "image": container["image"], "imageID": "", "ready": "running" in state,
                "restartCount": 0, "state": state}

    async def _patch_pod(self, name: str, status: dict[str, Any]) -> None:
        await self._call(self._core.patch_namespaced_pod_status, name, self.namespace, {"status": status}, _content_type=MERGE)

    async def _finish_pod(self, pod: dict[str, Any], exit_code: int, reason: str) -> None:
        name = pod["metadata"]["name"]
        self._kill(name)
        if name in self._procs:
            await self._procs.pop(name).wait()
        self._gpu_use.pop(name, None)
        self.ended[name] = time.monotonic()
        container = pod["spec"]["containers"][0]
        term = {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": now()}}
        status: dict[str, Any] = {"phase": "Succeeded" if exit_code == 0 else "Failed",
                                  "containerStatuses": [self._cstatus(container, term)]}
        if reason == "Evicted":
            status |= {"reason": "Evicted", "message": "The node was low on resource: memory.",
                       "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}]}
        await self._patch_pod(name, status)

    def _kill(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._gpu_use.pop(name, None)
