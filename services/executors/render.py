"""What the lab submits for a job, decided in one place and free of I/O.

The Kubernetes and Docker executors only send what these functions build, so
``lab job render`` shows exactly what a cluster or a Docker host will receive,
and the manifest tests validate the same objects the executors create.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bus.permissions import job_of_user
from bus.schema import JobSpec
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_INFRA
from bus.settings import Settings, env_name
from bus.settings import settings as lab_settings
from services.executors.base import ExecutorError

RUNNER_COMMAND = ["python", "-m", "services.runner"]
LAUNCHER_COMMAND = ["python", "-m", "services.runner.launcher"]
CONTAINER = "runner"  # holds the credential; its exit code is the job's (podFailurePolicy reads it)
EXPERIMENT_CONTAINER = "experiment"  # runs the experiment: another uid, no credential
RUNNER_METRICS_PORT = 9464  # the runner's /metrics in a job pod: the agents' port, named `metrics` as theirs
LABEL = "lab.kenkyu.dev"
PROJECT_LABEL = f"{LABEL}/project"
JOB_LABEL = f"{LABEL}/job"
EXPERIMENT_LABEL = f"{LABEL}/experiment"
NETWORK_LABEL = f"{LABEL}/network"  # "open": the NetworkPolicy lets the job reach beyond NATS
JOB_ID_ANNOTATION = f"{LABEL}/job-id"
WALL_TIME_LABEL = f"{LABEL}/wall-time-s"  # Docker keeps the deadline on the container itself
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_DEVICES_LABEL = f"{LABEL}/gpu-devices"  # Docker: the GPUs a container holds, so a restart rebuilds the pool
NATS_PASSWORD_FILE_ENV = env_name("nats_password_file")
NATS_PASSWORD_MOUNT = "/run/secrets/lab-nats-password"
# The runner reads the files these name instead of job.nats.user/password, so a
# Secret-held credential never appears in the Job object nor in any environment.
NATS_USER_FILE_ENV = env_name("nats_user_file")
NATS_SECRET_MOUNT = "/run/lab/nats"
# The job itself (its status key, and the NATS password when no Secret holds it) is a
# per-job Secret mounted into the runner container only, never an environment variable.
JOB_FILE_ENV = env_name("job_file")
JOB_SECRET_MOUNT = "/run/lab/job"
JOB_SECRET_KEY = "job.json"
# TLS to NATS: the CA (public, never a key) the runner trusts, mounted into the runner container alone.
NATS_CA_FILE_ENV = env_name("nats_ca_file")
NATS_CA_MOUNT = "/run/lab/nats-ca"
NATS_CA_KEY = "ca.crt"
# The ConfigMap the kubernetes executor keeps in the Jobs' namespace with the engineer's own CA when the
# lab speaks TLS and executor option nats_ca_configmap names none (RBAC allows this name: k8s/components/nats-tls).
NATS_CA_CONFIGMAP = "lab-nats-ca"
NATS_CA_COMPONENT = "nats-ca"  # its app.kubernetes.io/component
SHARED_ENV = env_name("shared_dir")  # services.runner.split: the volume the two containers share
SCRATCH_ENV = env_name("scratch")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _digest(value: str, n: int = 8) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:n]


def dns_name(prefix: str, value: str, limit: int = 63) -> str:
    """A DNS-1123 label from ``prefix-value``; a hash suffix keeps distinct ids distinct after cleaning."""
    raw = f"{prefix}-{value}"
    clean = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    clean = re.sub(r"-{2,}", "-", clean)
    if clean == raw and len(clean) <= limit:
        return clean
    return f"{clean[: limit - 9].rstrip('-')}-{_digest(raw)}"


def label_value(value: str) -> str:
    """A Kubernetes label value for an id; same input, same value, so selectors find it again."""
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-_.")
    return f"{clean[:54].rstrip('-_.')}-{_digest(value)}".lstrip("-")


class Toleration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KubernetesSettings(BaseModel):
    """The ``executor.options`` of the kubernetes executor."""

    model_config = ConfigDict(extra="forbid")
    # Experiment Jobs live apart from the agents' Secrets (namespace `lab`): k8s/base/jobs.
    namespace: str = "lab-jobs"
    image: str = "ghcr.io/kenkyu-lab/lab:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    command: list[str] = Field(default_factory=lambda: list(RUNNER_COMMAND), min_length=1)
    launcher_command: list[str] = Field(default_factory=lambda: list(LAUNCHER_COMMAND), min_length=1)
    # Where the API server is: in-cluster when running in a pod, else a kubeconfig.
    in_cluster: bool | None = None  # None: in-cluster when KUBERNETES_SERVICE_HOST is set
    kubeconfig: str | None = None
    context: str | None = None
    request_timeout_s: float = Field(15, gt=0)
    # Concurrency: GPUs the lab may use at once, or jobs when no GPUs are configured.
    gpus: int | None = Field(None, ge=1)
    max_jobs: int = Field(4, ge=1)
    min_gpu: int = Field(0, ge=0)  # a GPU cluster gives every job at least this many GPUs
    # The most GPUs one job may hold (all its nodes together): a template asking for more is refused at
    # submit with the reason, never silently given fewer. None: no cap (the quota or Kueue still bound it).
    max_gpus_per_job: int | None = Field(None, ge=1)
    kueue_queue: str | None = None
    priority_class: str | None = None
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    gpu_node_selector: dict[str, str] = {}
    gpu_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )
    # Placement of GPU jobs: GPU models (node label values, e.g. "NVIDIA-H100-80GB-HBM3"), under this label
    # (GPU feature discovery's; other clusters name it differently); a MIG profile (e.g. "1g.10gb") asks for
    # nvidia.com/mig-<profile> slices instead of whole GPUs; a RuntimeClass (e.g. "nvidia") for GPU pods.
    gpu_products: list[str] = []
    gpu_product_label: str = "nvidia.com/gpu.product"
    mig_profile: str | None = Field(None, pattern=r"^[0-9]+g\.[0-9]+gb(\+me)?$")
    gpu_runtime_class: str | None = None
    # After the experiment's grace (JobSpec.term_grace_s) the runner uploads the checkpoint and logs:
    # the pod's terminationGracePeriodSeconds is the sum, so a preempted pod is not SIGKILLed mid-upload.
    upload_margin_s: int = Field(30, ge=0)
    service_account: str | None = None
    nats_secret: str | None = None  # a Secret holding the runner's NATS credential
    nats_secret_user_key: str = "user"
    nats_secret_password_key: str = "password"
    # A ConfigMap in the Jobs' namespace holding the CA of a NATS that speaks TLS, mounted into the runner
    # container alone. When the engineer itself speaks TLS (LAB_NATS_CA_FILE), the executor keeps this
    # ConfigMap (default `lab-nats-ca`) holding that CA file, created before each submit and updated when
    # the file changes. Set without TLS on the engineer: an operator-made ConfigMap; unset and no TLS: none.
    nats_ca_configmap: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    nats_ca_key: str = NATS_CA_KEY
    run_as_user: int = Field(10001, ge=1)  # the runner's uid, and the pod's group
    experiment_run_as_user: int = Field(10002, ge=1)  # the experiment's: never the runner's
    backoff_limit: int = Field(2, ge=0)
    startup_margin_s: int = Field(300, ge=0)  # image pull and scheduling count against activeDeadlineSeconds
    ttl_seconds_after_finished: int = Field(3600, ge=0)
    runner_overhead_mb: int = Field(256, ge=0)  # the runner container's memory
    runner_cpu_m: int = Field(250, ge=10)  # the runner container's CPU, in millicores
    launcher_overhead_mb: int = Field(128, ge=0)  # the launcher's own memory above the experiment's limit
    # The runner serves the job's metrics here (LAB_RUNNER_METRICS_PORT), as the container port `metrics` that
    # k8s/components/monitoring scrapes; None: no metrics port.
    metrics_port: int | None = Field(RUNNER_METRICS_PORT, ge=1, le=65535)
    scratch_dir: str = "/scratch"
    scratch_size_mb: int | None = Field(None, ge=1)
    pull_failure_grace_s: float = Field(120, ge=0)  # a pull failure lasting longer fails the job
    # A pod the scheduler cannot place for this long is reported as unschedulable (it keeps waiting).
    unschedulable_after_s: float = Field(300, ge=0)
    # Transient API failures (429, 5xx, timeouts, a quota that is full right now) are retried
    # this many times with exponential backoff and jitter, capped at api_retry_max_wait_s.
    api_retries: int = Field(5, ge=0)
    api_retry_max_wait_s: float = Field(10, gt=0)
    # poll() reads a cache fed by one list-and-watch of the lab's Jobs and one of their pods;
    # the server ends a watch after this long and the executor lists afresh (a resync).
    watch_timeout_s: float = Field(300, ge=1)
    # Job events (FailedCreate) are listed at most this often, and only for Jobs without pods.
    events_interval_s: float = Field(2, ge=0)
    extra_labels: dict[str, str] = {}

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesSettings:
        if self.experiment_run_as_user == self.run_as_user:
            raise ValueError("experiment_run_as_user must differ from run_as_user: the experiment must not share the runner's uid")
        if self.max_gpus_per_job is not None and self.min_gpu > self.max_gpus_per_job:
            raise ValueError(f"min_gpu ({self.min_gpu}) is above max_gpus_per_job ({self.max_gpus_per_job}): no job could run")
        return self


class DockerSettings(BaseModel):
    """The ``executor.options`` of the docker executor."""

    model_config = ConfigDict(extra="forbid")
    base_url: str | None = None  # None: DOCKER_HOST or the local socket
    image: str = "ghcr.io/kenkyu-lab/lab:0.1.0"
    command: list[str] = Field(default_factory=lambda: list(RUNNER_COMMAND), min_length=1)
    launcher_command: list[str] = Field(default_factory=lambda: list(LAUNCHER_COMMAND), min_length=1)
    # The runner must reach NATS, so a job cannot run with no network at all;
    # it joins a network on which NATS is the only service (compose's lab-bus).
    network: str = "lab-bus"
    # A job with `network: true` is also connected to this network (one with a route out);
    # None: such jobs are refused rather than silently run without the network they asked for.
    open_network: str | None = None
    user: str = Field("10001:10001", pattern=r"^[0-9]+:[0-9]+$")  # the runner's uid:gid
    # The experiment container's: another uid, the runner's group (the shared volume is group-writable).
    experiment_user: str = Field("10002:10001", pattern=r"^[0-9]+:[0-9]+$")
    gpus: int | None = Field(None, ge=1)
    # The host's GPUs (indexes or UUIDs) handed out one job at a time; default: 0..gpus-1.
    # Without a pool, GPUs are requested by count and every job may land on GPU 0.
    gpu_devices: list[str] = []
    max_jobs: int = Field(2, ge=1)
    runner_overhead_mb: int = Field(256, ge=0)  # the runner container's memory
    launcher_overhead_mb: int = Field(128, ge=0)  # the launcher's own memory above the experiment's limit
    scratch_dir: str = "/scratch"
    scratch_size_mb: int = Field(4096, ge=1)
    # /dev/shm: Docker's 64 MB default breaks PyTorch DataLoader workers.
    shm_size_mb: int = Field(2048, ge=64)
    # A host file holding the runner's NATS password, mounted read-only into the job, so
    # the password is never in the container's environment (`docker inspect` shows that).
    nats_password_file: str | None = None
    # A host file holding the CA of a NATS that speaks TLS, mounted read-only into the runner container alone.
    # None: the engineer's own LAB_NATS_CA_FILE, which the Docker engine must see at the same path; unset: no TLS.
    nats_ca_file: str | None = None
    # A host folder where the executor writes each job's description (its status key, which is also
    # its NATS password when the lab runs the auth service) as a 0400 file of the runner's uid, in a
    # folder of its own bind-mounted read-only into that job's runner container alone: Docker has no
    # Secrets without Swarm, and an environment is shown by `docker inspect`. The engineer must see it
    # at the same path as the Docker engine (compose bind-mounts it). None: $LAB_HOME/docker-jobs.
    job_files_dir: str | None = None
    startup_margin_s: int = Field(60, ge=0)  # poll kills a job running past wall time + this
    api_version: str = "auto"
    timeout_s: float = Field(30, gt=0)
    extra_labels: dict[str, str] = {}

    def gpu_pool(self) -> list[str]:
        return list(self.gpu_devices) or [str(i) for i in range(self.gpus or 0)]

    @model_validator(mode="after")
    def _two_uids(self) -> DockerSettings:
        if self.experiment_user.split(":")[0] == self.user.split(":")[0]:
            raise ValueError("experiment_user must have another uid than user: the experiment must not share the runner's uid")
        return self


def settings(model: type[BaseModel], options: dict[str, Any]) -> Any:
    """Validated executor options, or an ExecutorError naming the first bad field."""
    try:
        return model.model_validate(options)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        raise ExecutorError(f"bad executor option {where}: {err['msg']}") from None


def labels(job: JobSpec, extra: dict[str, str]) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "kenkyu-lab",
        "app.kubernetes.io/component": "job-runner",
        "app.kubernetes.io/part-of": "kenkyu-lab",
        "app.kubernetes.io/managed-by": "kenkyu-lab-engineer",
        PROJECT_LABEL: label_value(job.project),
        JOB_LABEL: label_value(job.job_id),
        EXPERIMENT_LABEL: label_value(job.experiment_id),
    }
    if job.network:
        out[NETWORK_LABEL] = "open"
    return {**extra, **out}


def foreign_owner(found: dict[str, str] | None, job: JobSpec) -> str | None:
    """Why an existing Job/container with this job's name is not this job's, or None if it is.

    Names derive from (project, experiment, attempt), so a match is a resubmit of the same job;
    anything else (a hash collision, a hand-made object) must never be adopted silently.
    """
    found = found or {}
    want = {PROJECT_LABEL: label_value(job.project), EXPERIMENT_LABEL: label_value(job.experiment_id)}
    have = {k: found.get(k) for k in want}
    if have == want:
        return None
    return (
        f"a job named for {job.job_id} already exists for project {have[PROJECT_LABEL]!r}, experiment "
        f"{have[EXPERIMENT_LABEL]!r}, not {job.project!r}/{job.experiment_id!r}; refusing to adopt it"
    )


def ca_configmap(s: KubernetesSettings) -> str | None:
    """The ConfigMap holding the CA the Jobs' runners trust: the option, else the default when the lab speaks TLS."""
    if s.nats_ca_configmap:
        return s.nats_ca_configmap
    return NATS_CA_CONFIGMAP if lab_settings().nats_ca_file else None


def k8s_ca_configmap(s: KubernetesSettings, ca_pem: str) -> dict[str, Any]:
    """The ConfigMap the executor keeps with the lab's CA (a certificate: public), for the Jobs' runners."""
    name = ca_configmap(s) or NATS_CA_CONFIGMAP
    own = {"app.kubernetes.io/name": "kenkyu-lab", "app.kubernetes.io/part-of": "kenkyu-lab",
           "app.kubernetes.io/component": NATS_CA_COMPONENT, "app.kubernetes.io/managed-by": "kenkyu-lab-engineer"}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": s.namespace, "labels": {**s.extra_labels, **own}},
            "data": {s.nats_ca_key: ca_pem}}


def job_name(job_id: str) -> str:
    return dns_name("lab", job_id)


def _job_for_runner(job: JobSpec, gpu: int, strip_password: bool) -> JobSpec:
    update: dict[str, Any] = {"gpu": gpu}
    # A job's own user (job.<project>.<job>, the auth callout's) keeps its password, the job's key: a mounted
    # shared credential never replaces it (jobrunner.Runner.credential).
    if strip_password and job.nats is not None and not job_of_user(job.nats.user):
        # The user name stays (it is no secret): Docker's password file carries no user, and without one
        # the runner's connect was refused. Kubernetes' NATS Secret names the user too, and wins.
        update["nats"] = job.nats.model_copy(update={"password": None})
    return job.model_copy(update=update)


def k8s_job_secret(job: JobSpec, s: KubernetesSettings) -> dict[str, Any]:
    """The per-job Secret: the JobSpec the runner reads (status key included), mounted into the runner only."""
    gpu = pod_gpus(job, s)  # refuses a job over max_gpus_per_job before anything is made
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": job_name(job.job_id), "namespace": s.namespace, "labels": labels(job, s.extra_labels),
                     "annotations": {JOB_ID_ANNOTATION: job.job_id}},
        "stringData": {JOB_SECRET_KEY: _job_for_runner(job, gpu, strip_password=bool(s.nats_secret)).model_dump_json()},
    }


def _lockdown(uid: int, gid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _plain_env(extra: dict[str, str]) -> list[dict[str, Any]]:
    base = {"TMPDIR": "/tmp", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": "/tmp/matplotlib", **extra}
    return [{"name": k, "value": v} for k, v in base.items()]


def k8s_job(job: JobSpec, s: KubernetesSettings) -> dict[str, Any]:
    """The batch/v1 Job for one JobSpec: a runner container and an experiment container.

    They share one scratch volume and nothing else. The runner holds the credential (the
    per-job Secret of :func:`k8s_job_secret`, and the NATS Secret when configured, both as
    mounted files); the experiment runs under another uid with no credential, no
    service-account token and its own process namespace (``services/runner/split.py``).
    """
    job_labels = labels(job, s.extra_labels)
    meta_labels = {**job_labels, **({KUEUE_QUEUE_LABEL: s.kueue_queue} if s.kueue_queue else {})}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(job.job_id),
            "namespace": s.namespace,
            "labels": meta_labels,
            "annotations": {JOB_ID_ANNOTATION: job.job_id},
        },
        "spec": _job_spec(job, s, job_labels, _pod_spec(job, s)),
    }


def _job_spec(job: JobSpec, s: KubernetesSettings, job_labels: dict[str, str], pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The Job's deadline, retries (the runner's exit code says whose fault a failure was) and pod template."""
    spec: dict[str, Any] = {
        # The runner stops the experiment at wall_time_s; the deadline is the backstop for a
        # runner that hangs, with a margin for scheduling and image pulls.
        "activeDeadlineSeconds": math.ceil(job.wall_time_s) + s.startup_margin_s,
        "backoffLimit": s.backoff_limit,
        "ttlSecondsAfterFinished": s.ttl_seconds_after_finished,
        # The Job controller applies the first rule that matches. A preempted, drained or evicted pod
        # (DisruptionTarget) gets SIGTERM, and the runner then exits EXIT_INFRA after checkpointing: the
        # Ignore rule must come first, or every preemption would count against backoffLimit.
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_EXPERIMENT_FAILED]}},
                {"action": "Count", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INFRA]}},
            ]
        },
        "template": {"metadata": {"labels": job_labels}, "spec": pod_spec},
    }
    if s.kueue_queue:
        spec["suspend"] = True  # Kueue admits the Job by unsuspending it
    return spec


JOBSET_GROUP, JOBSET_VERSION, JOBSET_PLURAL = "jobset.x-k8s.io", "v1alpha2", "jobsets"
JOBSET_API = f"{JOBSET_GROUP}/{JOBSET_VERSION}"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # the JobSet controller puts it on child Jobs and pods
REPLICATED_JOB = "node"  # the one replicatedJob: child Job <jobset>-node-0, pods <jobset>-node-0-<index>
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
RDZV_PORT = 29400
NODE_RANK_ENV = env_name("node_rank")
NODE_NAME_ENV = env_name("node_name")
RDZV_ENDPOINT_ENV = env_name("rdzv_endpoint")
# The child Job's podFailurePolicy messages, as the Job controller words them; the JobSet's failure rules match them.
PREEMPTED_PATTERN = "has condition DisruptionTarget matching FailJob rule at index 0"


def jobset_name(job_id: str) -> str:
    """The JobSet's name: short enough that its pods' hostnames (``<name>-node-0-<index>``) stay DNS labels."""
    return dns_name("lab", job_id, limit=48)


def rdzv_endpoint(job_id: str) -> str:
    """Node 0's stable DNS name under the JobSet's headless service, and torchrun's port."""
    name = jobset_name(job_id)
    return f"{name}-{REPLICATED_JOB}-0-0.{name}:{RDZV_PORT}"


def k8s_jobset(job: JobSpec, s: KubernetesSettings) -> dict[str, Any]:
    """A multi-node job (``job.nodes > 1``): a JobSet whose one replicatedJob is an Indexed Job of ``nodes`` pods.

    Each pod is the single-node Job's pod (runner + experiment, same lockdown and credential handling)
    with its rank (the completion index, through the downward API) and node 0's address. Any pod's
    failure fails the child Job (backoffLimit 0) and the JobSet restarts the whole gang: a preempted
    pod's restart is not counted (the Ignore rule of a single-node Job, as far as JobSet allows), an
    experiment failure fails the JobSet, anything else counts against ``backoff_limit`` (docs/gpu.md).
    """
    name = jobset_name(job.job_id)
    job_labels = labels(job, s.extra_labels)
    meta_labels = {**job_labels, **({KUEUE_QUEUE_LABEL: s.kueue_queue} if s.kueue_queue else {})}
    spec: dict[str, Any] = {
        "replicatedJobs": [{"name": REPLICATED_JOB, "replicas": 1,
                            "template": {"metadata": {"labels": job_labels}, "spec": _gang_job_spec(job, s, job_labels)}}],
        # A headless service named after the subdomain: <pod hostname>.<subdomain> resolves to each pod.
        "network": {"enableDNSHostnames": True, "subdomain": name, "publishNotReadyAddresses": True},
        "successPolicy": {"operator": "All"},
        "failurePolicy": {
            "maxRestarts": s.backoff_limit,
            # The old gang is gone (node 0 uploaded its checkpoint) before the new one starts and restores it.
            "restartStrategy": "BlockingRecreate",
            "rules": [
                {"name": "preempted", "action": "RestartJobSetAndIgnoreMaxRestarts",
                 "onJobFailureReasons": ["PodFailurePolicy"], "onJobFailureMessagePatterns": [PREEMPTED_PATTERN]},
                {"name": "experimentFailed", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]},
                {"name": "deadline", "action": "FailJobSet", "onJobFailureReasons": ["DeadlineExceeded"]},
                # No rule matches anything else (the runner's exit 4, OOMKilled): RestartJobSet, counted.
            ],
        },
        "ttlSecondsAfterFinished": s.ttl_seconds_after_finished,
    }
    if s.kueue_queue:
        spec["suspend"] = True  # Kueue admits the whole gang at once by unsuspending the JobSet
    return {
        "apiVersion": JOBSET_API,
        "kind": "JobSet",
        "metadata": {"name": name, "namespace": s.namespace, "labels": meta_labels, "annotations": {JOB_ID_ANNOTATION: job.job_id}},
        "spec": spec,
    }


def _gang_job_spec(job: JobSpec, s: KubernetesSettings, job_labels: dict[str, str]) -> dict[str, Any]:
    """The child Job: ``nodes`` indexed pods that run at once; the first pod failure fails it (the JobSet decides what next)."""
    pod_spec = _pod_spec(job, s)
    rank_env = [
        {"name": NODE_RANK_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}},
        {"name": RDZV_ENDPOINT_ENV, "value": rdzv_endpoint(job.job_id)},
    ]
    for c in pod_spec["containers"]:
        c["env"] = [*c["env"], *rank_env]
    spec = _job_spec(job, s, job_labels, pod_spec)
    spec.pop("suspend", None)  # the JobSet is what Kueue suspends
    spec.pop("ttlSecondsAfterFinished", None)  # the JobSet's own TTL removes it with its Jobs
    spec |= {
        "completionMode": "Indexed",
        "completions": job.nodes,
        "parallelism": job.nodes,
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [
            # Rule 0 must stay first and stay the DisruptionTarget rule: PREEMPTED_PATTERN names its index.
            {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_EXPERIMENT_FAILED]}},
        ]},
    }
    return spec


def _pod_spec(job: JobSpec, s: KubernetesSettings) -> dict[str, Any]:
    """The pod: locked down, no service-account token, its two containers and their volumes, placed on a GPU node if it needs one."""
    gpu = pod_gpus(job, s)
    gid = s.run_as_user
    runner_env, runner_mounts, volumes = _runner_wiring(job, s)
    node_selector = {**s.node_selector, **(s.gpu_node_selector if gpu else {})}
    tolerations = [*s.tolerations, *(s.gpu_tolerations if gpu else [])]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": math.ceil(job.term_grace_s) + s.upload_margin_s,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "shareProcessNamespace": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": s.run_as_user,
            "runAsGroup": gid,
            "fsGroup": gid,  # the shared volume is group-writable for both uids
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": _containers(job, s, gpu, runner_env, runner_mounts),
        "volumes": volumes,
    }
    if s.service_account:
        pod_spec["serviceAccountName"] = s.service_account
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = [t.model_dump(exclude_none=True) for t in tolerations]
    if s.priority_class:
        pod_spec["priorityClassName"] = s.priority_class
    if gpu:
        pod_spec |= _gpu_placement(s)
    return pod_spec


def pod_gpus(job: JobSpec, s: KubernetesSettings) -> int:
    """The GPUs each of the job's pods asks for (at least ``min_gpu``); a job over ``max_gpus_per_job`` in all is refused."""
    gpu = max(job.gpu, s.min_gpu)
    cap = s.max_gpus_per_job
    if cap is not None and gpu * job.nodes > cap:
        per = f" ({gpu} per node x {job.nodes} nodes)" if job.nodes > 1 else ""
        raise ExecutorError(f"kubernetes: job {job.job_id} asks for {gpu * job.nodes} GPUs{per}, over this lab's "
                            f"max_gpus_per_job of {cap} (executor config); lower the template profile's resources.gpu")
    return gpu


def _gpu_placement(s: KubernetesSettings) -> dict[str, Any]:
    """Pod fields that put a GPU job on the configured GPU models, under the configured runtime class."""
    out: dict[str, Any] = {}
    if s.gpu_products:
        term = {"matchExpressions": [{"key": s.gpu_product_label, "operator": "In", "values": list(s.gpu_products)}]}
        out["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    if s.gpu_runtime_class:
        out["runtimeClassName"] = s.gpu_runtime_class
    return out


def gpu_resource(s: KubernetesSettings) -> str:
    """The extended resource a GPU job asks for: whole GPUs, or MIG slices of the configured profile."""
    return f"nvidia.com/mig-{s.mig_profile}" if s.mig_profile else "nvidia.com/gpu"


def _runner_wiring(job: JobSpec, s: KubernetesSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The runner's environment and mounts, and the pod's volumes: the job's Secret, scratch, and the NATS Secret when configured."""
    runner_env = _plain_env({JOB_FILE_ENV: f"{JOB_SECRET_MOUNT}/{JOB_SECRET_KEY}", SHARED_ENV: s.scratch_dir,
                             # the kind and image are recorded in env.json; the grace is the template's, inside the pod's
                             **Settings.environ(job_dir="/tmp/job", executor_kind="kubernetes", term_grace_s=job.term_grace_s,
                                                job_image=s.image, runner_metrics_port=s.metrics_port)})
    # The node the pod was scheduled on, known only then: the downward API tells the runner (env.json's provenance).
    runner_env.append({"name": NODE_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    runner_mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "scratch", "mountPath": s.scratch_dir},
        {"name": "job", "mountPath": JOB_SECRET_MOUNT, "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "experiment-tmp", "emptyDir": {}},
        {"name": "scratch", "emptyDir": {"sizeLimit": f"{_scratch_mb(job, s)}Mi"} if _scratch_mb(job, s) else {}},
        {"name": "job", "secret": {"secretName": job_name(job.job_id), "defaultMode": 0o440}},
        # The container runtime's /dev/shm is 64 MB: DataLoader workers and NCCL need more. Memory-backed,
        # so its pages count in the experiment container's memory limit, as on the local sandbox.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{job.shm_mb}Mi"}},
    ]
    if s.nats_secret:
        runner_env += [{"name": NATS_USER_FILE_ENV, "value": f"{NATS_SECRET_MOUNT}/user"},
                       {"name": NATS_PASSWORD_FILE_ENV, "value": f"{NATS_SECRET_MOUNT}/password"}]
        runner_mounts.append({"name": "nats", "mountPath": NATS_SECRET_MOUNT, "readOnly": True})
        items = [{"key": s.nats_secret_user_key, "path": "user"}, {"key": s.nats_secret_password_key, "path": "password"}]
        volumes.append({"name": "nats", "secret": {"secretName": s.nats_secret, "items": items, "defaultMode": 0o440}})
    ca = ca_configmap(s)
    if ca:
        runner_env.append({"name": NATS_CA_FILE_ENV, "value": f"{NATS_CA_MOUNT}/{NATS_CA_KEY}"})
        runner_mounts.append({"name": "nats-ca", "mountPath": NATS_CA_MOUNT, "readOnly": True})
        ca_items = [{"key": s.nats_ca_key, "path": NATS_CA_KEY}]
        volumes.append({"name": "nats-ca", "configMap": {"name": ca, "items": ca_items, "defaultMode": 0o444}})
    return runner_env, runner_mounts, volumes


def _scratch_mb(job: JobSpec, s: KubernetesSettings) -> int | None:
    """The job's scratch disk: the template's (``resources.disk_mb``), else the executor's ``scratch_size_mb``."""
    return job.disk_mb or s.scratch_size_mb


def _containers(
    job: JobSpec, s: KubernetesSettings, gpu: int, runner_env: list[dict[str, Any]], runner_mounts: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The runner (small, with the credential) and the experiment (the job's resources and GPUs, none of the credential)."""
    gid = s.run_as_user
    memory = f"{job.memory_mb + s.launcher_overhead_mb}Mi"
    cpu = f"{math.ceil(job.cpu * 1000)}m"
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    if scratch := _scratch_mb(job, s):
        requests["ephemeral-storage"] = f"{scratch}Mi"  # the kubelet evicts a pod past its limit, not the node's other pods
    limits: dict[str, str] = dict(requests)
    if gpu:
        limits[gpu_resource(s)] = str(gpu)
    runner_res = {"cpu": f"{s.runner_cpu_m}m", "memory": f"{s.runner_overhead_mb}Mi"}
    runner: dict[str, Any] = {
        "name": CONTAINER,
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "command": list(s.command),
        "env": runner_env,
        "resources": {"requests": dict(runner_res), "limits": dict(runner_res)},
        "securityContext": _lockdown(s.run_as_user, gid),
        "volumeMounts": runner_mounts,
    }
    if s.metrics_port is not None:
        runner["ports"] = [{"name": "metrics", "containerPort": s.metrics_port, "protocol": "TCP"}]
    return [
        runner,
        {
            "name": EXPERIMENT_CONTAINER,
            "image": s.image,
            "imagePullPolicy": s.image_pull_policy,
            "command": list(s.launcher_command),
            "env": _plain_env({SHARED_ENV: s.scratch_dir}),
            "resources": {"requests": requests, "limits": limits},
            "securityContext": _lockdown(s.experiment_run_as_user, gid),
            "volumeMounts": [{"name": "experiment-tmp", "mountPath": "/tmp"}, {"name": "scratch", "mountPath": s.scratch_dir},
                             {"name": "dshm", "mountPath": "/dev/shm"}],
        },
    ]


def container_name(job_id: str) -> str:
    """The runner container's name; the job's other objects are named after it."""
    return dns_name("lab-job", job_id, limit=128)


def experiment_name(job_id: str) -> str:
    return dns_name("lab-exp", job_id, limit=128)


def volume_name(job_id: str) -> str:
    return container_name(job_id)


ROLE_LABEL = f"{LABEL}/role"  # Docker: "runner" or "experiment", the two containers of one job


def _docker_lockdown(job: JobSpec, s: DockerSettings, role: str) -> dict[str, Any]:
    return {
        "image": s.image,
        "labels": {**labels(job, s.extra_labels), JOB_ID_ANNOTATION: job.job_id, WALL_TIME_LABEL: f"{job.wall_time_s:g}", ROLE_LABEL: role},
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": 4096,
        # Kept after exit so poll can read the exit code; cleanup removes it.
        "auto_remove": False,
        "detach": True,
    }


def docker_volume(job: JobSpec, s: DockerSettings) -> dict[str, Any]:
    """Keyword arguments of docker-py's ``volumes.create``: the scratch the two containers share, and nothing else does.

    A tmpfs owned by the runner's uid and group (mode 0770), so the experiment's uid reaches it through the group.
    """
    uid, gid = s.user.split(":")
    return {
        "name": volume_name(job.job_id),
        "driver": "local",
        "driver_opts": {"type": "tmpfs", "device": "tmpfs", "o": f"size={s.scratch_size_mb}m,uid={uid},gid={gid},mode=0770"},
        "labels": {**labels(job, s.extra_labels), JOB_ID_ANNOTATION: job.job_id},
    }


def docker_job_dir(job_id: str, s: DockerSettings) -> str:
    """The host folder holding one job's description, bind-mounted into its runner container alone."""
    if s.job_files_dir:
        base = s.job_files_dir
    else:
        from services.common.config import lab_home

        base = str(lab_home() / "docker-jobs")
    return f"{base.rstrip('/')}/{container_name(job_id)}"


def docker_job_file(job: JobSpec, s: DockerSettings) -> str:
    """What the runner reads from ``LAB_JOB_FILE``: the job as the runner gets it (no shared password)."""
    return _job_for_runner(job, job.gpu, strip_password=bool(s.nats_password_file)).model_dump_json()


def docker_ca_file(s: DockerSettings) -> str | None:
    """The host file of the NATS CA a Docker job's runner trusts: the option, else the engineer's own LAB_NATS_CA_FILE."""
    if s.nats_ca_file:
        return s.nats_ca_file
    own = lab_settings().nats_ca_file
    return str(own) if own else None


def docker_container(job: JobSpec, s: DockerSettings, devices: list[str] | None = None, image: str = "", node: str = "") -> dict[str, Any]:
    """Keyword arguments of docker-py's ``containers.create`` for the job's runner (the one holding the credential).

    Docker has no Secrets without Swarm: the job (its status key) is a 0400 file in a host folder of its
    own (``docker_job_dir``, written by the executor before the container is created) bind-mounted
    read-only here, never in an environment; the experiment container has neither it nor the NATS
    password file. ``devices``: the job's GPUs (labelled here too, so they stay taken while either container lives).
    ``image`` and ``node``: what env.json records as the image run (with its id, once the engine resolved it) and the
    engine's host; the configured image and nothing (the runner's host name) when not known.
    """
    environment = {JOB_FILE_ENV: f"{JOB_SECRET_MOUNT}/{JOB_SECRET_KEY}", SHARED_ENV: s.scratch_dir,
                   **Settings.environ(job_dir="/tmp/job", executor_kind="docker", job_image=image or s.image, node_name=node or None),
                   "HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": "/tmp/matplotlib"}
    volumes: dict[str, Any] = {volume_name(job.job_id): {"bind": s.scratch_dir, "mode": "rw"},
                               docker_job_dir(job.job_id, s): {"bind": JOB_SECRET_MOUNT, "mode": "ro"}}
    if s.nats_password_file and not (job.nats is not None and job_of_user(job.nats.user)):
        # A job of its own user (the auth callout's) logs in with its key alone: the shared runner
        # password, which would let it speak for every project's jobs, is never mounted there.
        environment[NATS_PASSWORD_FILE_ENV] = NATS_PASSWORD_MOUNT
        volumes[s.nats_password_file] = {"bind": NATS_PASSWORD_MOUNT, "mode": "ro"}
    if ca := docker_ca_file(s):
        environment[NATS_CA_FILE_ENV] = f"{NATS_CA_MOUNT}/{NATS_CA_KEY}"
        volumes[ca] = {"bind": f"{NATS_CA_MOUNT}/{NATS_CA_KEY}", "mode": "ro"}
    spec = {
        "name": container_name(job.job_id),
        "command": list(s.command),
        "environment": environment,
        "user": s.user,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=512m"},
        "volumes": volumes,
        "network": s.network,
        "mem_limit": f"{s.runner_overhead_mb}m",
        "nano_cpus": int(0.5e9),
        **_docker_lockdown(job, s, "runner"),
    }
    if job.gpu and devices is not None:  # the experiment uses them; the job holds them until both containers are done
        spec["labels"][GPU_DEVICES_LABEL] = ",".join(devices)
    return spec


def docker_experiment_container(job: JobSpec, s: DockerSettings, devices: list[str] | None = None) -> dict[str, Any]:
    """``containers.create`` arguments for the job's experiment: another uid, no credential, no network
    (the template's open network if it asked for one), its own pid namespace, the GPUs.

    ``devices``: the GPUs picked for this job from the pool; None requests ``job.gpu`` by count.
    """
    spec: dict[str, Any] = {
        "name": experiment_name(job.job_id),
        "command": list(s.launcher_command),
        "environment": {SHARED_ENV: s.scratch_dir, "HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
                        "MPLCONFIGDIR": "/tmp/matplotlib"},
        "user": s.experiment_user,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=512m"},
        "volumes": {volume_name(job.job_id): {"bind": s.scratch_dir, "mode": "rw"}},
        "shm_size": f"{max(job.shm_mb, s.shm_size_mb)}m",
        "mem_limit": f"{job.memory_mb + s.launcher_overhead_mb}m",
        "nano_cpus": int(job.cpu * 1e9),
        **_docker_lockdown(job, s, "experiment"),
    }
    if job.network and s.open_network:
        spec["network"] = s.open_network  # a route out, and no NATS: that network is not lab-bus
    else:
        spec["network_mode"] = "none"
    if job.gpu and devices is not None:
        spec["device_requests"] = [{"Driver": "nvidia", "DeviceIDs": list(devices), "Capabilities": [["gpu"]]}]
        spec["labels"][GPU_DEVICES_LABEL] = ",".join(devices)
    elif job.gpu:
        spec["device_requests"] = [{"Driver": "nvidia", "Count": job.gpu, "Capabilities": [["gpu"]]}]
    return spec


def render_job(job: JobSpec, executor: str, options: dict[str, Any] | None = None) -> str:
    """The exact objects the named executor would submit for ``job``, as YAML documents.

    Kubernetes: the Job (a JobSet for a multi-node job), then its Secret. Docker: the shared volume, the runner container, the experiment container.
    """
    options = options or {}
    if executor == "kubernetes":
        s = settings(KubernetesSettings, options)
        main = k8s_jobset(job, s) if job.nodes > 1 else k8s_job(job, s)
        k8s_yaml: str = yaml.safe_dump_all([main, k8s_job_secret(job, s)], sort_keys=False)
        return k8s_yaml
    if executor == "docker":
        s = settings(DockerSettings, options)
        pool = s.gpu_pool()
        devices = pool[: job.gpu] if pool and job.gpu else None
        job_file = {"path": f"{docker_job_dir(job.job_id, s)}/{JOB_SECRET_KEY}", "mode": "0400", "owner": s.user,
                    "content": json.loads(docker_job_file(job, s))}
        docs = [docker_volume(job, s), job_file, docker_container(job, s), docker_experiment_container(job, s, devices)]
        docker_yaml: str = yaml.safe_dump_all(json.loads(json.dumps(docs)), sort_keys=False)
        return docker_yaml
    raise ExecutorError(f"cannot render for executor {executor!r}; choose kubernetes or docker")
