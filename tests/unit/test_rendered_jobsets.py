"""A multi-node job renders as a JobSet whose embedded Job validates strictly, and whose own fields follow JobSet's API.

What this cannot show: there is no JobSet CRD schema in the repository and kubernetes-validate
knows only built-in kinds, so the JobSet's top-level fields are checked against a small model
written from the jobset.x-k8s.io/v1alpha2 API reference (JobSetSpec, ReplicatedJob, Network,
FailurePolicy, FailurePolicyRule, SuccessPolicy), not the CRD's OpenAPI schema with its CEL
rules; the embedded Job template is validated as a batch/v1 Job against Kubernetes 1.33. Whether
a real JobSet controller and Job controller behave as rendered is the integration test's
emulation (tests/integration/test_k8s_multinode.py), not a real cluster.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.executors.render import (
    COMPLETION_INDEX_ANNOTATION,
    PREEMPTED_PATTERN,
    KubernetesSettings,
    k8s_jobset,
    render_job,
)
from tests.manifests import assert_restricted, example, validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplicatedJob(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    groupName: str | None = None
    template: dict[str, Any]  # a batch/v1 JobTemplateSpec: validated below as a Job
    replicas: int = Field(1, ge=0)
    dependsOn: list[dict[str, str]] | None = None


class Network(_Strict):
    enableDNSHostnames: bool | None = None
    subdomain: str | None = None
    publishNotReadyAddresses: bool | None = None


class FailurePolicyRule(_Strict):
    name: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    action: Literal["FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts", "RestartJob", "RestartJobAndIgnoreMaxRestarts"]
    onJobFailureReasons: list[str] = []
    onJobFailureMessagePatterns: list[str] = []
    targetReplicatedJobs: list[str] = []


class FailurePolicy(_Strict):
    maxRestarts: int = Field(0, ge=0)
    restartStrategy: Literal["Recreate", "BlockingRecreate", "InPlaceRestart"] = "Recreate"
    rules: list[FailurePolicyRule] = []


class SuccessPolicy(_Strict):
    operator: Literal["All", "Any"]
    targetReplicatedJobs: list[str] = []


class JobSetSpec(_Strict):
    replicatedJobs: list[ReplicatedJob] = Field(min_length=1)
    network: Network | None = None
    successPolicy: SuccessPolicy | None = None
    failurePolicy: FailurePolicy | None = None
    startupPolicy: dict[str, str] | None = None
    suspend: bool | None = None
    coordinator: dict[str, Any] | None = None
    managedBy: str | None = None
    ttlSecondsAfterFinished: int | None = Field(None, ge=0)


class JobSet(_Strict):
    apiVersion: Literal["jobset.x-k8s.io/v1alpha2"]
    kind: Literal["JobSet"]
    metadata: dict[str, Any]
    spec: JobSetSpec


def embedded_job(jobset: dict[str, Any]) -> dict[str, Any]:
    """The replicatedJob's template as the batch/v1 Job the JobSet controller makes of it."""
    [rj] = jobset["spec"]["replicatedJobs"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{jobset['metadata']['name']}-{rj['name']}-0",
            **rj["template"].get("metadata", {})}, "spec": rj["template"]["spec"]}


def test_the_jobset_model_rejects_what_it_should() -> None:
    """The hand-written model is a real check: an unknown field, a bad action or a bad rule name fail."""
    js = k8s_jobset(example(nodes=2), KubernetesSettings())
    JobSet.model_validate(js)
    for path, value in ((("spec", "replicatedJob"), []), (("spec", "failurePolicy", "rules", 0, "action"), "Restart"),
                        (("spec", "failurePolicy", "rules", 0, "name"), "0bad"), (("spec", "network", "dnsHostnames"), True)):
        bad = yaml.safe_load(yaml.safe_dump(js))
        where = bad
        for key in path[:-1]:
            where = where[key]
        where[path[-1]] = value
        with pytest.raises(ValidationError):
            JobSet.model_validate(bad)


@pytest.mark.parametrize("case", [
    {"nodes": 2},
    {"nodes": 4, "gpu": 8, "options": {"gpus": 32, "kueue_queue": "lab-gpus", "nats_secret": "lab-nats-job", "backoff_limit": 3}},
    {"nodes": 16, "gpu": 1, "job_id": "Weird_ID.with.dots/" + "x" * 80, "options": {"mig_profile": "3g.40gb"}},
])
def test_multinode_jobs_render_as_a_jobset_that_validates(case: dict[str, Any]) -> None:
    options = case.pop("options", {})
    job = example(**case)
    js, secret = yaml.safe_load_all(render_job(job, "kubernetes", options))
    JobSet.model_validate(js)
    inner = embedded_job(js)
    validate(inner)  # kubernetes-validate, strict, Kubernetes 1.33
    name = js["metadata"]["name"]
    assert secret["kind"] == "Secret"
    spec, rules = inner["spec"], js["spec"]["failurePolicy"]["rules"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == ("Indexed", job.nodes, job.nodes, 0)
    # Every pod's hostname <name>-node-0-<index> is a DNS label; node 0's is the rendezvous address.
    assert len(f"{name}-node-0-{job.nodes - 1}") <= 63
    assert js["spec"]["network"] == {"enableDNSHostnames": True, "subdomain": name, "publishNotReadyAddresses": True}
    pod = spec["template"]["spec"]
    assert_restricted("gang", pod)
    for c in pod["containers"]:
        env = {e["name"]: e for e in c["env"]}
        assert env["LAB_RDZV_ENDPOINT"]["value"] == f"{name}-node-0-0.{name}:29400"
        assert env["LAB_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
    # The runner of each pod records the node it was scheduled on (env.json's provenance).
    assert {e["name"]: e for e in pod["containers"][0]["env"]}["LAB_NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # Preemption first and uncounted, an experiment failure fails the gang, the rest counts against backoff_limit.
    pfp = spec["podFailurePolicy"]["rules"]
    assert pfp[0] == {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    message = f"Pod lab-jobs/{name}-node-0-1-abcde has condition DisruptionTarget matching FailJob rule at index 0"
    assert re.search(PREEMPTED_PATTERN, message) and rules[0]["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    assert not re.search(PREEMPTED_PATTERN, message.replace("DisruptionTarget", "ConfigIssue"))
    assert rules[1] == {"name": "experimentFailed", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}
    assert js["spec"]["failurePolicy"]["maxRestarts"] == options.get("backoff_limit", 2)
    assert js["spec"]["failurePolicy"]["restartStrategy"] == "BlockingRecreate"
    queued = bool(options.get("kueue_queue"))
    assert js["spec"].get("suspend", False) is queued and "suspend" not in spec  # Kueue admits the JobSet, as one workload
    assert (js["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") is not None) is queued
    limits = pod["containers"][1]["resources"]["limits"]
    assert limits.get("nvidia.com/mig-3g.40gb" if "mig_profile" in options else "nvidia.com/gpu") == (str(job.gpu) if job.gpu else None)


def test_a_broken_embedded_job_fails_strict_validation() -> None:
    inner = embedded_job(k8s_jobset(example(nodes=2), KubernetesSettings()))
    inner["spec"]["completionMode"] = "Ordered"
    inner["spec"]["template"]["spec"]["containers"][0]["envv"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(inner)
