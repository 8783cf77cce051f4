"""A test kubelet and job controller for kmock's KubernetesEmulator.

The emulator stores objects but runs nothing. This helper plays the parts of a
cluster the executor depends on, through the same HTTP API a real kubelet uses:
it creates pods for Jobs, schedules them against a fixed number of GPUs (a pod
that needs more than are free stays Pending with an Unschedulable condition),
runs each pod's container command as a local process with the pod's env, and
writes pod and Job status back: exit codes, podFailurePolicy, backoffLimit,
activeDeadlineSeconds, evictions, garbage collection of orphaned pods.

Each container of a pod is one local process with its own environment (env
values, secretKeyRef resolved). Volumes are emulated as folders and each
container's mount paths are rewritten wherever its env or command names them:
an ``emptyDir`` is one folder per pod, shared by the containers that mount it
(mode 2777, group ``fsGroup``); a ``secret`` or ``configMap`` volume is written afresh for each
container that mounts it (its keys or ``items``, mode ``defaultMode``, group
``fsGroup``), inside a folder only that container's uid may enter, which is how
"not mounted into the other container" looks on one filesystem.

Run as root (the tests here are), a container is isolated the way the
executor's manifests ask: its process runs under the container's
``runAsUser``/``runAsGroup`` with ``fsGroup`` as its only extra group and no
capabilities, in a pid namespace of its own (``shareProcessNamespace: false``:
it is PID 1 there and sees only its own processes) with a private /proc; /root
(where this machine's Python lives) is remounted so any uid can reach Python,
as in an image. Not root, containers run as this user in the host's process
namespace, and :attr:`Kubelet.isolates` says so.

It is only as faithful as the executor needs: NonIndexed Jobs run one pod at
a time; Indexed Jobs (``completionMode: Indexed``) run ``completions`` pods at
once (parallelism = completions), each with its index as the annotation and
label ``batch.kubernetes.io/job-completion-index``, ``JOB_COMPLETION_INDEX``,
and the hostname ``<job>-<index>`` when the pod has a ``subdomain``. No init
containers, no network namespaces (containers share the host's network, as a
pod's containers share the pod's). Downward-API ``fieldRef`` env values
(metadata.name, annotations, labels) are resolved.

JobSets (jobset.x-k8s.io/v1alpha2), when the emulator serves them: the
controller creates each replicatedJob's child Jobs ``<jobset>-<rj>-<i>`` with
JobSet's labels, sets the pods' subdomain, marks the JobSet Completed when
every child Job completed, and on a child Job's failure applies
``failurePolicy.rules`` in order (``onJobFailureReasons``,
``onJobFailureMessagePatterns``): FailJobSet, or a restart (counted against
``maxRestarts`` or not) that waits until the failed gang's pods are gone
(BlockingRecreate, foreground deletion), then deletes and recreates the child
Jobs. A failed Job's remaining pods get SIGTERM and their grace period, as
the Job controller deletes them. There is no DNS: an env value naming a pod
of the JobSet by ``<hostname>.<subdomain>:<port>`` is rewritten to
``127.0.0.1:<a free port>`` (one per JobSet and restart, so parallel test runs
never share torchrun's port); a real cluster resolves it through the JobSet's
headless service. Kueue, startupPolicy, successPolicy other than All and
JobSet's own TTL are not emulated.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client

REPO = Path(__file__).resolve().parent.parent
JOB_NAME = "batch.kubernetes.io/job-name"
INDEX = "batch.kubernetes.io/job-completion-index"
JOBSET = "jobset.sigs.k8s.io/jobset-name"
JOBSET_RJ = "jobset.sigs.k8s.io/replicatedjob-name"
JOBSET_INDEX = "jobset.sigs.k8s.io/job-index"
JOBSET_ATTEMPT = "jobset.sigs.k8s.io/restart-attempt"
JOBSETS = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
MERGE = "application/merge-patch+json"
# The container's process, as root: its own pid and mount namespaces, then the container's uid.
_ENTER = """set -e
mkdir -p "$STAGE"
mount --bind /root "$STAGE"
mount -t tmpfs -o mode=0755,size=1m tmpfs /root
for d in "$STAGE"/.pyenv; do [ -e "$d" ] && mkdir -p /root/.pyenv && mount --bind "$d" /root/.pyenv; done
umount -l "$STAGE"
exec setpriv --reuid "$RUN_UID" --regid "$RUN_GID" --groups "$RUN_GROUPS" --inh-caps=-all --bounding-set=-all -- "$@"
"""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw(resp: Any) -> Any:
    return json.loads(resp.data)


NODE_NAME = "test-node-0"  # the node every pod runs on (spec.nodeName, which the downward API hands the runner)


class Kubelet:
    """Runs Jobs found in ``namespace`` until stopped; use as ``async with``."""

    def __init__(self, host: str, namespace: str = "lab", gpus: int = 0, bad_images: set[str] | None = None,
                 tick_s: float = 0.05, reject_pods: str | None = None, crash: dict[str, int] | None = None,
                 jobsets: bool = False) -> None:
        cfg = client.Configuration()
        cfg.host = host
        self._api = client.ApiClient(cfg)
        self._batch = client.BatchV1Api(self._api)
        self._core = client.CoreV1Api(self._api)
        self._custom = client.CustomObjectsApi(self._api)
        self.namespace = namespace
        self.gpus = gpus
        self.bad_images = bad_images or set()
        # Admission refusing every pod (a full quota, Pod Security): the job controller records a
        # FailedCreate event on the Job with this message instead of creating the pod.
        self.reject_pods = reject_pods
        # Containers (by name) that exit at once with this code instead of running their command: a
        # runner whose image or python is broken, while its pod's other container keeps running.
        self.crash = crash or {}
        self.tick_s = tick_s
        self._procs: dict[str, dict[str, asyncio.subprocess.Process]] = {}  # pod -> container -> its process
        self._gpu_use: dict[str, int] = {}
        self._counter = 0
        self._task: asyncio.Task[None] | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="kubelet-")
        os.chmod(self._scratch.name, 0o755)  # containers run as other uids and must reach their volumes
        self.isolates = os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "setpriv", "mount"))
        self.volumes: dict[str, dict[str, dict[str, Path]]] = {}  # pod -> container -> mountPath -> local folder
        self.started: dict[str, float] = {}  # pod name -> monotonic start time of its process
        self.started_at: dict[str, str] = {}  # pod name -> when it started, as its status says
        self.ended: dict[str, float] = {}
        self.evict_requests: set[str] = set()  # job names whose running pod should be evicted, or pod names
        self.terminating: dict[str, float] = {}  # pod name -> monotonic time its grace period ends (SIGKILL then)
        self._pod_job: dict[str, str] = {}  # pod name -> its Job's
        self._grace: dict[str, float] = {}  # pod name -> its terminationGracePeriodSeconds
        self.ports: dict[str, int] = {}  # "<subdomain>/<attempt>" -> the loopback port standing in for its rendezvous
        self.jobsets = jobsets  # also play the JobSet controller (the emulator must serve jobset.x-k8s.io/v1alpha2/jobsets)

    def folder(self, pod: str, container: str | None, volume: str) -> Path:
        """Where a volume of a pod is (or will be) emulated: per container for a Secret, per pod otherwise."""
        base = Path(self._scratch.name) / pod
        return (base / container if container else base) / f"vol-{volume}"

    @property
    def free_gpus(self) -> int:
        return self.gpus - sum(self._gpu_use.values())

    async def __aenter__(self) -> Kubelet:
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
        for procs in self._procs.values():
            for proc in procs.values():
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
        if self.jobsets:
            try:
                listed = _raw(await self._call(self._custom.list_namespaced_custom_object, *JOBSETS[:2], self.namespace, JOBSETS[2],
                                               _preload_content=False))["items"]
            except client.ApiException:
                self.jobsets = False
                return
            for js in listed:
                await self._sync_jobset(js, jobs, pods)

    # ------------------------------------------------------------------ JobSet controller

    async def _sync_jobset(self, js: dict[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        """Child Jobs from the replicatedJobs; Completed, FailJobSet or a gang restart from their conditions."""
        name = js["metadata"]["name"]
        status = js.get("status") or {}
        if any(c["type"] in ("Completed", "Failed") and c["status"] == "True" for c in status.get("conditions", [])):
            return
        if js["spec"].get("suspend"):
            return
        children = [j for j in jobs if j["metadata"].get("labels", {}).get(JOBSET) == name]
        failed = [j for j in children if _condition(j, "Failed")]
        if failed:
            await self._jobset_failed(js, failed[0], children, [p for p in pods if p["metadata"].get("labels", {}).get(JOBSET) == name])
            return
        want = [(rj, i) for rj in js["spec"]["replicatedJobs"] for i in range(int(rj.get("replicas", 1)))]
        if children and len(children) == len(want) and all(_condition(j, "Complete") for j in children):
            cond = {"type": "Completed", "status": "True", "reason": "AllJobsCompleted", "message": "jobset completed successfully",
                    "lastTransitionTime": now()}
            await self._patch_jobset(name, {"conditions": [cond], "terminalState": "Completed"})
            return
        have = {j["metadata"]["name"] for j in children}
        for rj, i in want:
            if f"{name}-{rj['name']}-{i}" not in have:
                await self._create_child(js, rj, i)

    async def _create_child(self, js: dict[str, Any], rj: dict[str, Any], index: int) -> None:
        name = js["metadata"]["name"]
        attempt = str(int((js.get("status") or {}).get("restarts") or 0))
        tags = {JOBSET: name, JOBSET_RJ: rj["name"], JOBSET_INDEX: str(index), JOBSET_ATTEMPT: attempt}
        template = json.loads(json.dumps(rj["template"]))
        spec = template["spec"]
        pod_meta = spec["template"].setdefault("metadata", {})
        pod_meta["labels"] = {**pod_meta.get("labels", {}), **tags}
        pod_meta["annotations"] = {**pod_meta.get("annotations", {}), **tags}
        network = js["spec"].get("network") or {}
        if network.get("enableDNSHostnames"):
            spec["template"]["spec"]["subdomain"] = network.get("subdomain") or name
        job = {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"{name}-{rj['name']}-{index}", "namespace": self.namespace,
                         "labels": {**template.get("metadata", {}).get("labels", {}), **tags}, "annotations": tags,
                         "ownerReferences": [{"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "name": name, "uid": name,
                                              "controller": True}]},
            "spec": spec,
        }
        await self._call(self._batch.create_namespaced_job, self.namespace, job)

    async def _jobset_failed(self, js: dict[str, Any], failed: dict[str, Any], children: list[dict[str, Any]],
                             pods: list[dict[str, Any]]) -> None:
        """The first matching failure rule (none: RestartJobSet); a restart waits for the old gang's pods to end."""
        name = js["metadata"]["name"]
        policy = js["spec"].get("failurePolicy") or {}
        cond = _condition(failed, "Failed") or {}
        reason, message = cond.get("reason", ""), cond.get("message", "")
        action = "RestartJobSet"
        for rule in policy.get("rules", []):
            reasons, patterns = rule.get("onJobFailureReasons") or [], rule.get("onJobFailureMessagePatterns") or []
            if (not reasons or reason in reasons) and (not patterns or any(re.search(p, message) for p in patterns)):
                action = rule["action"]
                break
        status = js.get("status") or {}
        counted = int(status.get("restartsCountTowardsMax") or 0)
        if action == "RestartJobSet" and counted >= int(policy.get("maxRestarts", 0)):
            action, why = "FailJobSet", "ReachedMaxRestarts"
        else:
            why = "FailedJobs"
        if action == "FailJobSet":
            cond = {"type": "Failed", "status": "True", "reason": why, "lastTransitionTime": now(),
                    "message": f"job {failed['metadata']['name']} failed: {reason}: {message}"}
            await self._patch_jobset(name, {"conditions": [cond], "terminalState": "Failed"})
            return
        if any(p["metadata"]["name"] in self._procs for p in pods):
            return  # foreground deletion, BlockingRecreate: the old pods finish (and checkpoint) first
        update = {"restarts": int(status.get("restarts") or 0) + 1}
        if action == "RestartJobSet":
            update["restartsCountTowardsMax"] = counted + 1
        await self._patch_jobset(name, update)
        for child in children:
            await self._call(self._batch.delete_namespaced_job, child["metadata"]["name"], self.namespace)
        for pod in pods:
            await self._call(self._core.delete_namespaced_pod, pod["metadata"]["name"], self.namespace)

    async def _patch_jobset(self, name: str, status: dict[str, Any]) -> None:
        await self._call(self._custom.patch_namespaced_custom_object_status, *JOBSETS[:2], self.namespace, JOBSETS[2], name,
                         {"status": status}, _content_type=MERGE)

    # ------------------------------------------------------------------ job controller

    async def _sync_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        status = job.get("status") or {}
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in status.get("conditions", [])):
            await self._reap(pods)
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
                await self._finish_pod(pod, {}, reason="DeadlineExceeded")
            await self._fail_job(name, "DeadlineExceeded", "Job was active longer than specified deadline")
            return
        for pod in active:
            await self._sync_pod(job, pod)
            if _condition(job, "Failed") or _condition(job, "Complete"):
                await self._reap(pods)
                return
        if spec.get("completionMode") == "Indexed":
            busy = {_index(p) for p in pods if p["status"].get("phase") in ("Pending", "Running", "Succeeded")}
            for index in range(int(spec.get("completions", 1))):
                if index not in busy:
                    await self._create_pod(job, index)
            return
        if not active and not any(p["status"].get("phase") in ("Pending", "Running") for p in pods):
            if not any(p["status"].get("phase") == "Succeeded" for p in pods):
                await self._create_pod(job)

    async def _reap(self, pods: list[dict[str, Any]]) -> None:
        """A finished Job's pods that are still terminating: done once their processes exit or their grace runs out."""
        for pod in pods:
            name = pod["metadata"]["name"]
            procs = self._procs.get(name)
            if procs is None or name not in self.terminating:
                continue
            if all(p.returncode is not None for p in procs.values()) or time.monotonic() >= self.terminating[name]:
                self.terminating.pop(name)
                self._kill(name)
                codes = {c: _exit_code(await p.wait()) for c, p in procs.items()}
                await self._finish_pod(pod, codes, reason="Terminated")

    async def _create_pod(self, job: dict[str, Any], index: int | None = None) -> None:
        """A pod from the Job's template; an Indexed Job's carries its index (annotation, label, env, hostname)."""
        name = job["metadata"]["name"]
        self._counter += 1
        if self.reject_pods is not None:
            await self._failed_create(job, f"{name}-{self._counter:05d}")
            return
        template = json.loads(json.dumps(job["spec"]["template"]))
        meta = template.get("metadata", {})
        labels = {**meta.get("labels", {}), JOB_NAME: name, "job-name": name}
        annotations = dict(meta.get("annotations", {}))
        pod_spec = template["spec"]
        if index is not None:
            labels[INDEX] = annotations[INDEX] = str(index)
            for c in pod_spec["containers"]:
                c["env"] = [*c.get("env", []), {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
            if pod_spec.get("subdomain"):
                pod_spec["hostname"] = f"{name}-{index}"
        pod_spec["nodeName"] = NODE_NAME  # bound at once: this kubelet is the cluster's one node
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{self._counter:05d}" if index is None else f"{name}-{index}-{self._counter:05d}",
                "namespace": self.namespace,
                "labels": labels,
                "annotations": annotations,
                "creationTimestamp": now(),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": name, "controller": True}],
            },
            "spec": pod_spec,
            "status": {"phase": "Pending"},
        }
        await self._call(self._core.create_namespaced_pod, self.namespace, pod)
        await self._patch_job(name, {"active": int((job.get("status") or {}).get("active") or 0) + 1}, job)

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

    async def _patch_job(self, name: str, status: dict[str, Any], job: dict[str, Any] | None = None) -> None:
        """Patch a Job's status; ``job``: the copy this tick holds, kept in step (several of its pods may end in one tick)."""
        await self._call(self._batch.patch_namespaced_job_status, name, self.namespace, {"status": status}, _content_type=MERGE)
        if job is not None:
            job["status"] = {**(job.get("status") or {}), **status}

    async def _fail_job(self, name: str, reason: str, message: str, job: dict[str, Any] | None = None) -> None:
        """Fail the Job; as the Job controller deletes them, its other running pods get SIGTERM and their grace period."""
        cond = {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()}
        await self._patch_job(name, {"conditions": [cond], "active": 0}, job)
        for pod_name, procs in self._procs.items():
            if pod_name not in self.terminating and self._pod_job.get(pod_name) == name:
                self._terminate(pod_name, self._grace.get(pod_name, 30.0), procs)

    def _terminate(self, name: str, grace: float, procs: dict[str, asyncio.subprocess.Process]) -> None:
        self.terminating[name] = time.monotonic() + grace
        for proc in procs.values():
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    async def _begin_eviction(self, pod: dict[str, Any]) -> None:
        """As the eviction API and the kubelet do: DisruptionTarget on the pod, SIGTERM, then SIGKILL after the grace period."""
        name = pod["metadata"]["name"]
        cond = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting", "lastTransitionTime": now()}
        await self._patch_pod(name, {"conditions": [cond]})
        self._terminate(name, float(pod["spec"].get("terminationGracePeriodSeconds", 30)), self._procs.get(name, {}))

    async def _job_pod_ended(self, job: dict[str, Any], pod: dict[str, Any], codes: dict[str, int], reason: str,
                             disrupted: bool = False) -> None:
        """podFailurePolicy and backoffLimit, as the real job controller applies them (``codes``: container -> exit code).

        Rules are tried in order and the first match wins, exit-code rules included for a disrupted
        pod: an evicted runner that exits 4 after SIGTERM matches a ``Count`` rule on 4 if that rule
        comes before the ``Ignore`` rule on DisruptionTarget (Kubernetes' documented behaviour).
        """
        name = job["metadata"]["name"]
        status = job.get("status") or {}
        if _condition(job, "Failed") or _condition(job, "Complete"):
            return  # the Job ended already (another of its pods); this pod was only terminating
        active = max(0, int(status.get("active") or 0) - 1)
        if not disrupted and all(c == 0 for c in codes.values()):
            succeeded = int(status.get("succeeded") or 0) + 1
            if succeeded < int(job["spec"].get("completions", 1)):
                await self._patch_job(name, {"succeeded": succeeded, "active": active}, job)
                return
            conds = [{"type": t, "status": "True", "lastTransitionTime": now()} for t in ("SuccessCriteriaMet", "Complete")]
            await self._patch_job(name, {"succeeded": succeeded, "active": 0, "conditions": conds, "completionTime": now()}, job)
            return
        for i, rule in enumerate(job["spec"].get("podFailurePolicy", {}).get("rules", [])):
            on_codes = rule.get("onExitCodes")
            on_conds = rule.get("onPodConditions")
            matched = False
            exit_code = 0
            if on_codes:
                which = [c for n, c in codes.items() if c != 0 and on_codes.get("containerName") in (None, n)]
                exit_code = which[0] if which else 0
                inside = exit_code in on_codes["values"]
                matched = bool(which) and (inside if on_codes["operator"] == "In" else not inside)
            if on_conds and disrupted:
                matched = any(c["type"] == "DisruptionTarget" for c in on_conds)
            if not matched:
                continue
            if rule["action"] == "FailJob":
                msg = (f"Container runner for pod {self.namespace}/{pod['metadata']['name']} failed with exit code {exit_code} "
                       f"matching FailJob rule at index {i}")
                if on_conds and disrupted:
                    msg = (f"Pod {self.namespace}/{pod['metadata']['name']} has condition DisruptionTarget matching FailJob "
                           f"rule at index {i}")
                await self._fail_job(name, "PodFailurePolicy", msg, job)
                return
            if rule["action"] == "Ignore":
                await self._patch_job(name, {"active": active}, job)
                return
            break  # Count: fall through to the backoff limit
        failed = int(status.get("failed") or 0) + 1
        await self._patch_job(name, {"failed": failed, "active": active}, job)
        if failed > int(job["spec"].get("backoffLimit", 6)):
            await self._fail_job(name, "BackoffLimitExceeded", "Job has reached the specified backoff limit", job)

    # ------------------------------------------------------------------ kubelet

    async def _sync_pod(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        containers = pod["spec"]["containers"]
        if name in self._procs:
            procs = self._procs[name]
            asked = {job["metadata"]["name"], name} & self.evict_requests  # a Job's (first) pod, or a pod by name
            if asked and name not in self.terminating:
                self.evict_requests -= asked
                await self._begin_eviction(pod)
            elif name in self.terminating:
                if all(p.returncode is not None for p in procs.values()) or time.monotonic() >= self.terminating[name]:
                    self.terminating.pop(name)
                    self._kill(name)  # SIGKILL what outlived its grace
                    codes = {c: _exit_code(await p.wait()) for c, p in procs.items()}
                    await self._finish_pod(pod, codes, reason="Evicted")
                    await self._job_pod_ended(job, pod, codes, "Evicted", disrupted=True)
            elif all(p.returncode is not None for p in procs.values()):
                codes = {c: p.returncode for c, p in procs.items() if p.returncode is not None}
                await self._finish_pod(pod, codes, reason="Completed" if not any(codes.values()) else "Error")
                await self._job_pod_ended(job, pod, codes, "Error")
            elif any(p.returncode is not None for p in procs.values()):
                # As a real kubelet does: the pod stays Running while any container runs, and each ended
                # container shows as terminated in its status.
                def state_of(code: int | None) -> dict[str, Any]:
                    if code is None:
                        return {"running": {"startedAt": self.started_at[name]}}
                    return {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed"}}

                statuses = [self._cstatus(c, state_of(procs[c["name"]].returncode)) for c in containers]
                if pod.get("status", {}).get("containerStatuses") != statuses:
                    await self._patch_pod(name, {"phase": "Running", "containerStatuses": statuses})
            return
        for container in containers:
            if container["image"] in self.bad_images:
                waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{container["image"]}"'}
                await self._patch_pod(name, {"phase": "Pending", "containerStatuses": [self._cstatus(container, {"waiting": waiting})]})
                return
        need = sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers)
        if need > self.free_gpus:
            cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": f"0/1 nodes are available: 1 Insufficient nvidia.com/gpu (needs {need}, {self.free_gpus} free)."}
            await self._patch_pod(name, {"phase": "Pending", "conditions": [cond]})
            return
        launches = []
        for container in containers:
            env = await self._env(container, pod)
            if env is None:
                return
            launches.append((container, env))
        self._gpu_use[name] = need
        self._procs[name] = {}
        self._pod_job[name] = job["metadata"]["name"]
        self._grace[name] = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        for container, env in launches:
            if container["name"] in self.crash:
                self._procs[name][container["name"]] = await asyncio.create_subprocess_exec("sh", "-c", f"exit {self.crash[container['name']]}")
                continue
            raw = list(container["command"]) + list(container.get("args", []))
            cmd = [self._local(pod, container, a) for a in raw]
            if raw[0] in ("python", "python3", sys.executable):
                # The image's python is this one: never mapped through a mount (a checkout under /tmp would
                # otherwise run a python inside the container's /tmp volume, which has none).
                cmd[0] = sys.executable
            self._procs[name][container["name"]] = await self._spawn(pod, container, cmd, env)
        self.started[name] = time.monotonic()
        self.started_at[name] = now()
        running = {"running": {"startedAt": self.started_at[name]}}
        cond = {"type": "PodScheduled", "status": "True"}
        await self._patch_pod(name, {"phase": "Running", "conditions": [cond],
                                     "containerStatuses": [self._cstatus(c, running) for c in containers]})

    def _identity(self, pod: dict[str, Any], container: dict[str, Any]) -> tuple[int, int, int | None]:
        """uid, gid and fsGroup of a container: its securityContext over the pod's."""
        pod_sc = pod["spec"].get("securityContext") or {}
        sc = {**pod_sc, **(container.get("securityContext") or {})}
        uid = int(sc.get("runAsUser", 65534))
        return uid, int(sc.get("runAsGroup", uid)), pod_sc.get("fsGroup")

    async def _spawn(self, pod: dict[str, Any], container: dict[str, Any], cmd: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
        if self.isolates:
            uid, gid, fs_group = self._identity(pod, container)
            stage = Path(self._scratch.name) / pod["metadata"]["name"] / f".stage-{container['name']}"
            stage.mkdir(parents=True, exist_ok=True)
            groups = ",".join(str(g) for g in sorted({gid, *([fs_group] if fs_group is not None else [])}))
            env = {**env, "STAGE": str(stage), "RUN_UID": str(uid), "RUN_GID": str(gid), "RUN_GROUPS": groups}
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", _ENTER, "sh", *cmd]
        return await asyncio.create_subprocess_exec(
            *cmd, env=env, cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )

    def _local(self, pod: dict[str, Any], container: dict[str, Any], value: str) -> str:
        """``value`` with a mount path of the container replaced by the folder that stands in for it."""
        mounts = self.volumes.get(pod["metadata"]["name"], {}).get(container["name"], {})
        for path in sorted(mounts, key=len, reverse=True):
            if value == path or value.startswith(path.rstrip("/") + "/"):
                return str(mounts[path]) + value[len(path):]
        return value

    async def _secret_data(self, name: str) -> dict[str, str] | None:
        try:
            secret = _raw(await self._call(self._core.read_namespaced_secret, name, self.namespace, _preload_content=False))
        except client.ApiException:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        return {**data, **(secret.get("stringData") or {})}

    async def _config_map_data(self, name: str) -> dict[str, str] | None:
        try:
            found = _raw(await self._call(self._core.read_namespaced_config_map, name, self.namespace, _preload_content=False))
        except client.ApiException:
            return None
        return dict(found.get("data") or {})

    async def _mount(self, pod: dict[str, Any], container: dict[str, Any]) -> str | None:
        """Folders for the container's volumes; why not, if a Secret or ConfigMap it mounts is missing."""
        pod_name = pod["metadata"]["name"]
        uid, gid, fs_group = self._identity(pod, container)
        pod_dir = Path(self._scratch.name) / pod_name
        pod_dir.mkdir(exist_ok=True)
        pod_dir.chmod(0o711)
        own = pod_dir / container["name"]  # this container's private mounts: only its uid enters
        own.mkdir(exist_ok=True)
        own.chmod(0o700)
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        found: dict[str, Path] = {}
        for m in container.get("volumeMounts", []):
            vol = volumes[m["name"]]
            if "secret" in vol or "configMap" in vol:
                kind = "secret" if "secret" in vol else "configMap"
                ref = vol[kind]["secretName"] if kind == "secret" else vol[kind]["name"]
                data = await (self._secret_data(ref) if kind == "secret" else self._config_map_data(ref))
                if data is None:
                    return f'{kind.lower()} "{ref}" not found'
                local = self.folder(pod_name, container["name"], m["name"])
                local.mkdir(exist_ok=True)
                items = vol[kind].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    f = local / item["path"]
                    f.write_text(data.get(item["key"], ""))
                    f.chmod(int(item.get("mode", vol[kind].get("defaultMode", 0o644))))
                    if self.isolates:
                        os.chown(f, 0, fs_group if fs_group is not None else 0)
            else:  # emptyDir, and anything else: a folder the pod's containers share
                local = self.folder(pod_name, None, m["name"])
                local.mkdir(exist_ok=True)
                if self.isolates:
                    os.chown(local, 0, fs_group if fs_group is not None else 0)
                local.chmod(0o2777 if fs_group is not None else 0o777)
            found[m["mountPath"]] = local
        if self.isolates:
            os.chown(own, uid, gid)
        self.volumes.setdefault(pod_name, {})[container["name"]] = found
        return None

    async def _env(self, container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str] | None:
        """The container's environment with secrets resolved and mount paths mapped to local folders."""
        missing = await self._mount(pod, container)
        if missing is not None:
            # A real kubelet leaves the pod ContainerCreating (FailedMount events) for a missing volume source.
            waiting = {"reason": "CreateContainerConfigError", "message": missing}
            await self._patch_pod(pod["metadata"]["name"], {"phase": "Pending", "containerStatuses": [self._cstatus(container, {"waiting": waiting})]})
            return None
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}
        if "LAB_LIT_SOURCES" in os.environ:  # the test suite's pin to local literature reaches the pods too (tests/conftest.py)
            env["LAB_LIT_SOURCES"] = os.environ["LAB_LIT_SOURCES"]
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = self._loopback(pod, self._local(pod, container, var["value"]))
                continue
            if "fieldRef" in var["valueFrom"]:
                env[var["name"]] = _field(pod, var["valueFrom"]["fieldRef"]["fieldPath"])
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            data = await self._secret_data(ref["name"])
            if data is None:
                waiting = {"reason": "CreateContainerConfigError", "message": f'secret "{ref["name"]}" not found'}
                await self._patch_pod(pod["metadata"]["name"], {"phase": "Pending", "containerStatuses": [self._cstatus(container, {"waiting": waiting})]})
                return None
            env[var["name"]] = data.get(ref["key"], "")
        return env

    def _loopback(self, pod: dict[str, Any], value: str) -> str:
        """``<hostname>.<subdomain>:<port>`` of a pod beside this one as ``127.0.0.1:<free port>``: there is no DNS here."""
        sub = pod["spec"].get("subdomain")
        found = re.fullmatch(rf"([a-z0-9-]+)\.{re.escape(sub)}(\.[a-z0-9.-]+)?:(\d+)", value) if sub else None
        if found is None:
            return value
        key = f"{sub}/{pod['metadata'].get('labels', {}).get(JOBSET_ATTEMPT, '0')}/{found.group(3)}"
        if key not in self.ports:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.ports[key] = sock.getsockname()[1]
        return f"127.0.0.1:{self.ports[key]}"

    def _cstatus(self, container: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        return {"name": container["name"], "image": container["image"], "imageID": "", "ready": "running" in state,
                "restartCount": 0, "state": state}

    async def _patch_pod(self, name: str, status: dict[str, Any]) -> None:
        await self._call(self._core.patch_namespaced_pod_status, name, self.namespace, {"status": status}, _content_type=MERGE)

    async def _finish_pod(self, pod: dict[str, Any], codes: dict[str, int], reason: str) -> None:
        """Stop what still runs (137, as a kill looks) and record each container's exit code."""
        name = pod["metadata"]["name"]
        self._kill(name)
        for procs in [self._procs.pop(name, {})]:
            for proc in procs.values():
                await proc.wait()
        self._gpu_use.pop(name, None)
        self.ended[name] = time.monotonic()
        statuses = []
        for container in pod["spec"]["containers"]:
            code = codes.get(container["name"], 137)
            why = reason if reason in ("Evicted", "DeadlineExceeded") else ("Completed" if code == 0 else "Error")
            statuses.append(self._cstatus(container, {"terminated": {"exitCode": code, "reason": why, "finishedAt": now()}}))
        ok = reason not in ("Evicted", "DeadlineExceeded") and all(c == 0 for c in codes.values())
        status: dict[str, Any] = {"phase": "Succeeded" if ok else "Failed", "containerStatuses": statuses}
        if reason == "Evicted":
            status |= {"reason": "Evicted", "message": "Evicted through the eviction API",
                       "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]}
        await self._patch_pod(name, status)

    def _kill(self, name: str) -> None:
        for proc in self._procs.get(name, {}).values():
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._gpu_use.pop(name, None)


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == kind and c["status"] == "True":
            return dict(c)
    return None


def _field(pod: dict[str, Any], path: str) -> str:
    """A downward-API fieldPath: metadata.name/namespace, one annotation or label, or a spec field (spec.nodeName)."""
    meta = pod["metadata"]
    if path.startswith("spec."):
        return str(pod["spec"].get(path.removeprefix("spec."), ""))
    found = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if found:
        return str(meta.get(found.group(1), {}).get(found.group(2), ""))
    return str(meta.get(path.removeprefix("metadata."), ""))


def _index(pod: dict[str, Any]) -> int | None:
    found = pod["metadata"].get("annotations", {}).get(INDEX)
    return int(found) if found is not None else None


def _exit_code(returncode: int) -> int:
    """A container's exit code as Kubernetes reports it: 128 + the signal for a process a signal ended."""
    return 128 - returncode if returncode < 0 else returncode
