"""Experiments as Kubernetes Jobs, one batch/v1 Job per JobSpec.

The official client is synchronous; every call runs in a worker thread so the
engineer's event loop never blocks on the API server. What a Job looks like is
decided in ``render.k8s_job``; this module only talks to the cluster and reads
back what became of the Job and its pods.

A shared cluster says no in several ways that mean different things, so they
are told apart: RBAC (a misconfiguration: fail now, name the missing grant),
a full ResourceQuota (wait and retry: other work will finish), Pod Security or
a LimitRange rejecting the pods (never fixes itself: fail with the reason), an
overloaded or flaky API server (429/5xx/timeouts: retry with backoff and
jitter). A create that timed out may still have happened, so before creating
again the executor looks for the Job and adopts it if it is this job's.

Status comes from one list-and-watch of the lab's Jobs and one of their pods
per executor (``k8s_watch.Watcher``), so ``poll`` costs no API call on the
common path, however many jobs are in flight; a Job the cache does not hold
yet (just created) or no longer (gone) is confirmed with one GET.

A multi-node job (``nodes > 1``) is a JobSet instead (``render.k8s_jobset``): its
status is read from the JobSet's conditions (one GET per poll: such jobs are
few), its pods from the same pod watch; the executor remembers which jobs are
JobSets, and a job it does not know as one is looked for as a JobSet only
when no Job of its name exists (an engineer restarted mid-run adopts it).

Each Job comes with a Secret of the same name holding the JobSpec (its status
key) for the runner container to mount: made before the Job (so the pod never
waits for it), owned by the Job once it exists (so the cluster's garbage
collector removes it with the Job), and deleted with the Job on cancel and
cleanup.

When the engineer speaks TLS to NATS (``LAB_NATS_CA_FILE``), the Jobs' runners
need that CA too: before each submit the executor makes sure a ConfigMap in the
Jobs' namespace (option ``nats_ca_configmap``, default ``lab-nats-ca``) holds
the CA file as it is now, creating it or updating it (a rotated CA reaches the
next job); every Job mounts it into its runner container alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from bus.retry import RetryPolicy
from bus.schema import JobPhase, JobSpec
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_INFRA
from bus.settings import settings as lab_settings
from services.executors.base import ExecutorError
from services.executors.k8s_watch import Watcher
from services.executors.render import (
    CONTAINER,
    JOB_ID_ANNOTATION,
    JOBSET_API,
    JOBSET_GROUP,
    JOBSET_NAME_LABEL,
    JOBSET_PLURAL,
    JOBSET_VERSION,
    PROJECT_LABEL,
    KubernetesSettings,
    foreign_owner,
    job_name,
    jobset_name,
    k8s_ca_configmap,
    k8s_job,
    k8s_job_secret,
    k8s_jobset,
    label_value,
    settings,
)

log = structlog.get_logger()
T = TypeVar("T")

# Waiting reasons that never fix themselves, and those that may (for a while).
_FATAL_WAITING = {"InvalidImageName"}
_STUCK_WAITING = {"ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "CreateContainerError"}
_EXIT_MEANING = {
    EXIT_EXPERIMENT_FAILED: "the experiment failed (runner exit 3)",
    EXIT_INFRA: "the runner could not reach NATS (exit 4)",
}
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
# Every object the executor makes carries these labels (render.labels); the LISTs select on them.
_SELECTOR = "app.kubernetes.io/component=job-runner,app.kubernetes.io/managed-by=kenkyu-lab-engineer"
_JOB_NAME = "batch.kubernetes.io/job-name"


class TransientApiError(ExecutorError):
    """The API server could not answer now (429, 5xx, a timeout, a dropped connection): try again."""


class QuotaExceededError(TransientApiError):
    """A ResourceQuota of the namespace is full; it frees up as other work finishes."""


class RejectedError(ExecutorError):
    """Admission refused the object for good (RBAC, Pod Security, a LimitRange): retrying cannot help."""


def _api_client(s: KubernetesSettings) -> client.ApiClient:
    in_cluster = s.in_cluster if s.in_cluster is not None else bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        if in_cluster:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        api: client.ApiClient = config.new_client_from_config(config_file=s.kubeconfig, context=s.context)
        return api
    except (ConfigException, OSError) as e:
        where = "in-cluster service account" if in_cluster else (s.kubeconfig or "~/.kube/config")
        raise ExecutorError(f"kubernetes: no usable configuration ({where}): {e}") from None


# Where the manifests grant the engineer a resource that k8s/base/jobs/rbac.yaml does not.
_GRANTS = {"configmaps": "k8s/components/nats-tls/rbac.yaml (TLS labs keep the Jobs' CA ConfigMap)"}


def _message(e: ApiException) -> str:
    if e.body is None:
        return str(e.reason)
    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)


def admission_kind(message: str) -> str | None:
    """Which admission control a rejection message comes from, by the API server's own wording."""
    if "exceeded quota" in message:
        return "quota"
    if "violates PodSecurity" in message:
        return "pod-security"
    if "LimitRange" in message or "usage per Container" in message or "usage per Pod" in message:
        return "limit-range"
    return None


def _rejection(message: str, what: str, ns: str) -> ExecutorError | None:
    """The error for a quota / Pod Security / LimitRange rejection, or None for anything else."""
    kind = admission_kind(message)
    if kind == "quota":
        return QuotaExceededError(f"kubernetes: {what} rejected by a ResourceQuota in namespace {ns} (full for now): {message}")
    if kind == "pod-security":
        return RejectedError(f"kubernetes: {what} rejected by Pod Security admission in namespace {ns}: {message}")
    if kind == "limit-range":
        return RejectedError(f"kubernetes: {what} rejected by a LimitRange in namespace {ns}: {message}")
    return None


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(self, **options: Any) -> None:
        self.settings: KubernetesSettings = settings(KubernetesSettings, options)
        self._api = _api_client(self.settings)
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)
        self._gangs: set[str] = set()  # job ids running as JobSets (multi-node)
        self._stuck_since: dict[str, float] = {}
        self._unscheduled_since: dict[str, float] = {}
        self._watchers: tuple[Watcher, Watcher] | None = None
        self._deleted: set[str] = set()  # Jobs this executor deleted: missing now, whatever the cache says
        self._events: tuple[float, dict[str, list[Any]]] = (-1e9, {})

    def capacity(self) -> int | None:
        if self.settings.kueue_queue:
            return None
        return self.settings.gpus or self.settings.max_jobs

    def _retrying(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(
            attempts=s.api_retries + 1, budget_s=None, base_wait_s=0.2, max_wait_s=s.api_retry_max_wait_s, jitter=0.5, event="k8s_retry"
        )

    async def _once(self, verb: str, resource: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One client call in a thread; every failure becomes one readable line of the right class."""
        kwargs.setdefault("_request_timeout", self.settings.request_timeout_s)
        ns = self.settings.namespace
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as e:
            message = _message(e)
            if e.status in (404, 409):
                raise
            if e.status in (403, 422):
                rejected = _rejection(message, f"{verb} {resource}", ns)
                if rejected is not None:
                    raise rejected from None
            if e.status == 403:
                raise RejectedError(
                    f"kubernetes: forbidden by RBAC: cannot {verb} {resource} in namespace {ns} "
                    f"(grant it to the engineer's ServiceAccount, see {_GRANTS.get(resource, 'k8s/base/jobs/rbac.yaml')}): {message}"
                ) from None
            if e.status == 401:
                raise ExecutorError(f"kubernetes: unauthorized ({message}); check the kubeconfig credentials") from None
            if e.status in _TRANSIENT_STATUS:
                raise TransientApiError(f"kubernetes: {verb} {resource} in {ns}: the API server answered {e.status}: {message}") from None
            raise ExecutorError(f"kubernetes: {verb} {resource} in {ns} failed ({e.status}): {message}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise TransientApiError(
                f"kubernetes: no cluster reachable at {self._api.configuration.host}: {type(e).__name__}"
            ) from None

    async def _call(self, verb: str, resource: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``_once`` retried on transient failures; only for calls that are safe to repeat."""
        return await self._retrying().run(lambda: self._once(verb, resource, fn, *args, **kwargs), (TransientApiError,))

    async def _read_job(self, name: str) -> Any | None:
        try:
            return await self._call("get", "jobs.batch", self._batch.read_namespaced_job, name, self.settings.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise ExecutorError(f"kubernetes: cannot read Job {name} ({e.status}): {_message(e)}") from None

    async def _put_secret(self, job: JobSpec) -> None:
        """The job's Secret. One of that name exists already after a resubmit: it is left as it is (the
        engineer may not read Secrets, so it cannot compare); the Job's own ownership check follows."""
        body = k8s_job_secret(job, self.settings)
        name, ns = body["metadata"]["name"], self.settings.namespace
        try:
            await self._call("create", "secrets", self._core.create_namespaced_secret, ns, body)
        except ApiException as e:
            if e.status != 409:
                raise ExecutorError(f"kubernetes: cannot create Secret {name} ({e.status}): {_message(e)}") from None

    async def _keep_ca(self) -> None:
        """When the lab speaks TLS, the Jobs' CA ConfigMap holds the engineer's own CA file as it is now.

        Read back before each submit (one GET): a CA rotated since, or a ConfigMap deleted by hand, is
        put right before the Job that needs it. One of that name the executor did not make (the old
        by-hand recipe) is taken over: the Jobs mount it by that name, and they need the lab's CA.
        """
        own = lab_settings().nats_ca_file
        if not own:
            return
        body = k8s_ca_configmap(self.settings, _ca_pem(own))
        name, ns, key = body["metadata"]["name"], self.settings.namespace, self.settings.nats_ca_key
        try:
            found = await self._call("get", "configmaps", self._core.read_namespaced_config_map, name, ns)
        except ApiException as e:
            if e.status != 404:
                raise ExecutorError(f"kubernetes: cannot read ConfigMap {name} ({e.status}): {_message(e)}") from None
            found = None
        if found is None:
            try:
                await self._call("create", "configmaps", self._core.create_namespaced_config_map, ns, body)
                log.info("nats_ca_configmap_created", configmap=name, namespace=ns, ca_file=str(own))
                return
            except ApiException as e:
                if e.status != 409:
                    raise ExecutorError(f"kubernetes: cannot create ConfigMap {name} ({e.status}): {_message(e)}") from None
        elif (found.data or {}).get(key) == body["data"][key] and body["metadata"]["labels"].items() <= _labels_of(found).items():
            return
        try:
            await self._call("patch", "configmaps", self._core.patch_namespaced_config_map, name, ns,
                             {"metadata": {"labels": body["metadata"]["labels"]}, "data": body["data"]},
                             _content_type="application/merge-patch+json")
        except ApiException as e:
            raise ExecutorError(f"kubernetes: cannot update ConfigMap {name} ({e.status}): {_message(e)}") from None
        log.info("nats_ca_configmap_updated", configmap=name, namespace=ns, ca_file=str(own))

    async def _own_secret(self, name: str, job_uid: str | None, owner: dict[str, str] | None = None) -> None:
        """Make the Job (or JobSet) the Secret's owner, so it goes when that does (ttlSecondsAfterFinished); best effort."""
        if not job_uid:
            return
        ref = {**(owner or {"apiVersion": "batch/v1", "kind": "Job", "name": name}), "uid": job_uid}
        try:
            await self._once("patch", "secrets", self._core.patch_namespaced_secret, name, self.settings.namespace,
                             {"metadata": {"ownerReferences": [ref]}}, _content_type="application/merge-patch+json")
        except (ApiException, ExecutorError):
            pass  # cancel and cleanup delete it anyway

    async def _read_jobset(self, name: str) -> dict[str, Any] | None:
        try:
            found = await self._call("get", "jobsets.jobset.x-k8s.io", self._custom.get_namespaced_custom_object,
                                     JOBSET_GROUP, JOBSET_VERSION, self.settings.namespace, JOBSET_PLURAL, name)
            return found if isinstance(found, dict) else None
        except ApiException as e:
            if e.status == 404:
                return None
            raise ExecutorError(f"kubernetes: cannot read JobSet {name} ({e.status}): {_message(e)}") from None

    async def _submit_gang(self, job: JobSpec) -> None:
        """A multi-node job's JobSet (and its Secret); an existing one of this job is adopted, as for a Job."""
        manifest = k8s_jobset(job, self.settings)
        name = manifest["metadata"]["name"]
        self._gangs.add(job.job_id)
        await self._put_secret(job)
        existing = await self._read_jobset(name)
        if existing is None:
            try:
                created = await self._once("create", "jobsets.jobset.x-k8s.io", self._custom.create_namespaced_custom_object,
                                           JOBSET_GROUP, JOBSET_VERSION, self.settings.namespace, JOBSET_PLURAL, manifest)
                existing = created if isinstance(created, dict) and created else manifest
            except ApiException as e:
                if e.status == 404:
                    raise ExecutorError("kubernetes: the JobSet API (jobset.x-k8s.io/v1alpha2) is not installed; a job over "
                                        f"{job.nodes} nodes needs it (docs/gpu.md)") from None
                if e.status != 409:
                    raise ExecutorError(f"kubernetes: cannot create JobSet ({e.status}): {_message(e)}") from None
                existing = await self._read_jobset(name)
                if existing is None:
                    raise TransientApiError(f"kubernetes: JobSet {name} existed, then vanished") from None
        reason = foreign_owner((existing.get("metadata") or {}).get("labels"), job)
        if reason is not None:
            raise ExecutorError(f"kubernetes: {reason}")
        self._deleted.discard(name)
        uid = (existing.get("metadata") or {}).get("uid")
        await self._own_secret(job_name(job.job_id), uid, {"apiVersion": JOBSET_API, "kind": "JobSet", "name": name})

    async def submit(self, job: JobSpec) -> None:
        await self._keep_ca()
        if job.nodes > 1:
            return await self._retrying().run(lambda: self._submit_gang(job), (TransientApiError,))
        manifest = k8s_job(job, self.settings)
        name = manifest["metadata"]["name"]
        ns = self.settings.namespace
        tries = 0
        await self._put_secret(job)

        async def create() -> None:
            nonlocal tries
            tries += 1
            if tries > 1:
                # The last create may have happened after all (a timeout, a 500): never make a second Job.
                existing = await self._read_job(name)
                if existing is not None:
                    return self._adopt(existing, job, name)
            try:
                created = await self._once("create", "jobs.batch", self._batch.create_namespaced_job, ns, manifest)
                await self._own_secret(name, getattr(created.metadata, "uid", None))
            except ApiException as e:
                if e.status != 409:
                    raise ExecutorError(f"kubernetes: cannot create Job ({e.status}): {_message(e)}") from None
                existing = await self._read_job(name)
                if existing is None:  # deleted in between: the next attempt creates it
                    raise TransientApiError(f"kubernetes: Job {name} existed, then vanished") from None
                return self._adopt(existing, job, name)
            self._deleted.discard(name)

        await self._retrying().run(create, (TransientApiError,))

    def _adopt(self, existing: Any, job: JobSpec, name: str) -> None:
        """A resubmit of this very job is adopted; anyone else's Job is an error."""
        reason = foreign_owner(existing.metadata.labels, job)
        if reason is not None:
            raise ExecutorError(f"kubernetes: {reason}")
        self._deleted.discard(name)

    async def poll(self, job_id: str) -> JobPhase:
        name = job_name(job_id)
        # Answered from the cache, poll may never reach an await that suspends; a caller polling
        # in a loop must still let the rest of the event loop run.
        await asyncio.sleep(0)
        if name in self._deleted or jobset_name(job_id) in self._deleted:
            return JobPhase(state="missing")
        if job_id in self._gangs:
            return await self._poll_gang(job_id)
        jobs, pods = await self._watching()
        job = jobs.items().get(name) or await self._read_job(name)  # not in the cache yet (or any more)
        if job is None:
            if self._gangs and await self._read_jobset(jobset_name(job_id)) is not None:  # a JobSet this engineer did not submit
                self._gangs.add(job_id)
                return await self._poll_gang(job_id)
            self._forget(job_id)
            return JobPhase(state="missing")
        if _succeeded(job):
            self._forget(job_id)
            return JobPhase(state="succeeded")
        if not pods.synced.is_set():
            phase = _job_phase(job, [])
            if phase is not None:
                return phase
            raise ExecutorError(f"kubernetes: cannot tell how Job {name} is doing: cannot list pods: {pods.error}")
        mine = sorted((p for p in pods.items().values() if _pod_job(p) == name),
                      key=lambda p: (p.metadata.creation_timestamp is not None, p.metadata.creation_timestamp or 0))
        phase = _job_phase(job, mine)
        if phase is not None:
            return phase
        if not mine:
            return await self._no_pod_phase(job_id, name)
        return self._pod_phase(job_id, mine)

    async def _poll_gang(self, job_id: str) -> JobPhase:
        """A JobSet's state from its conditions; while it runs, from its pods (all must run for the gang to run)."""
        name = jobset_name(job_id)
        found = await self._read_jobset(name)
        if found is None:
            self._forget(job_id)
            return JobPhase(state="missing")
        status = found.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Completed" in conditions:
            self._forget(job_id)
            return JobPhase(state="succeeded")
        if "Failed" in conditions:
            c = conditions["Failed"]
            return JobPhase(state="failed", reason=f"{c.get('reason') or 'Failed'}: {c.get('message') or ''}".strip(": "))
        if (found.get("spec") or {}).get("suspend"):
            return JobPhase(state="pending", reason="suspended: waiting for admission of the whole gang (Kueue)")
        _, pods = await self._watching()
        mine = sorted((p for p in pods.items().values() if (p.metadata.labels or {}).get(JOBSET_NAME_LABEL) == name),
                      key=lambda p: (p.metadata.creation_timestamp is not None, p.metadata.creation_timestamp or 0))
        live = [p for p in mine if not (p.status and p.status.phase in ("Succeeded", "Failed")) and not p.metadata.deletion_timestamp]
        restarts = int(status.get("restarts") or 0)
        after = f" (gang restart {restarts})" if restarts else ""
        if not live:
            return JobPhase(state="pending", reason=f"waiting for the JobSet's pods{after}")
        for pod in live:
            phase = self._pod_phase(job_id, [pod])
            if phase.state != "running":
                return phase
        return JobPhase(state="running")

    async def _watching(self) -> tuple[Watcher, Watcher]:
        """The Job and pod watchers, started on first use; waits for their first LIST."""
        s = self.settings
        if self._watchers is None:
            self._watchers = (
                Watcher("jobs", self._batch.list_namespaced_job, s.namespace, _SELECTOR,
                        lambda o: _is_ours(o.metadata.labels), s.request_timeout_s, s.watch_timeout_s),
                Watcher("pods", self._core.list_namespaced_pod, s.namespace, _SELECTOR,
                        lambda o: _is_ours(o.metadata.labels), s.request_timeout_s, s.watch_timeout_s),
            )
            for w in self._watchers:
                w.start()
        jobs, pods = self._watchers
        if not jobs.synced.is_set() and not await asyncio.to_thread(jobs.synced.wait, s.request_timeout_s):
            # Say why in the executor's words (RBAC, no cluster, ...): one direct LIST does that.
            await self._call("list", "jobs.batch", self._batch.list_namespaced_job, s.namespace, label_selector=_SELECTOR)
            raise ExecutorError(f"kubernetes: the watch of Jobs in {s.namespace} has not synced: {jobs.error}")
        if not pods.synced.is_set():
            await asyncio.to_thread(pods.synced.wait, s.request_timeout_s)
        return jobs, pods

    async def _job_events(self) -> dict[str, list[Any]]:
        """Events about the lab's Jobs (FailedCreate says why no pod exists), listed at most every events_interval_s."""
        taken, events = self._events
        if time.monotonic() - taken < self.settings.events_interval_s:
            return events
        events = {}
        try:
            found = await self._call(
                "list", "events", self._core.list_namespaced_event, self.settings.namespace,
                field_selector="involvedObject.kind=Job",
            )
        except (ExecutorError, ApiException):
            return events  # without events the job still reads as waiting; nothing is lost
        for ev in found.items:
            obj = ev.involved_object
            if obj is not None and obj.kind == "Job" and obj.name is not None:
                events.setdefault(obj.name, []).append(ev)
        self._events = (time.monotonic(), events)
        return events

    async def _no_pod_phase(self, job_id: str, name: str) -> JobPhase:
        """A live Job without pods: either the controller is on it, or admission refuses its pods."""
        self._stuck_since.pop(job_id, None)
        failed_create = [e for e in (await self._job_events()).get(name, []) if e.reason == "FailedCreate"]
        if not failed_create:
            return JobPhase(state="pending", reason="waiting for the job controller to create a pod")
        latest = max(failed_create, key=_event_time)
        message = latest.message or "FailedCreate"
        kind = admission_kind(message)
        if kind in ("pod-security", "limit-range"):
            what = "Pod Security admission" if kind == "pod-security" else "a LimitRange"
            return JobPhase(state="failed", reason=f"FailedCreate: pods rejected by {what}: {message}")
        if kind == "quota":
            return JobPhase(state="pending", reason=f"FailedCreate: pods wait for a ResourceQuota to free up: {message}")
        return JobPhase(state="pending", reason=f"FailedCreate: {message}")

    def _pod_phase(self, job_id: str, pods: list[Any]) -> JobPhase:
        """A live Job's state from its newest pod: why it waits, or that it runs."""
        pod = pods[-1]
        status = pod.status
        for cond in (status.conditions if status else None) or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                detail = f"{cond.reason or 'Unschedulable'}: {cond.message or ''}".strip(": ")
                since = self._unscheduled_since.setdefault(job_id, time.monotonic())
                waited = time.monotonic() - since
                if waited >= self.settings.unschedulable_after_s:
                    # Still waiting, but the operator should know no node fits it (GPUs, taints, selectors).
                    detail = f"unschedulable for {waited:.0f}s: {detail}"
                return JobPhase(state="pending", reason=detail)
        self._unscheduled_since.pop(job_id, None)
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
        term = _terminated(pod)
        if status and status.phase == "Running" and term is not None and term.exit_code:
            # The runner died (a bad image, no NATS, a crash) while the experiment container waits
            # for it: the pod stays Running until the deadline and holds its GPUs. Say so now.
            return JobPhase(state="failed", reason=f"{_pod_failure(pod)}; the experiment container still ran", leftover=True)
        if status and status.phase == "Running":
            return JobPhase(state="running")
        if status and status.phase == "Failed":
            return JobPhase(state="pending", reason=f"retrying after a failed pod: {_pod_failure(pod)}")
        return JobPhase(state="pending", reason=(status.phase if status and status.phase else "Pending"))

    def _forget(self, job_id: str) -> None:
        self._stuck_since.pop(job_id, None)
        self._unscheduled_since.pop(job_id, None)

    async def cancel(self, job_id: str) -> None:
        if job_id in self._gangs:
            await self._delete_gang(jobset_name(job_id), job_name(job_id))
        else:
            await self._delete(job_name(job_id))
        self._forget(job_id)

    async def _delete_gang(self, name: str, secret: str) -> None:
        """Delete a JobSet (the garbage collector takes its Jobs and pods) and its Secret."""
        try:
            await self._call("delete", "jobsets.jobset.x-k8s.io", self._custom.delete_namespaced_custom_object, JOBSET_GROUP,
                             JOBSET_VERSION, self.settings.namespace, JOBSET_PLURAL, name, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise ExecutorError(f"kubernetes: cannot delete JobSet {name} ({e.status}): {_message(e)}") from None
        try:
            await self._call("delete", "secrets", self._core.delete_namespaced_secret, secret, self.settings.namespace)
        except ApiException as e:
            if e.status != 404:
                raise ExecutorError(f"kubernetes: cannot delete Secret {secret} ({e.status}): {_message(e)}") from None
        self._deleted.add(name)

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
        try:
            await self._call("delete", "secrets", self._core.delete_namespaced_secret, name, self.settings.namespace)
        except ApiException as e:
            if e.status != 404:
                raise ExecutorError(f"kubernetes: cannot delete Secret {name} ({e.status}): {_message(e)}") from None
        # The DELETED event may come later; the next poll must not see the Job alive meanwhile.
        self._deleted.add(name)
        if self._watchers is not None:
            self._watchers[0].forget(name)

    async def cleanup(self, project: str) -> None:
        value = label_value(project)
        found = await self._call(
            "list", "jobs.batch", self._batch.list_namespaced_job, self.settings.namespace,
            label_selector=f"{PROJECT_LABEL}={value}",
        )
        await self._cleanup_gangs(value)
        for job in found.items:
            meta = job.metadata
            if meta is not None and meta.name is not None and (meta.labels or {}).get(PROJECT_LABEL) == value:
                if JOBSET_NAME_LABEL not in (meta.labels or {}):  # a JobSet's Job goes with its JobSet
                    await self._delete(meta.name)

    async def _cleanup_gangs(self, value: str) -> None:
        """Delete the project's JobSets; a cluster without the JobSet API (404) has none."""
        try:
            found = await self._call("list", "jobsets.jobset.x-k8s.io", self._custom.list_namespaced_custom_object, JOBSET_GROUP,
                                     JOBSET_VERSION, self.settings.namespace, JOBSET_PLURAL, label_selector=f"{PROJECT_LABEL}={value}")
        except ApiException as e:
            if e.status == 404:
                return
            raise ExecutorError(f"kubernetes: cannot list JobSets ({e.status}): {_message(e)}") from None
        except RejectedError:
            if self._gangs:  # forbidden matters only where this engineer runs multi-node jobs
                raise
            return
        for item in (found.get("items") if isinstance(found, dict) else None) or []:
            meta = item.get("metadata") or {}
            if (meta.get("labels") or {}).get(PROJECT_LABEL) == value and meta.get("name"):
                secret = job_name((meta.get("annotations") or {}).get(JOB_ID_ANNOTATION) or meta["name"])
                await self._delete_gang(meta["name"], secret)

    async def close(self) -> None:
        for w in self._watchers or ():
            await asyncio.to_thread(w.stop)
        await asyncio.to_thread(self._api.close)


def _labels_of(obj: Any) -> dict[str, str]:
    return dict((obj.metadata.labels if obj.metadata else None) or {})


def _ca_pem(path: Path) -> str:
    """The lab's CA certificate(s), as PEM; never a file that holds a key (a ConfigMap is readable by many)."""
    try:
        pem = path.read_text()
    except (OSError, ValueError) as e:
        raise ExecutorError(f"kubernetes: cannot read the lab's NATS CA file {path} (LAB_NATS_CA_FILE) for the Jobs' runners: {e}") from None
    if "-----BEGIN CERTIFICATE-----" not in pem or "PRIVATE KEY" in pem:
        raise ExecutorError(f"kubernetes: {path} (LAB_NATS_CA_FILE) is not PEM CA certificates alone; "
                            "refusing to copy it into a ConfigMap for the Jobs' runners")
    return pem


def _is_ours(found: dict[str, str] | None) -> bool:
    found = found or {}
    return all(found.get(k) == v for k, v in (pair.split("=", 1) for pair in _SELECTOR.split(",")))


def _event_time(ev: Any) -> float:
    for stamp in (ev.last_timestamp, getattr(ev, "event_time", None), ev.metadata.creation_timestamp if ev.metadata else None):
        if stamp is not None:
            return float(stamp.timestamp())
    return 0.0


def _pod_job(pod: Any) -> str | None:
    found = pod.metadata.labels or {}
    return found.get(_JOB_NAME) or found.get("job-name")


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
