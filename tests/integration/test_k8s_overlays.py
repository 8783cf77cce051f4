"""Everything the lab would apply to a cluster validates against Kubernetes' own schemas.

Overlays are built with ``kubectl kustomize`` (kustomize v5 ships inside
kubectl; no separate binary is needed) and every object is checked with
kubernetes-validate in strict mode against Kubernetes 1.33 (the Jobs the
executor renders: tests/unit/test_rendered_jobs.py). Beyond the schema, the tests hold the manifests to what the
lab promises: restricted pod security, least-privilege RBAC, default-deny
networking, and names that agree across files (Secrets, NATS users, roles).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from bus.permissions import AUTH, JOB_USER
from bus.schema import ROLES
from services.executors.render import KubernetesSettings, k8s_ca_configmap, k8s_job, k8s_job_secret
from tests.manifests import (
    REPO,
    assert_restricted,
    build,
    container,
    example,
    executor_settings,
    needs_kubectl,
    pod_specs,
    secret_file,
    validate,
)

OVERLAYS = ["base", "overlays/gpu", "overlays/cpu", "overlays/vllm", "overlays/kueue", "overlays/replicas", "overlays/tls", "overlays/monitoring",
            "overlays/release"]
# A team's lab (k8s/components/team) in its own namespaces: the same checks, with its names.
TEAMS = {"overlays/team-physics": ("physics", "physics-jobs")}
# Kinds without a namespace; everything else must name one.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ResourceFlavor", "ClusterQueue", "WorkloadPriorityClass"}
# Created by hand (docs/deploy-kubernetes.md "Create the namespaces and the secrets"), never by the build.
HAND_MADE_SECRETS = {(d["metadata"]["namespace"], d["metadata"]["name"]): set(d["stringData"])
                     for d in yaml.safe_load_all((REPO / "k8s/base/secrets.example.yaml").read_text())}


def namespaced_pods(docs: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(d["metadata"]["namespace"], d["metadata"]["name"], d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


@needs_kubectl
@pytest.mark.parametrize("overlay", [*OVERLAYS, *TEAMS])
def test_overlay_builds_validates_and_is_restricted(overlay: str) -> None:
    docs = build(overlay)
    for doc in docs:
        validate(doc)
    lab, jobs = TEAMS.get(overlay, ("lab", "lab-jobs"))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("StatefulSet", "nats") in kinds and ("Namespace", lab) in kinds and ("Namespace", jobs) in kinds
    for d in docs:
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in d["metadata"], (d["kind"], d["metadata"]["name"])
        else:
            assert d["metadata"].get("namespace") in (lab, jobs), (d["kind"], d["metadata"]["name"])
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
    return executor_settings(docs)


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
    engineer = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "lab-engineer")
    if "LAB_NATS_CA_FILE" in {e["name"] for e in engineer["spec"]["template"]["spec"]["containers"][0]["env"]}:
        ca = k8s_ca_configmap(s, "<the engineer's CA>")  # a lab on TLS: the executor keeps its CA's ConfigMap for the Jobs
        built[(s.namespace, ca["metadata"]["name"])] = set(ca["data"])
    # cert-manager writes each Certificate's Secret (k8s/components/nats-tls): its certificate, key and CA.
    made |= {(d["metadata"]["namespace"], d["spec"]["secretName"]): {"tls.crt", "tls.key", "ca.crt"} for d in docs if d["kind"] == "Certificate"}
    readme = (REPO / "docs/deploy-kubernetes.md").read_text() + (REPO / "docs/kubernetes.md").read_text()
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
            plain = {e["name"] for e in c.get("env", []) if "value" in e}
            assert not plain & {"LAB_NATS_PASSWORD", "LAB_JOB_SECRET", "OPENAI_API_KEY", "HF_TOKEN"}, (name, c["name"])
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
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_agent_serves_metrics_on_its_named_port(overlay: str) -> None:
    agents = [d for d in build(overlay) if d["kind"] == "StatefulSet" and d["metadata"]["name"].startswith("lab-")]
    assert len(agents) == len(ROLES)
    for d in agents:
        [c] = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("metrics", int(env["LAB_METRICS_PORT"]))], d["metadata"]["name"]


@needs_kubectl
def test_the_monitoring_overlay_scrapes_the_agents_and_nats_and_lets_only_the_monitoring_namespace_in() -> None:
    docs = build("overlays/monitoring")
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodMonitor"}
    assert set(monitors) == {"lab-agents", "lab-nats", "lab-auth", "lab-web", "lab-jobs"}
    monitors = {n: m for n, m in monitors.items() if n not in ("lab-web", "lab-jobs")}  # the next test's: pods of other manifests
    sets = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("StatefulSet", "Deployment")}
    for monitor in monitors.values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["namespace"] == "lab"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["lab"]}
        [endpoint] = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    selected = {name: sorted(n for n, d in sets.items() if m["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items())
                for name, m in monitors.items()}
    assert selected == {"lab-agents": sorted(f"lab-{r}" for r in ROLES), "lab-nats": ["nats"], "lab-auth": ["lab-auth"]}
    # lab-auth serves its series on the port its PodMonitor names, as the agents do.
    [auth] = sets["lab-auth"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in auth["env"]}
    assert [(p["name"], p["containerPort"]) for p in auth["ports"]] == [("metrics", int(env["LAB_METRICS_PORT"]))]
    # NATS: the exporter sidecar serves the port `metrics`, reading the monitor port on localhost; restricted like the rest.
    pod = sets["nats"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["nats", "exporter"]
    exporter = pod["containers"][1]
    assert exporter["ports"] == [{"name": "metrics", "containerPort": 7777}] and "http://localhost:8222/" in exporter["args"]
    assert "-jsz=all" in exporter["args"]
    assert_restricted("nats", pod)
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == "lab"}
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    for name, selector, port in (("agents-metrics-ingress", {"app.kubernetes.io/component": "agent"}, 9464),
                                 ("nats-metrics-ingress", {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "bus"}, 7777),
                                 ("auth-metrics-ingress", {"app.kubernetes.io/component": "auth"}, 9464)):
        ingress = policies[name]["spec"]
        assert ingress["podSelector"] == {"matchLabels": selector} and ingress["policyTypes"] == ["Ingress"]
        assert ingress["ingress"] == [{"from": monitoring, "ports": [{"protocol": "TCP", "port": port}]}]
    # Without the component nothing may reach the ports: the base has no ingress to the agents at all, and one container in NATS.
    base = build("base")
    assert not [d for d in base if d["kind"] in ("PodMonitor", "NetworkPolicy") and "metrics-ingress" in d["metadata"]["name"]]
    [nats] = [d for d in base if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats"]
    assert [c["name"] for c in nats["spec"]["template"]["spec"]["containers"]] == ["nats"]


@needs_kubectl
def test_the_monitoring_component_scrapes_the_web_view_and_running_job_pods_on_their_metrics_ports() -> None:
    """lab-web and lab-jobs select pods of other manifests (the web overlay's, the executor's): each selects them,
    names a port they open and that the pod's process serves on, and a NetworkPolicy lets only `monitoring` reach it."""
    docs = build("overlays/monitoring")
    monitors = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodMonitor"}
    policies = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    settings = executor_settings(docs)
    job = k8s_job(example(), settings)
    web = {d["kind"]: d for d in build("overlays/web")}["Deployment"]
    for monitor, namespace, policy, pod in (("lab-web", "lab", "web-metrics-ingress", web["spec"]["template"]),
                                            ("lab-jobs", settings.namespace, "jobs-metrics-ingress", job["spec"]["template"])):
        spec = monitors[monitor]
        assert spec["namespaceSelector"] == {"matchNames": [namespace]}, monitor
        assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), monitor
        [endpoint] = spec["podMetricsEndpoints"]
        [served] = [(c, p) for c in pod["spec"]["containers"] for p in c.get("ports", []) if p["name"] == endpoint["port"]]
        env = {e["name"]: e.get("value") for e in served[0]["env"]}
        assert int(env.get("LAB_METRICS_PORT") or env["LAB_RUNNER_METRICS_PORT"]) == served[1]["containerPort"], monitor
        ingress = policies[(namespace, policy)]
        assert ingress["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        assert ingress["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                                       "ports": [{"protocol": "TCP", "port": served[1]["containerPort"]}]}]
    # In a job pod only the runner opens it; the experiment container listens on nothing.
    assert [c["name"] for c in job["spec"]["template"]["spec"]["containers"] if c.get("ports")] == ["runner"]


@needs_kubectl
def test_engineer_rbac_is_limited_to_jobs_pods_events_and_making_job_secrets_in_the_jobs_namespace() -> None:
    docs = build("base")
    [role] = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "lab-jobs"
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    jobs = {("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")}
    jobs |= {("jobset.x-k8s.io", "jobsets", v) for v in ("create", "get", "list", "watch", "delete")}  # multi-node jobs
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
    # The pods of one multi-node job reach each other (rendezvous, collectives); only gang pods, only each other.
    gang = policies[("lab-jobs", "jobs-gang")]
    only_gangs = {"matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]}
    assert gang["podSelector"] == only_gangs and set(gang["policyTypes"]) == {"Ingress", "Egress"}
    assert gang["ingress"] == [{"from": [{"podSelector": only_gangs}]}] and gang["egress"] == [{"to": [{"podSelector": only_gangs}]}]


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
    nats_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "bus"}}}
    assert policies["auth-egress"]["egress"] == [{"to": [nats_pods], "ports": [{"protocol": "TCP", "port": 4222}]}]
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
    if overlay.endswith(("gpu", "kueue", "tls", "monitoring", "release")):  # tls, monitoring, release: the gpu overlay and more
        assert int(limits["nvidia.com/gpu"]) >= 1 and pod["nodeSelector"] and pod["tolerations"]
    else:
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod
    # The job image is the agents' image (the CUDA build of it on GPU overlays): one release, no drift.
    agent_images = {c["image"] for _, pod in pod_specs(docs).items() for c in pod["containers"]
                    if c["image"].startswith("ghcr.io/kenkyu-lab/")}
    [agent_image] = agent_images
    if overlay == "overlays/release":  # a release pins both by digest, from one repository
        assert "@sha256:" in agent_image and "@sha256:" in s.image and agent_image.split("@")[0] == s.image.split("@")[0]
    else:
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
    # vLLM's GPU is outside the jobs' Kueue queue: namespace lab has its own GPU quota, exactly what vLLM asks for.
    [quota] = [d for d in docs if d["kind"] == "ResourceQuota" and d["metadata"]["namespace"] == "lab"]
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": server["resources"]["requests"]["nvidia.com/gpu"]}
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
