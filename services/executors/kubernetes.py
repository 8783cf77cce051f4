"""Experiments as Kubernetes Jobs, one batch/v1 Job per JobSpec.

The official client is synchronous; every call runs in a worker thread so the
engineer's event loop never blocks on the API server. What a Job looks like is
decided in ``render.k8s_job``; this module only talks to the cluster and reads
back what became of the Job and its pods.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from services.executors.base import EXIT_EXPERIMENT_FAILED, EXIT_INFRA, ExecutorError, JobPhase, JobSpec
from services.executors.render import (
    CONTAINER,
    KubernetesSettings,
    PROJECT_LABEL,
    foreign_owner,
    job_name,
    k8s_job,
    label_value,
    settings,
)

T = TypeVar("T")

# Waiting reasons that never fix themselves, and those that may (for a while).
_FATAL_WAITING = {"InvalidImageName"}
_STUCK_WAITING = {"ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "CreateContainerError"}
_EXIT_MEANING = {
    EXIT_EXPERIMENT_FAILED: "the experiment failed (runner exit 3)",
    EXIT_INFRA: "the runner could not reach NATS (exit 4)",
}


def _api_client(s: KubernetesSettings) -> client.ApiClient:
    in_cluster = s.in_cluster if s.in_cluster is not None else bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        if in_cluster:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        return config.new_client_from_config(config_file=s.kubeconfig, context=s.context)
    except (ConfigException, OSError) as e:
        where = "in-cluster service account" if in_cluster else (s.kubeconfig or "~/.kube/config")
        raise ExecutorError(f"kubernetes: no usable configuration ({where}): {e}") from None


def _message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(self, **options: Any) -> None:
        self.settings: KubernetesSettings = settings(KubernetesSettings, options)
        self._api = _api_client(self.settings)
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._stuck_since: dict[str, float] = {}

    def capacity(self) -> int | None:
        if self.settings.kueue_queue:
            return None
        return self.settings.gpus or self.settings.max_jobs

    async def _call(self, verb: str, resource: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a client call in a thread; turn transport and RBAC failures into one readable line."""
        kwargs.setdefault("_request_timeout", self.settings.request_timeout_s)
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as e:
            ns = self.settings.namespace
            if e.status == 403:
                raise ExecutorError(
                    f"kubernetes: forbidden by RBAC: cannot {verb} {resource} in namespace {ns} "
                    f"(grant it to the engineer's ServiceAccount, see k8s/base/rbac.yaml): {_message(e)}"
                ) from None
            if e.status == 401:
                raise ExecutorError(f"kubernetes: unauthorized ({_message(e)}); check the kubeconfig credentials") from None
            if e.status in (404, 409):
                raise
            raise ExecutorError(f"kubernetes: {verb} {resource} in {ns} failed ({e.status}): {_message(e)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ExecutorError(
                f"kubernetes: no cluster reachable at {self._api.configuration.host}: {type(e).__name__}"
            ) from None

    async def submit(self, job: JobSpec) -> None:
        manifest = k8s_job(job, self.settings)
        try:
            await self._call("create", "jobs.batch", self._batch.create_namespaced_job, self.settings.namespace, manifest)
        except ApiException as e:
            if e.status != 409:
                raise ExecutorError(f"kubernetes: cannot create Job ({e.status}): {_message(e)}") from None
        else:
            return
        # Already there: a resubmit of this very job is adopted; anyone else's Job is an error.
        name = manifest["metadata"]["name"]
        try:
            existing = await self._call("get", "jobs.batch", self._batch.read_namespaced_job, name, self.settings.namespace)
        except ApiException as e:
            raise ExecutorError(f"kubernetes: Job {name} exists but cannot be read ({e.status}): {_message(e)}") from None
        reason = foreign_owner(existing.metadata.labels, job)
        if reason is not None:
            raise ExecutorError(f"kubernetes: {reason}")

    async def poll(self, job_id: str) -> JobPhase:
        name = job_name(job_id)
        try:
            job = await self._call("get", "jobs.batch", self._batch.read_namespaced_job, name, self.settings.namespace)
        except ApiException as e:
            if e.status == 404:
                return JobPhase(state="missing")
            raise ExecutorError(f"kubernetes: cannot read Job {name} ({e.status}): {_message(e)}") from None
        if _succeeded(job):
            self._stuck_since.pop(job_id, None)
            return JobPhase(state="succeeded")  # no pod listing on the common path
        pods = await self._pods(name)
        phase = _job_phase(job, pods)
        return phase if phase is not None else self._pod_phase(job_id, pods)

    async def _pods(self, name: str) -> list[Any]:
        selector = f"batch.kubernetes.io/job-name={name}"
        try:
            found = await self._call(
                "list", "pods", self._core.list_namespaced_pod, self.settings.namespace, label_selector=selector
            )
        except ApiException as e:
            raise ExecutorError(f"kubernetes: cannot list pods ({e.status}): {_message(e)}") from None
        # Filter again: the selector is a hint some API servers (and test emulators) ignore.
        mine = [p for p in found.items if _pod_job(p) == name]
        return sorted(mine, key=lambda p: (p.metadata.creation_timestamp is not None, p.metadata.creation_timestamp or 0))

    def _pod_phase(self, job_id: str, pods: list[Any]) -> JobPhase:
        """A live Job's state from its newest pod: why it waits, or that it runs."""
        if not pods:
            self._stuck_since.pop(job_id, None)
            return JobPhase(state="pending", reason="waiting for the job controller to create a pod")
        pod = pods[-1]
        status = pod.status
        for cond in (status.conditions if status else None) or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                return JobPhase(state="pending", reason=f"{cond.reason or 'Unschedulable'}: {cond.message or ''}".strip(": "))
        for cs in (status.container_statuses if status else None) or []:
            waiting = cs.state.waiting if cs.state else None
            if waiting is None or waiting.reason not in _FATAL_WAITING | _STUCK_WAITING:
                continue
            detail = f"{waiting.reason}: {waiting.message or ''}".strip(": ")
            if waiting.reason in _FATAL_WAITING:
                return JobPhase(state="failed", reason=detail)
            since = self._stuck_since.setdefault(job_id, time.monotonic())
            if time.monotonic() - since >= self.settings.pull_failure_grace_s:
                return JobPhase(state="failed", reason=f"{detail} (for over {self.settings.pull_failure_grace_s:.0f}s)")
            return JobPhase(state="pending", reason=detail)
        self._stuck_since.pop(job_id, None)
        if status and status.phase == "Running":
            return JobPhase(state="running")
        if status and status.phase == "Failed":
            return JobPhase(state="pending", reason=f"retrying after a failed pod: {_pod_failure(pod)}")
        return JobPhase(state="pending", reason=(status.phase if status and status.phase else "Pending"))

    async def cancel(self, job_id: str) -> None:
        await self._delete(job_name(job_id))
        self._stuck_since.pop(job_id, None)

    async def _delete(self, name: str) -> None:
        try:
            # Background: the Job goes at once and the garbage collector removes its pods.
            await self._call(
                "delete", "jobs.batch", self._batch.delete_namespaced_job, name, self.settings.namespace,
                propagation_policy="Background",
            )
        except ApiException as e:
            if e.status != 404:
                raise ExecutorError(f"kubernetes: cannot delete Job {name} ({e.status}): {_message(e)}") from None

    async def cleanup(self, project: str) -> None:
        value = label_value(project)
        found = await self._call(
            "list", "jobs.batch", self._batch.list_namespaced_job, self.settings.namespace,
            label_selector=f"{PROJECT_LABEL}={value}",
        )
        for job in found.items:
            if (job.metadata.labels or {}).get(PROJECT_LABEL) == value:
                await self._delete(job.metadata.name)

    async def close(self) -> None:
        await asyncio.to_thread(self._api.close)


def _pod_job(pod: Any) -> str | None:
    found = pod.metadata.labels or {}
    return found.get("batch.kubernetes.io/job-name") or found.get("job-name")


def _terminated(pod: Any) -> Any:
    for cs in (pod.status.container_statuses if pod.status else None) or []:
        if cs.name == CONTAINER and cs.state and cs.state.terminated:
            return cs.state.terminated
    return None


def _pod_failure(pod: Any) -> str:
    """Why a pod ended, in the runner's terms where its exit code says it."""
    if pod.status and pod.status.reason == "Evicted":
        return f"evicted: {pod.status.message or ''}".strip(": ")
    term = _terminated(pod)
    if term is None:
        return (pod.status.reason if pod.status else None) or "pod failed"
    if term.reason == "OOMKilled":
        return f"out of memory (OOMKilled, exit {term.exit_code})"
    return _EXIT_MEANING.get(term.exit_code, f"runner exited {term.exit_code}" + (f" ({term.reason})" if term.reason else ""))


def _conditions(job: Any) -> dict[str, Any]:
    return {c.type: c for c in (job.status.conditions if job.status else None) or [] if c.status == "True"}


def _succeeded(job: Any) -> bool:
    conditions = _conditions(job)
    return "Complete" in conditions or "SuccessCriteriaMet" in conditions or bool(job.status and (job.status.succeeded or 0) > 0)


def _job_phase(job: Any, pods: list[Any]) -> JobPhase | None:
    """A Job's state from its own conditions; None while the pods must tell."""
    if _succeeded(job):
        return JobPhase(state="succeeded")
    conditions = _conditions(job)
    failed = conditions.get("Failed") or conditions.get("FailureTarget")
    if failed is not None:
        reason = failed.reason or "Failed"
        last_failed = [p for p in pods if p.status and p.status.phase == "Failed"]
        detail = _pod_failure(last_failed[-1]) if last_failed else (failed.message or "")
        return JobPhase(state="failed", reason=f"{reason}: {detail}".strip(": "))
    if job.spec and job.spec.suspend:
        return JobPhase(state="pending", reason="suspended: waiting for admission (Kueue)")
    return None
