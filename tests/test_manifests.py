"""Everything the lab would apply to a cluster validates against Kubernetes' own schemas.

Overlays are built with ``kubectl kustomize`` (kustomize v5 ships inside
kubectl; no separate binary is needed) and every object, plus every Job the
executor renders, is checked with kubernetes-validate in strict mode against
Kubernetes 1.33. Beyond the schema, the tests hold the manifests to what the
lab promises: restricted pod security, least-privilege RBAC, default-deny
networking, and names that agree across files (Secrets, NATS users, roles).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from bus.permissions import AUTH, JOB_USER, USERS, permissions
from bus.schema import ROLES, JobSpec, NatsAccess
from services.cli.job import app
from services.executors.render import DockerSettings, KubernetesSettings, docker_container, docker_experiment_container, docker_job_dir, docker_job_file, k8s_job, k8s_job_secret, render_job
from services.host.jobs import runner_access

REPO = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.33"
OVERLAYS = ["base", "overlays/gpu", "overlays/cpu", "overlays/vllm", "overlays/kueue", "overlays/replicas"]
# Kinds without a namespace; everything else must name one.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ResourceFlavor", "ClusterQueue", "WorkloadPriorityClass"}
# Custom resources: no built-in schema to validate against; their own tests check them.
CRD_GROUPS = ("kueue.x-k8s.io/",)
# Created by hand (docs/kubernetes.md "Create the namespace and the secrets"), never by the build.
HAND_MADE_SECRETS = {(d["metadata"]["namespace"], d["metadata"]["name"]): set(d["stringData"])
                     for d in yaml.safe_load_all((REPO / "k8s/base/secrets.example.yaml").read_text())}
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with built-in kustomize) is not installed")


def build(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL or "kubectl", "kustomize", str(REPO / "k8s" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith(CRD_GROUPS):
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")}


def namespaced_pods(docs: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(d["metadata"]["namespace"], d["metadata"]["name"], d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def assert_restricted(name: str, pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True, name
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert "limits" in c["resources"] and "memory" in c["resources"]["limits"], name


def secret_file(pod: dict[str, Any], c: dict[str, Any], var: str) -> tuple[str, str]:
    """(Secret, key) of the file the variable ``var`` names: a read-only mount of a secret volume with that one key."""
    [path] = [e["value"] for e in c.get("env", []) if e["name"] == var]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        if not path.startswith(m["mountPath"].rstrip("/") + "/"):
            continue
        secret = volumes[m["name"]].get("secret")
        assert secret and m.get("readOnly") is True, (var, m)
        assert secret.get("defaultMode", 0o644) & 0o007 == 0, (var, secret)  # not world-readable
        name = path[len(m["mountPath"].rstrip("/")) + 1:]
        if "items" not in secret:  # the whole Secret: one file per key
            return secret["secretName"], name
        [item] = [i for i in secret["items"] if i["path"] == name]
        return secret["secretName"], item["key"]
    raise AssertionError(f"{var}={path} is in no mounted volume")


def container(job: dict[str, Any], name: str) -> dict[str, Any]:
    [c] = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def example(**kw: Any) -> JobSpec:
    return JobSpec(job_id=kw.pop("job_id", "proj-exp-1"), project="proj", experiment_id="exp", template="grokking",
                   bundle_object="proj/bundle.tar.gz", seeds=[0, 1, 2], wall_time_s=600, memory_mb=2048,
                   nats=NatsAccess(url="nats://nats:4222", user="runner", password="pw"), **kw)


def test_validator_rejects_what_it_should() -> None:
    """The schema check used below is real: an unknown field and a wrong type both fail."""
    job = k8s_job(example(), KubernetesSettings())
    validate(job)
    job["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)
    bad = k8s_job(example(), KubernetesSettings())
    bad["spec"]["backoffLimit"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_validates_and_is_restricted(overlay: str) -> None:
    docs = build(overlay)
    for doc in docs:
        validate(doc)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "nats") in kinds and ("Namespace", "lab") in kinds and ("Namespace", "lab-jobs") in kinds
    for d in docs:
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in d["metadata"], (d["kind"], d["metadata"]["name"])
        else:
            assert d["metadata"].get("namespace") in ("lab", "lab-jobs"), (d["kind"], d["metadata"]["name"])
    for ns in (d for d in docs if d["kind"] == "Namespace"):
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # Every pod template meets the restricted profile its namespace enforces: no exceptions.
    for name, pod in pod_specs(docs).items():
        assert_restricted(name, pod)
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats")
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]


def _references(pod: dict[str, Any]) -> list[tuple[str, str, str | None, bool]]:
    """(kind, name, key, optional) of every ConfigMap and Secret a pod template uses."""
    refs: list[tuple[str, str, str | None, bool]] = []
    for c in pod["containers"] + pod.get("initContainers", []):
        for src in c.get("envFrom", []):
            for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if field in src:
                    refs.append((kind, src[field]["name"], None, src[field].get("optional", False)))
        for e in c.get("env", []):
            for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                ref = e.get("valueFrom", {}).get(field)
                if ref:
                    refs.append((kind, ref["name"], ref["key"], ref.get("optional", False)))
    for v in pod.get("volumes", []):
        if "configMap" in v:
            refs.append(("ConfigMap", v["configMap"]["name"], None, v["configMap"].get("optional", False)))
        if "secret" in v:
            keys = [i["key"] for i in v["secret"].get("items", [])] or [None]
            refs += [("Secret", v["secret"]["secretName"], k, v["secret"].get("optional", False)) for k in keys]
    return refs


def _executor_settings(docs: list[dict[str, Any]]) -> KubernetesSettings:
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lab-config")]
    return KubernetesSettings.model_validate(yaml.safe_load(config_map["data"]["config.yaml"])["executor"]["kubernetes"])


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_configmap_and_secret_reference_resolves(overlay: str) -> None:
    """A reference kustomize did not rewrite (e.g. to a generated lab-llm-<hash>) fails here, not in the cluster."""
    docs = build(overlay)
    built = {(d["metadata"]["namespace"], d["metadata"]["name"]): set(d.get("data", {}))
             for d in docs if d["kind"] == "ConfigMap"}
    s = _executor_settings(docs)
    pods = namespaced_pods(docs) + [("lab-jobs", "job", k8s_job(example(), s)["spec"]["template"]["spec"])]
    made = {(s.namespace, d["metadata"]["name"]): set(d["stringData"]) for d in [k8s_job_secret(example(), s)]}  # the executor's, per job
    readme = (REPO / "docs/kubernetes.md").read_text()
    for ns, name, pod in pods:
        for kind, ref, key, optional in _references(pod):
            where = (overlay, name, kind, ref, key)
            if kind == "ConfigMap":
                assert (ns, ref) in built or optional, where
                if (ns, ref) in built and key:
                    assert key in built[(ns, ref)], where
            elif (ns, ref) in made:
                assert key is None or key in made[(ns, ref)], where
            elif (ns, ref) in HAND_MADE_SECRETS:
                assert key is None or key in HAND_MADE_SECRETS[(ns, ref)], where
                assert f"-n {ns} create secret generic {ref}" in readme, where  # the deploy guide says how
            else:
                assert optional, where
# The only Secret values left in an environment (issue 12: credentials are files), each with its reason.
SECRET_ENV_EXCEPTIONS = {
    # nats-server resolves nats.conf's $VARS from its own environment: the server, not an agent or runner.
    ("nats", "nats", "*"): "nats-server reads its users' passwords from its env",
    ("nats", "nats", "AUTH_ISSUER"): "the callout issuer's public key, no secret",
    # Settings kept in the optional lab-llm Secret beside the key (docs/kubernetes.md); not credentials.
    **{(f"lab-{r}", "agent", v): "LLM setting, not a credential" for r in ROLES for v in ("LAB_LLM_BASE_URL", "LAB_LLM_MODEL")},
}


@needs_kubectl
@pytest.mark.parametrize("overlay", [*OVERLAYS, "overlays/web"])
def test_no_credential_reaches_a_container_s_environment(overlay: str) -> None:
    """A Secret in an env var is in /proc/<pid>/environ for anything that can read it: credentials are files."""
    found = set()
    for name, pod in pod_specs(build(overlay)).items():
        for c in pod["containers"] + pod.get("initContainers", []):
            found |= {(name, c["name"], "*") for src in c.get("envFrom", []) if "secretRef" in src}
            found |= {(name, c["name"], e["name"]) for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
            assert not {e["name"] for e in c.get("env", []) if "value" in e} & {"LAB_NATS_PASSWORD", "LAB_JOB_SECRET", "OPENAI_API_KEY", "HF_TOKEN"}, (name, c["name"])
    assert found <= set(SECRET_ENV_EXCEPTIONS), found - set(SECRET_ENV_EXCEPTIONS)
    if overlay == "base":
        assert found == set(SECRET_ENV_EXCEPTIONS)  # no stale exception
    if overlay == "overlays/web":
        assert found == set()  # its token is a file too


@needs_kubectl
@pytest.mark.parametrize("overlay", [*OVERLAYS, "overlays/web"])
def test_every_lab_process_reads_its_nats_password_from_its_own_secret_file(overlay: str) -> None:
    """Each agent, lab-auth and the web view: LAB_NATS_PASSWORD_FILE in a read-only secret volume with its user's key."""
    docs = build(overlay)
    users = {"lab-auth": AUTH, "lab-web": "web", **{f"lab-{r}": r for r in ROLES}}
    seen = []
    for name, pod in pod_specs(docs).items():
        if name not in users:
            continue
        [c] = pod["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env["LAB_NATS_USER"]["value"] == users[name] and "LAB_NATS_PASSWORD" not in env, name
        assert secret_file(pod, c, "LAB_NATS_PASSWORD_FILE") == ("lab-nats-users", f"{users[name].upper()}_PASSWORD"), name
        if "LAB_JOB_SECRET_FILE" in env:
            assert secret_file(pod, c, "LAB_JOB_SECRET_FILE")[0] == "lab-job-secret", name
        seen.append(name)
    assert len(seen) == (1 if overlay == "overlays/web" else len(ROLES) + 1), seen


@needs_kubectl
def test_the_vllm_overlay_drops_the_key_file_and_reads_the_hub_token_from_a_file() -> None:
    """vLLM takes any key, so no agent must fail on the absent lab-llm key file; the HF token is a file too."""
    docs = build("overlays/vllm")
    for name, pod in pod_specs(docs).items():
        env = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
        if name.startswith("lab-") and name != "lab-auth":
            assert "LAB_LLM_API_KEY_FILE" not in env and "LAB_NATS_PASSWORD_FILE" in env, name
    vllm = pod_specs(docs)["vllm"]
    [server] = vllm["containers"]
    assert secret_file(vllm, server, "HF_TOKEN_PATH") == ("hf-token", "token")


@needs_kubectl
def test_six_agents_run_their_role_and_probe_the_ready_file() -> None:
    docs = build("base")
    agents = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].startswith("lab-")}
    assert sorted(agents) == sorted(f"lab-{r}" for r in ROLES)
    for role in ROLES:
        pod = agents[f"lab-{role}"]["spec"]["template"]["spec"]
        [c] = pod["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert c["command"] == ["lab", "agent", role]
        # Replicas: each pod's index is its ordinal (the pod-index label), their count the StatefulSet's.
        assert env["LAB_REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
        assert int(env["LAB_REPLICAS"]["value"]) == agents[f"lab-{role}"]["spec"]["replicas"]
        assert agents[f"lab-{role}"]["spec"]["podManagementPolicy"] == "Parallel"
        # The host writes $LAB_HOME/run/<role>.ready (services/host/agent.py); LAB_HOME is an emptyDir.
        assert c["readinessProbe"]["exec"]["command"] == ["test", "-f", f"{env['LAB_HOME']['value']}/run/{role}.ready"]
        assert {"name": "home", "mountPath": env["LAB_HOME"]["value"]} in c["volumeMounts"]
        assert env["LAB_NATS_USER"]["value"] == role
        assert secret_file(pod, c, "LAB_NATS_PASSWORD_FILE") == ("lab-nats-users", f"{role.upper()}_PASSWORD")
        assert secret_file(pod, c, "LAB_LLM_API_KEY_FILE") == ("lab-llm", "OPENAI_API_KEY")
        # Only the engineer talks to the API server.
        assert pod["automountServiceAccountToken"] is (role == "engineer")
        assert pod["serviceAccountName"] == ("lab-engineer" if role == "engineer" else "lab-agent")
        # Only the engineer holds the lab job secret (job statuses are signed with keys derived from it).
        secret_volumes = [v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "lab-job-secret"]
        if role == "engineer":
            assert secret_volumes == ["job-secret"]
            [mount] = [m for m in c["volumeMounts"] if m["name"] == "job-secret"]
            assert mount["readOnly"] is True and env["LAB_JOB_SECRET_FILE"]["value"] == mount["mountPath"] + "/secret"
        else:
            assert secret_volumes == [] and "LAB_JOB_SECRET_FILE" not in env


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_agent_s_replica_count_is_the_one_its_pods_read_by(overlay: str) -> None:
    """LAB_REPLICAS must be spec.replicas: more pods than it refuse to start, fewer leave partitions unread."""
    agents = [d for d in build(overlay) if d["kind"] == "StatefulSet" and d["metadata"]["name"].startswith("lab-")]
    assert len(agents) == len(ROLES)
    counts = {}
    for d in agents:
        env = {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert int(env["LAB_REPLICAS"]["value"]) == d["spec"]["replicas"], d["metadata"]["name"]
        assert "apps.kubernetes.io/pod-index" in env["LAB_REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"]
        counts[d["metadata"]["name"]] = d["spec"]["replicas"]
    if overlay == "overlays/replicas":
        assert counts["lab-engineer"] == 2 and sum(counts.values()) == len(ROLES) + 1


@needs_kubectl
def test_engineer_rbac_is_limited_to_jobs_pods_events_and_making_job_secrets_in_the_jobs_namespace() -> None:
    docs = build("base")
    [role] = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "lab-jobs"
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    jobs = {("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")}
    pods = {("", r, v) for r in ("pods", "pods/log", "events") for v in ("get", "list", "watch")}
    # Each Job's own Secret: made, owned by the Job, deleted; never read (lab-nats-job lives here too).
    secrets = {("", "secrets", v) for v in ("create", "patch", "delete")}
    assert granted == jobs | pods | secrets
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["metadata"]["namespace"] == "lab-jobs"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lab-engineer", "namespace": "lab"}]
    # The jobs' namespace holds the job ServiceAccount and no agent credential.
    assert {(d["kind"], d["metadata"]["name"]) for d in docs if d["metadata"].get("namespace") == "lab-jobs"
            and d["kind"] in ("ServiceAccount", "Secret", "ConfigMap")} == {("ServiceAccount", "lab-job")}
    # Not even a runner credential: each job carries its own user and key (services/auth/callout.py).
    assert {name for ns, name in HAND_MADE_SECRETS if ns == "lab-jobs"} == set()


@needs_kubectl
def test_network_policies_default_deny_and_jobs_reach_only_nats() -> None:
    docs = build("base")
    policies = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    for ns in ("lab", "lab-jobs"):
        deny = policies[(ns, "default-deny")]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"} and "egress" not in deny
        assert {p["port"] for p in policies[(ns, "allow-dns")]["egress"][0]["ports"]} == {53}
    nats = {"matchLabels": {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "bus"}}
    assert policies[("lab-jobs", "jobs-egress")]["egress"] == [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "lab"}}, "podSelector": nats}],
        "ports": [{"protocol": "TCP", "port": 4222}]}]
    # No job-runner policy is left in the agents' namespace.
    assert not [k for k, p in policies.items() if k[0] == "lab" and "job-runner" in json.dumps(p["podSelector"])]
    nats_in = policies[("lab", "nats-ingress")]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "lab-jobs"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "job-runner"}}} in nats_in
    # network: true jobs reach the internet but never cloud metadata nor the cluster's private ranges.
    open_egress = policies[("lab-jobs", "jobs-open-egress")]
    assert open_egress["podSelector"]["matchLabels"]["lab.kenkyu.dev/network"] == "open"
    blocks = [t["ipBlock"] for rule in open_egress["egress"] for t in rule["to"]]
    v4 = next(b for b in blocks if b["cidr"] == "0.0.0.0/0")
    assert {"169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(v4["except"])
    assert all(b.get("except") for b in blocks)


def _users_block(conf: str) -> list[dict[str, Any]]:
    start = conf.index("users: [")
    block = conf[start + len("users: "): conf.index("\n  ]\n", start) + len("\n  ]")]
    # Only bare values are variables ("password": $PI_PASSWORD); a $ inside a quoted subject is literal.
    return json.loads(re.sub(r"(?<=: )\$([A-Z_]+)", r'"$\1"', block))


def test_nats_users_mirror_bus_permissions_and_secret_template() -> None:
    users = _users_block((REPO / "k8s/base/nats.conf").read_text())
    assert [u["user"] for u in users] == list(USERS)
    for u in users:
        assert u["password"] == f"${u['user'].upper()}_PASSWORD"
        assert u.get("permissions") == permissions(u["user"])
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all((REPO / "k8s/base/secrets.example.yaml").read_text())}
    assert set(secrets["lab-nats-users"]["stringData"]) == {f"{u.upper()}_PASSWORD" for u in USERS}
    assert "\n  sync_interval: always" not in (REPO / "k8s/base/nats.conf").read_text()  # offered, commented out
    # Every static user logs in without the auth callout; any other name (a job's runner) goes to it.
    conf = (REPO / "k8s/base/nats.conf").read_text()
    callout = conf[conf.index("auth_callout {"):]
    assert "issuer: $AUTH_ISSUER" in callout
    assert json.loads(re.search(r"auth_users: (\[.*\])", callout).group(1)) == list(USERS)
    assert set(secrets["lab-auth"]["stringData"]) == {"issuer", "seed"}


@needs_kubectl
def test_the_auth_service_holds_the_job_secret_and_seed_and_reaches_only_nats() -> None:
    docs = build("base")
    [auth] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "lab-auth"]
    pod = auth["spec"]["template"]["spec"]
    [c] = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert c["command"] == ["python", "-m", "services.auth"]
    assert env["LAB_NATS_USER"]["value"] == AUTH
    assert secret_file(pod, c, "LAB_NATS_PASSWORD_FILE") == ("lab-nats-users", "AUTH_PASSWORD")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v.get("secret", {}) for v in pod["volumes"]}
    assert volumes["job-secret"]["secretName"] == "lab-job-secret" and env["LAB_JOB_SECRET_FILE"]["value"] == mounts["job-secret"] + "/secret"
    assert volumes["issuer"]["secretName"] == "lab-auth" and [i["key"] for i in volumes["issuer"]["items"]] == ["seed"]
    assert env["LAB_AUTH_ISSUER_SEED_FILE"]["value"] == mounts["issuer"] + "/seed"
    assert pod["automountServiceAccountToken"] is False
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == "lab"}
    assert policies["auth-egress"]["egress"] == [{"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "bus"}}}],
                                                  "ports": [{"protocol": "TCP", "port": 4222}]}]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "auth"}}} in policies["nats-ingress"]["ingress"][0]["from"]
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats")
    nats_env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert nats_env["AUTH_ISSUER"]["valueFrom"]["secretKeyRef"] == {"name": "lab-auth", "key": "issuer"}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_executor_config_agrees_with_the_manifests(overlay: str) -> None:
    docs = build(overlay)
    s = _executor_settings(docs)
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "ServiceAccount"}
    assert s.namespace == "lab-jobs" and (s.namespace, s.service_account) in accounts
    # No shared runner Secret: the job's own user and key ride in its description (the auth callout admits it).
    assert s.nats_secret is None
    engineer = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "lab-engineer")
    env = {e["name"]: e.get("value") for e in engineer["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LAB_RUNNER_USER"] == JOB_USER
    job = k8s_job(example(gpu=0), s)
    validate(job)
    limits = container(job, "experiment")["resources"]["limits"]
    pod = job["spec"]["template"]["spec"]
    if overlay.endswith(("gpu", "kueue")):
        assert int(limits["nvidia.com/gpu"]) >= 1 and pod["nodeSelector"] and pod["tolerations"]
    else:
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod
    # The job image is the agents' image (the CUDA build of it on GPU overlays): one release, no drift.
    agent_images = {c["image"] for _, pod in pod_specs(docs).items() for c in pod["containers"]
                    if c["image"].startswith("ghcr.io/kenkyu-lab/")}
    [agent_image] = agent_images
    assert s.image == (f"{agent_image}-cuda" if "nvidia.com/gpu" in limits else agent_image)


@needs_kubectl
def test_vllm_overlay_wires_the_agents_to_the_model_server() -> None:
    docs = build("overlays/vllm")
    [llm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lab-llm-")]
    agents = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].startswith("lab-")]
    assert len(agents) == len(ROLES)
    for agent in agents:
        [c] = agent["spec"]["template"]["spec"]["containers"]
        assert c["envFrom"] == [{"configMapRef": {"name": llm["metadata"]["name"]}}]  # the hashed name
    vllm = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm")
    [server] = vllm["spec"]["template"]["spec"]["containers"]
    assert f"--model={llm['data']['LAB_LLM_MODEL']}" in server["args"]
    [service] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "vllm"]
    assert llm["data"]["LAB_LLM_BASE_URL"] == f"http://vllm.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}/v1"
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == "lab"}
    to_vllm = [r for r in policies["agents-egress"]["egress"] if {"protocol": "TCP", "port": 8000} in r["ports"]]
    assert to_vllm and to_vllm[0]["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vllm"}}}]
    download = policies["vllm-egress"]["egress"][0]
    assert download["ports"] == [{"protocol": "TCP", "port": 443}] and "169.254.0.0/16" in download["to"][0]["ipBlock"]["except"]


@needs_kubectl
def test_kueue_overlay_queues_gpu_jobs_in_the_jobs_namespace() -> None:
    docs = build("overlays/kueue")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    [flavor], [cq], [lq], [prio] = (by_kind[k] for k in ("ResourceFlavor", "ClusterQueue", "LocalQueue", "WorkloadPriorityClass"))
    [group] = cq["spec"]["resourceGroups"]
    assert "nvidia.com/gpu" in group["coveredResources"]
    [flavor_quota] = group["flavors"]
    assert flavor_quota["name"] == flavor["metadata"]["name"]
    quota = {r["name"]: r["nominalQuota"] for r in flavor_quota["resources"]}
    assert set(quota) == set(group["coveredResources"]) and int(quota["nvidia.com/gpu"]) >= 1
    assert cq["spec"]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "lab-jobs"}}
    assert lq["metadata"]["namespace"] == "lab-jobs" and lq["spec"]["clusterQueue"] == cq["metadata"]["name"]
    s = _executor_settings(docs)
    assert s.kueue_queue == lq["metadata"]["name"] and s.gpus is None
    assert s.extra_labels["kueue.x-k8s.io/priority-class"] == prio["metadata"]["name"]
    job = k8s_job(example(), s)
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == lq["metadata"]["name"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == prio["metadata"]["name"]


def test_images_can_be_pinned_by_digest() -> None:
    pinned = "ghcr.io/kenkyu-lab/lab@sha256:" + "a" * 64
    job = k8s_job(example(), KubernetesSettings(image=pinned))
    validate(job)
    assert {c["image"] for c in job["spec"]["template"]["spec"]["containers"]} == {pinned}


@pytest.mark.parametrize("case", [
    {},
    {"gpu": 2, "options": {"gpus": 4, "priority_class": "high"}},
    {"options": {"kueue_queue": "lab-gpus", "nats_secret": "lab-nats-job", "scratch_size_mb": 2048}},
    {"network": True, "job_id": "Weird_ID.with.dots/" + "x" * 80},
])
def test_rendered_jobs_validate_with_security_and_gpu_fields(case: dict[str, Any]) -> None:
    options = case.pop("options", {})
    job = example(**case)
    manifest, secret = yaml.safe_load_all(render_job(job, "kubernetes", options))
    validate(manifest)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == manifest["metadata"]["name"]
    assert len(manifest["metadata"]["name"]) <= 63
    assert all(len(v) <= 63 for v in manifest["metadata"]["labels"].values())
    pod = manifest["spec"]["template"]["spec"]
    assert_restricted("job", pod)
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    limits = container(manifest, "experiment")["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(job.gpu) if job.gpu else None)
    assert "nvidia.com/gpu" not in container(manifest, "runner")["resources"]["limits"]
    assert manifest["spec"].get("suspend", False) is bool(options.get("kueue_queue"))
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["shareProcessNamespace"] is False
    assert container(manifest, "experiment")["securityContext"]["runAsUser"] == 10002
    assert not [e for c in pod["containers"] for e in c["env"] if "valueFrom" in e or e["name"] == "LAB_JOB"]
    inner = JobSpec.model_validate_json(secret["stringData"]["job.json"])
    assert inner.job_id == job.job_id and (inner.nats.password is None) is bool(options.get("nats_secret"))
    if job.network:
        assert manifest["spec"]["template"]["metadata"]["labels"]["lab.kenkyu.dev/network"] == "open"


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "experiment.py").write_text("print('x')\n")
    (folder / "plot.py").write_text("print('x')\n")
    (folder / "template.yaml").write_text(yaml.safe_dump({
        "name": "toy", "title": "Toy", "task": "t",
        "knobs": {"lr": {"type": "float", "default": 0.1, "min": 0.0, "max": 1.0}},
        "metrics": {"acc": {"direction": "higher", "primary": True}},
        "baseline": {"lr": 0.05}, "seeds": 4, "time_budget_s": 900,
        "resources": {"cpu": 2, "gpu": 1, "memory_mb": 4096},
    }))
    return folder


def test_cli_render_prints_a_valid_job_for_the_template_baseline(template_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"executor": {"kubernetes": {"namespace": "research", "gpus": 2}}}))
    result = CliRunner().invoke(app, ["render", "--template", str(template_dir), "--config", str(config)])
    assert result.exit_code == 0, result.output
    manifest, secret = yaml.safe_load_all(result.stdout)
    validate(manifest)
    assert manifest["metadata"]["namespace"] == "research"
    assert manifest["spec"]["activeDeadlineSeconds"] == 900 + 300
    c = container(manifest, "experiment")
    assert c["resources"]["limits"] == {"cpu": "2000m", "memory": f"{4096 + 128}Mi", "nvidia.com/gpu": "1"}
    inner = JobSpec.model_validate_json(secret["stringData"]["job.json"])
    assert inner.overrides == {"lr": 0.05} and inner.seeds == [0, 1, 2, 3]

    docker = CliRunner().invoke(app, ["render", "--template", str(template_dir), "--executor", "docker"])
    assert docker.exit_code == 0, docker.output
    volume, job_file, runner, experiment = yaml.safe_load_all(docker.stdout)
    assert volume["driver_opts"]["type"] == "tmpfs" and runner["network"] == "lab-bus" and runner["read_only"] is True
    # The job's description is a 0400 file bind-mounted into the runner alone, never its environment.
    assert job_file["mode"] == "0400" and JobSpec.model_validate(job_file["content"]).overrides == {"lr": 0.05}
    assert runner["volumes"][job_file["path"].rsplit("/", 1)[0]] == {"bind": "/run/lab/job", "mode": "ro"}
    assert "LAB_JOB" not in runner["environment"] and "/run/lab/job" not in str(experiment["volumes"])
    assert experiment["device_requests"][0]["Count"] == 1 and experiment["read_only"] is True
    assert experiment["network_mode"] == "none" and experiment["user"] != runner["user"]


@pytest.mark.parametrize("args, message", [
    (["--template", "no-such-template"], "unknown template"),
    (["--executor", "slurm"], "cannot render for executor 'slurm'"),
])
def test_cli_render_bad_input_is_one_line_and_exit_2(template_dir: Path, args: list[str], message: str) -> None:
    if "--template" not in args:
        args = ["--template", str(template_dir), *args]
    result = CliRunner().invoke(app, ["render", *args])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_render_bad_option_names_the_field(template_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("executor:\n  kubernetes:\n    gpus: none\n")
    result = CliRunner().invoke(app, ["render", "--template", str(template_dir), "--config", str(config)])
    assert result.exit_code == 2 and "bad executor option gpus" in result.stderr


def test_compose_runs_nats_and_six_agents_on_a_bus_network() -> None:
    compose = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"nats-init", "nats", "auth", *ROLES}
    for role in ROLES:
        svc = services[role]
        assert svc["command"] == ["lab", "agent", role] and svc["user"] == "10001:10001" and svc["read_only"] is True
        assert svc["environment"]["LAB_NATS_USER"] == role
        assert svc["healthcheck"]["test"][-1] == f"{svc['environment']['LAB_HOME']}/run/{role}.ready"
    assert compose["networks"]["bus"] == {"name": "lab-bus", "internal": True}
    options = yaml.safe_load((REPO / "deploy/config.yaml").read_text())["executor"]["docker"]
    assert options["network"] == "lab-bus"
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile and "ARG BASE=" in dockerfile and "whl/cpu" in dockerfile


def test_compose_nats_can_write_a_fresh_volume_and_jobs_get_no_password_in_their_env() -> None:
    """A new named volume is root-owned: a root one-shot hands it to NATS's uid before NATS starts."""
    compose_text = (REPO / "deploy/compose.yaml").read_text()
    compose = yaml.safe_load(compose_text)
    nats, init = compose["services"]["nats"], compose["services"]["nats-init"]
    data = next(v for v in nats["volumes"] if v.endswith(":/data"))
    assert data in init["volumes"] and init["image"] == nats["image"]
    uid = nats["user"].split(":")[0]
    assert init["user"] == "0:0" and init["entrypoint"] == ["chown", "-R", f"{nats['user']}", "/data"]
    assert uid != "0" and nats["depends_on"]["nats-init"] == {"condition": "service_completed_successfully"}
    assert "--build" not in compose_text  # compose has no build: key; docs/compose.md builds the image first
    # Each job's runner logs in as its own user with its job's key, which rides in its description
    # file alone (issue 16): no shared runner password anywhere, in a file, a mount or an environment.
    engineer = compose["services"]["engineer"]["environment"]
    assert engineer["LAB_RUNNER_USER"] == JOB_USER
    assert not {"LAB_RUNNER_PASSWORD", "LAB_RUNNER_PASSWORD_FILE"} & set(engineer)
    options = yaml.safe_load((REPO / "deploy/config.yaml").read_text())["executor"]["docker"]
    s = DockerSettings.model_validate(options)
    assert s.nats_password_file is None and s.open_network in {n.get("name") for n in compose["networks"].values()}
    job = runner_access(NatsAccess(url=engineer["LAB_RUNNER_NATS_URL"], user=engineer["LAB_RUNNER_USER"]), example(network=True), "k" * 64)
    assert job is not None
    job_spec = example(network=True).model_copy(update={"nats": job, "status_key": "k" * 64})
    spec = docker_container(job_spec, s)
    assert "LAB_JOB" not in spec["environment"] and "LAB_NATS_PASSWORD_FILE" not in spec["environment"]
    runner_sees = JobSpec.model_validate_json(docker_job_file(job_spec, s)).nats
    assert (runner_sees.user, runner_sees.password) == ("job.proj.proj-exp-1", "k" * 64)
    assert spec["volumes"] == {"lab-job-proj-exp-1": {"bind": s.scratch_dir, "mode": "rw"},
                               docker_job_dir("proj-exp-1", s): {"bind": "/run/lab/job", "mode": "ro"}}
    # Even a config that still names a shared password file mounts it only for a shared-user job.
    old = s.model_copy(update={"nats_password_file": "/etc/kenkyu-lab/runner-password"})
    assert "/etc/kenkyu-lab/runner-password" not in docker_container(job_spec, old)["volumes"]
    assert docker_container(example(), old)["volumes"]["/etc/kenkyu-lab/runner-password"]["mode"] == "ro"
    experiment = docker_experiment_container(example(network=True), s)
    assert experiment["shm_size"] == f"{s.shm_size_mb}m" and experiment["network"] == s.open_network
    assert experiment["volumes"] == {"lab-job-proj-exp-1": {"bind": s.scratch_dir, "mode": "rw"}}


COMPOSE_CREDENTIALS = re.compile(r"(PASSWORD|SECRET|API_KEY|TOKEN)$")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy/compose.yaml").read_text())


def test_compose_agents_read_every_credential_from_a_secret_file() -> None:
    """Issue 12 on one host: no agent has a credential in its environment; each reads its own file-based secret."""
    compose = _compose()
    services = compose["services"]
    secrets = compose["secrets"]
    for name, svc in services.items():
        env = svc.get("environment", {})
        leaked = {k for k, v in env.items() if COMPOSE_CREDENTIALS.search(k) or re.search(r"\$\{?[A-Z_]*(PASSWORD|SECRET|API_KEY)", str(v))}
        assert not leaked, (name, leaked)
        assert name == "nats" or "env_file" not in svc, name  # .env holds the server's passwords
    for name, svc in services.items():  # every secret a service names is declared, as a file
        assert set(svc.get("secrets", [])) <= set(secrets), (name, set(svc.get("secrets", [])) - set(secrets))
    for role in ROLES:
        svc = services[role]
        env = svc["environment"]
        own = {f"{role}_password", "openai_api_key"} | ({"job_secret"} if role == "engineer" else set())
        assert set(svc["secrets"]) == own, role  # its own password, no other role's
        assert env["LAB_NATS_PASSWORD_FILE"] == f"/run/secrets/{role}_password"
        assert env["LAB_LLM_API_KEY_FILE"] == "/run/secrets/openai_api_key"
        assert (env.get("LAB_JOB_SECRET_FILE") == "/run/secrets/job_secret") is (role == "engineer")
    for name, spec in secrets.items():
        assert spec == {"file": f"./secrets/{name}"}, name
    assert "/deploy/secrets/" in (REPO / ".gitignore").read_text().splitlines()
    readme = (REPO / "docs/compose.md").read_text()
    assert "deploy/secrets" in readme and "chown 10001" in readme


def _readme_compose_block() -> str:
    readme = (REPO / "docs/compose.md").read_text()
    section = readme[readme.index("# One host instead: Docker Compose"):]
    return section[section.index("```bash"):section.index("```", section.index("```bash") + 3)]


def test_the_readme_makes_every_compose_secret_and_every_password_the_server_needs() -> None:
    """docs/compose.md's one loop writes every file the compose secrets name, and every password of .env."""
    block = _readme_compose_block()
    loop_users = re.search(r"for u in ([A-Z ]+); do", block).group(1).split()
    assert {f"{u}_PASSWORD" for u in loop_users} == {k for k in _env_example() if k.endswith("_PASSWORD")}
    as_files = re.search(r"case \$u in ([A-Z|]+)\)", block).group(1).split("|")
    assert set(as_files) <= set(loop_users)
    made = {f"{u.lower()}_password" for u in as_files} | set(re.findall(r"> deploy/secrets/(\w+)", block))
    declared = {spec["file"].removeprefix("./secrets/") for spec in _compose()["secrets"].values()}
    assert made == declared, (made ^ declared)
    # The issuer seed and AUTH_ISSUER come from one key pair, made by the lab's own nkey code.
    assert "new_account_seed()" in block and "public_key(s), s)" in block
    assert 'printf %s "$seed" > deploy/secrets/auth_issuer_seed' in block and "AUTH_ISSUER=$issuer" in block


def test_compose_auth_service_is_hardened_like_the_agents_and_reads_its_credentials_from_files() -> None:
    """Compose runs the lab's auth service (k8s lab-auth): per-job runner users need it (issue 16)."""
    compose = _compose()
    auth, agent = compose["services"]["auth"], compose["x-agent"]
    assert auth["command"] == ["python", "-m", "services.auth"]
    for key in ("image", "user", "read_only", "cap_drop", "security_opt", "restart"):
        assert auth[key] == agent[key], key
    assert auth["user"] == "10001:10001" and auth["read_only"] is True and auth["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in auth["security_opt"] and "/tmp" in auth["tmpfs"]
    assert auth["networks"] == ["bus"] and "ports" not in auth  # NATS only: the bus network is internal
    assert auth["depends_on"]["nats"] == {"condition": "service_healthy"}
    assert auth["deploy"]["replicas"] == 2  # one queue group (services.auth.callout.QUEUE): either answers
    env = auth["environment"]
    assert env["LAB_NATS_USER"] == AUTH and env["LAB_NATS_URL"] == "nats://nats:4222"
    files = {var: env[f"{var}_FILE"] for var in ("LAB_NATS_PASSWORD", "LAB_JOB_SECRET", "LAB_AUTH_ISSUER_SEED")}
    assert files == {"LAB_NATS_PASSWORD": "/run/secrets/auth_password", "LAB_JOB_SECRET": "/run/secrets/job_secret",
                     "LAB_AUTH_ISSUER_SEED": "/run/secrets/auth_issuer_seed"}
    assert set(auth["secrets"]) == {"auth_password", "job_secret", "auth_issuer_seed"}
    assert not {"LAB_NATS_PASSWORD", "LAB_JOB_SECRET", "LAB_AUTH_ISSUER_SEED"} & set(env) and "env_file" not in auth
    assert auth["healthcheck"]["test"] == ["CMD", "test", "-f", env["LAB_AUTH_READY_FILE"]]
    assert env["LAB_AUTH_READY_FILE"].startswith("/tmp/")  # a tmpfs: the root filesystem is read-only
    # The engineer hands out per-job users, so it waits for the service that admits them.
    engineer = compose["services"]["engineer"]
    assert engineer["environment"]["LAB_RUNNER_USER"] == JOB_USER
    assert engineer["depends_on"] == {"nats": {"condition": "service_healthy"}, "auth": {"condition": "service_healthy"}}
    assert not [s for s in engineer["secrets"] if "runner" in s] and not [v for v in engineer["volumes"] if "runner" in v]


def _env_example() -> dict[str, str]:
    lines = (REPO / "deploy/.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _conf_variables(conf: str) -> set[str]:
    """The $NAMEs nats-server resolves from its environment: bare values, not quoted subjects or comments."""
    body = "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"(?:^|[\s:,\[])\$([A-Z][A-Z0-9_]*)\b", body))


def test_compose_nats_gets_every_variable_its_config_uses() -> None:
    conf = (REPO / "k8s/base/nats.conf").read_text()
    used = _conf_variables(conf)
    assert {"PI_PASSWORD", "AUTH_PASSWORD", "AUTH_ISSUER", "POD_NAME"} <= used and "JS" not in used
    nats = _compose()["services"]["nats"]
    assert nats["env_file"] == ".env"
    defined = set(_env_example()) | set(nats.get("environment", {}))
    assert used <= defined, used - defined


@contextlib.contextmanager
def _compose_nats(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    """The compose nats service's own command, run for real on local ports with ``env`` as its .env; yields its URL."""
    import time
    import urllib.request

    from bus.server import free_port, server_binary

    nats = _compose()["services"]["nats"]
    assert nats["command"][:2] == ["sh", "-c"]
    client, monitor = free_port(), free_port()
    conf = (REPO / "k8s/base/nats.conf").read_text().replace("0.0.0.0:4222", f"127.0.0.1:{client}").replace(
        "0.0.0.0:8222", f"127.0.0.1:{monitor}").replace("/data/jetstream", str(tmp_path / "js")).replace(
        "/var/run/nats/nats.pid", str(tmp_path / "nats.pid")).replace("0.0.0.0:6222", f"127.0.0.1:{free_port()}")
    (tmp_path / "in.conf").write_text(conf)
    script = nats["command"][2].replace("/etc/nats/nats.conf", str(tmp_path / "in.conf")).replace(
        "/tmp/nats.conf", str(tmp_path / "nats.conf")).replace("exec nats-server", f"exec {server_binary()}")
    proc = subprocess.Popen(["sh", "-c", script], env={**os.environ, **env, **nats.get("environment", {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        health = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # the full check: JetStream's meta layer has a leader (one node: itself)
                health = urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert '"ok"' in health, health
        assert "cluster {" not in (tmp_path / "nats.conf").read_text()
        yield f"nats://127.0.0.1:{client}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _compose_env() -> dict[str, str]:
    """deploy/.env as docs/compose.md's loop fills it: every CHANGE-ME a value, AUTH_ISSUER a real issuer's key."""
    from bus import natsjwt

    env = {k: (f"pw-{k.lower()}" if v == "CHANGE-ME" else v) for k, v in _env_example().items()}
    return env | {"AUTH_ISSUER": natsjwt.public_key(natsjwt.new_account_seed())}


def test_compose_nats_starts_as_one_jetstream_node_from_the_env_example(tmp_path: Path) -> None:
    """The compose nats command, run for real: the Kubernetes config minus its cluster routes serves JetStream alone."""
    import nats as nats_client

    env = _compose_env()
    with _compose_nats(tmp_path, env) as url:

        async def as_pi() -> None:
            nc = await nats_client.connect(url, user="pi", password=env["PI_PASSWORD"], inbox_prefix="_INBOX_pi")
            try:
                await nc.jetstream().account_info()
            finally:
                await nc.close()

        asyncio.run(as_pi())


def test_compose_auth_service_admits_each_job_s_runner_as_its_own_user(tmp_path: Path) -> None:
    """Compose's auth service and engineer settings, run for real against compose's nats (no Docker needed):
    the runner of a job the engineer starts logs in with the key its description carries, and no other
    key; the shared runner user is not what it logs in as."""
    import time

    from bus import natsjwt
    from bus.client import Bus, BusConfig
    from bus.errors import ConnectError
    from bus.jobkeys import JobKeys, new_secret
    from services.runner.runner import Runner

    compose = _compose()
    seed, secret = natsjwt.new_account_seed(), new_secret()
    env = _compose_env() | {"AUTH_ISSUER": natsjwt.public_key(seed)}
    # The files docs/compose.md's loop writes under deploy/secrets/, as compose mounts them at /run/secrets/.
    files = {"auth_password": env["AUTH_PASSWORD"], "job_secret": secret + "\n", "auth_issuer_seed": seed}
    (tmp_path / "secrets").mkdir()
    for name, value in files.items():
        (tmp_path / "secrets" / name).write_text(value)
    auth = compose["services"]["auth"]
    assert set(auth["secrets"]) == set(files)

    def here(value: str) -> str:
        for inside, outside in (("/run/secrets/", f"{tmp_path}/secrets/"), ("/tmp", f"{tmp_path}/tmp")):
            if value.startswith(inside):
                return outside + value.removeprefix(inside)
        return value

    with _compose_nats(tmp_path, env) as url:
        service_env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
        service_env |= {k: here(v) for k, v in auth["environment"].items()} | {"LAB_NATS_URL": url}
        (tmp_path / "tmp").mkdir()
        ready = Path(service_env["LAB_AUTH_READY_FILE"])
        log = (tmp_path / "auth.log").open("wb")
        proc = subprocess.Popen([sys.executable, *auth["command"][1:]], env=service_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not ready.is_file():
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "auth.log").read_text()[-2000:]
                time.sleep(0.1)
            # The job as the compose engineer hands it to its runner (LAB_RUNNER_USER, config.yaml, the job file).
            engineer = compose["services"]["engineer"]["environment"]
            s = DockerSettings.model_validate(yaml.safe_load((REPO / "deploy/config.yaml").read_text())["executor"]["docker"])
            key = JobKeys(secret).key("proj", "proj-exp-1")
            access = runner_access(NatsAccess(url=url, user=engineer["LAB_RUNNER_USER"]), example(), key)
            runner_job = JobSpec.model_validate_json(docker_job_file(example().model_copy(update={"nats": access, "status_key": key}), s))
            user, password = Runner.credential(runner_job.nats)
            assert user == "job.proj.proj-exp-1" and password == key

            async def log_in() -> None:
                bus = await Bus.connect(BusConfig(url=url, user=user, password=password, name="t-runner"), reconnect=False, timeout=15)
                await bus.close()
                for other in (JobKeys(secret).key("proj", "proj-exp-2"), JobKeys(new_secret()).key("proj", "proj-exp-1")):
                    with pytest.raises(ConnectError, match="refused"):
                        await Bus.connect(BusConfig(url=url, user=user, password=other, name="t-forged"), reconnect=False, timeout=15)

            asyncio.run(log_in())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
        assert "runner admitted" in (tmp_path / "auth.log").read_text()
