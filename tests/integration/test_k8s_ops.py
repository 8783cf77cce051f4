"""Operating the lab on a shared cluster: NATS that heals, spreads and drains; lab-auth that stays up; jobs held to a quota.

These read the rendered manifests (``kubectl kustomize``) and hold them to what docs/kubernetes.md
("Operating on a shared cluster") promises; the schemas themselves are checked in test_k8s_overlays.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bus.client import Bus, BusConfig
from bus.permissions import ADMIN, USERS
from bus.server import free_port, server_binary
from services.executors.render import KubernetesSettings, k8s_job
from tests.manifests import REPO, _users_block, build, example, executor_settings, needs_kubectl

NATS_LABELS = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "bus"}
_BYTES = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "": 1}
# Kueue's v1beta1 ClusterQueue API (apis/kueue/v1beta1/clusterqueue_types.go): the fields and values
# this lab uses, so a misspelt one (cohortName is v1beta2's) fails here rather than in the cluster.
KUEUE_CQ_SPEC = {"resourceGroups", "cohort", "queueingStrategy", "namespaceSelector", "flavorFungibility", "preemption",
                 "admissionChecks", "admissionChecksStrategy", "stopPolicy", "fairSharing"}
KUEUE_QUOTA = {"name", "nominalQuota", "borrowingLimit", "lendingLimit"}
KUEUE_PREEMPTION = {"reclaimWithinCohort": {"Never", "LowerPriority", "Any"},
                    "withinClusterQueue": {"Never", "LowerPriority", "LowerOrNewerEqualPriority"}}


def quantity(q: str | int) -> float:
    """A Kubernetes quantity (``2Gi``, ``250m``, ``4``) or a Go GOMEMLIMIT (``1843MiB``) as a number (bytes, cores)."""
    m = re.fullmatch(r"(\d+)(m|[KMG]i(?:B)?)?", str(q))
    assert m, q
    return int(m.group(1)) / 1000 if m.group(2) == "m" else int(m.group(1)) * _BYTES[m.group(2) or ""]


def conf_value(conf: str, key: str) -> str:
    m = re.search(rf"^\s*{key}: (\S+)$", conf, re.M)
    assert m, key
    return m.group(1)


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [d] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return d


@needs_kubectl
def test_nats_probes_start_slow_live_on_jetstream_and_serve_when_caught_up() -> None:
    pod = one(build("base"), "StatefulSet", "nats")["spec"]["template"]["spec"]
    [c] = pod["containers"]
    start, live, ready = c["startupProbe"], c["livenessProbe"], c["readinessProbe"]
    assert start["httpGet"] == {"path": "/healthz", "port": "monitor"}
    # A restart on a big store may take long to catch up: liveness must not kill it meanwhile.
    assert start["failureThreshold"] * start["periodSeconds"] >= 600
    assert live["httpGet"] == {"path": "/healthz?js-enabled-only=true", "port": "monitor"}
    assert ready["httpGet"] == {"path": "/healthz", "port": "monitor"}
    assert "initialDelaySeconds" not in live  # the startup probe holds it off


@needs_kubectl
def test_nats_nodes_never_share_a_machine_and_spread_over_zones() -> None:
    pod = one(build("base"), "StatefulSet", "nats")["spec"]["template"]["spec"]
    spread = {t["topologyKey"]: t for t in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert all(t["maxSkew"] == 1 and t["labelSelector"]["matchLabels"] == NATS_LABELS for t in spread.values())
    [anti] = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti["topologyKey"] == "kubernetes.io/hostname" and anti["labelSelector"]["matchLabels"] == NATS_LABELS


@needs_kubectl
def test_nats_drains_in_lame_duck_mode_within_its_grace() -> None:
    pod = one(build("base"), "StatefulSet", "nats")["spec"]["template"]["spec"]
    [c] = pod["containers"]
    conf = (REPO / "k8s/base/nats.conf").read_text()
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "--signal", f"ldm={conf_value(conf, 'pid_file')}"]
    duration = int(conf_value(conf, "lame_duck_duration").removesuffix("s"))
    grace = int(conf_value(conf, "lame_duck_grace_period").removesuffix("s"))
    # The server exits by itself after grace + duration; SIGKILL must come later, with time to flush.
    assert pod["terminationGracePeriodSeconds"] >= grace + duration + 15
    # SIGTERM alone stops nats-server at once: no comment may say it drains.
    assert not re.search(r"On SIGTERM.*lame", conf + (REPO / "k8s/base/nats.yaml").read_text())


@needs_kubectl
def test_nats_go_memory_limit_and_store_limit_leave_headroom() -> None:
    sts = one(build("base"), "StatefulSet", "nats")
    [c] = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    limit = quantity(c["resources"]["limits"]["memory"])
    assert 0.85 * limit <= quantity(env["GOMEMLIMIT"]["value"]) <= 0.95 * limit
    conf = (REPO / "k8s/base/nats.conf").read_text()
    store = quantity(conf_value(conf, "max_file_store").replace("GB", "GiB"))  # nats-server: GB is 1024^3
    [claim] = sts["spec"]["volumeClaimTemplates"]
    volume = quantity(claim["spec"]["resources"]["requests"]["storage"])
    assert store <= 0.85 * volume  # raft logs, snapshots and indexes live beside the messages
    # Memory-backed streams live in the Go heap: at most half of it.
    assert quantity(conf_value(conf, "max_memory_store").replace("MB", "MiB")) <= quantity(env["GOMEMLIMIT"]["value"]) // 2



@needs_kubectl
def test_lab_auth_is_probed_spread_and_kept_up_through_a_drain() -> None:
    docs = build("base")
    auth = one(docs, "Deployment", "lab-auth")
    pod = auth["spec"]["template"]["spec"]
    [c] = pod["containers"]
    ready_file = {e["name"]: e.get("value") for e in c["env"]}["LAB_AUTH_READY_FILE"]
    for probe in (c["readinessProbe"], c["livenessProbe"]):
        assert probe["exec"]["command"] == ["test", "-f", ready_file]
    spread = {t["topologyKey"]: t for t in pod["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["kubernetes.io/hostname"]["nodeTaintsPolicy"] == "Honor"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    selector = auth["spec"]["selector"]["matchLabels"]
    assert all(t["labelSelector"]["matchLabels"] == selector for t in spread.values())
    pdb = one(docs, "PodDisruptionBudget", "lab-auth")["spec"]
    assert pdb["selector"]["matchLabels"] == selector
    assert 1 <= pdb["minAvailable"] < auth["spec"]["replicas"]  # a drain can still proceed

@needs_kubectl
def test_tls_overlay_mounts_the_certificate_for_nats_and_only_the_ca_for_the_lab() -> None:
    docs = build("overlays/tls")
    pod = one(docs, "StatefulSet", "nats")["spec"]["template"]["spec"]
    [c] = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert c["command"] == ["nats-server", "-c", "/etc/nats/nats-tls.conf"]
    [tls] = [m for m in c["volumeMounts"] if m["mountPath"] == "/etc/nats-tls"]
    assert tls["readOnly"] is True and volumes[tls["name"]]["secret"]["secretName"] == "nats-tls"
    [config] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lab-nats-config")]
    assert {"nats.conf", "nats-tls.conf"} <= set(config["data"])
    conf = config["data"]["nats-tls.conf"]
    assert "include ./nats.conf" in conf and conf.count("cert_file: /etc/nats-tls/tls.crt") == 2  # clients and routes
    assert re.search(r"tls \{[^}]*ca_file: /etc/nats-tls/ca\.crt\n\s*verify: true", conf)  # routes: mutual TLS
    # Every lab process trusts the lab's CA, mounted alone: the server's key never leaves the nats pods.
    lab = {n: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("StatefulSet", "Deployment")
           for n in [d["metadata"]["name"]] if n.startswith("lab-")}
    assert len(lab) == 7, sorted(lab)  # six agents and lab-auth
    for name, spec in lab.items():
        [c] = spec["containers"]
        path = {e["name"]: e.get("value") for e in c["env"]}["LAB_NATS_CA_FILE"]
        [m] = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        secret = {v["name"]: v for v in spec["volumes"]}[m["name"]]["secret"]
        assert m["readOnly"] is True and secret["secretName"] == "nats-tls", name
        assert secret["items"] == [{"key": "ca.crt", "path": path.rsplit("/", 1)[1]}], name
    # The Jobs' runners trust it too: the engineer keeps the ConfigMap its config names, in the Jobs' namespace, and its Role
    # may change that one alone (create cannot be limited by name; nothing else about ConfigMaps: no list, watch, delete).
    s = executor_settings(docs)
    assert s.nats_ca_configmap == "lab-nats-ca"
    [role] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "lab-engineer"]
    assert role["metadata"]["namespace"] == s.namespace
    kept = [r for r in role["rules"] if "configmaps" in r["resources"]]
    assert sorted((r.get("resourceNames", []), sorted(r["verbs"])) for r in kept if r["resources"] == ["configmaps"]) == [
        ([], ["create"]), ([s.nats_ca_configmap], ["get", "patch", "update"])] and len(kept) == 2
    runner = k8s_job(example(), s)["spec"]["template"]["spec"]["containers"][0]
    assert ("/run/lab/nats-ca", True) in {(m["mountPath"], m.get("readOnly")) for m in runner["volumeMounts"]}
    # The certificate holds every name a client or a route dials.
    cert = one(docs, "Certificate", "nats-tls")["spec"]
    assert cert["secretName"] == "nats-tls" and {"server auth", "client auth"} <= set(cert["usages"])
    names = set(cert["dnsNames"])
    assert {"nats", "nats.lab.svc", "*.nats-headless", "localhost"} <= names
    assert all(f"*.{h.split('.', 1)[1]}" in names for h in re.findall(r"nats://([^:]+):6222", conf))


async def test_the_cluster_s_admin_manages_jetstream_and_nothing_else(tmp_path: Path) -> None:
    """No unrestricted user in the manifests: the admin, as nats.conf declares it, on a real nats-server."""
    users = {u["user"]: u for u in _users_block((REPO / "k8s/base/nats.conf").read_text())}
    assert set(users) == set(USERS) and all(u.get("permissions") for u in users.values())  # every user restricted
    admin = {**users[ADMIN], "password": "pw"}
    port, mon = free_port(), free_port()
    (tmp_path / "n.conf").write_text(f"listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{mon}\n"
                                     f"jetstream {{ store_dir: {json.dumps(str(tmp_path / 'js'))} }}\n"
                                     f"authorization {{ users: [{json.dumps(admin)}] }}\n")
    proc = subprocess.Popen([server_binary(), "-c", str(tmp_path / "n.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{mon}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        bus = await Bus.connect(BusConfig(url=f"nats://127.0.0.1:{port}", user=ADMIN, password="pw"), reconnect=False)
        try:
            await bus.ensure_topology()  # every stream and bucket, as `lab up`'s admin makes them
            await bus.js.purge_stream("OBJ_lab_artifacts")  # pruning the store is the admin's
            for subject in ("$SYS.REQ.USER.AUTH", "_INBOX_pi.>", "lab.>"):
                await bus.nc.subscribe(subject)
            await bus.nc.publish("lab.convo.p.pi.engineer", b"{}")
            await bus.nc.flush()
            await asyncio.sleep(0.3)
            refused = " ".join(bus.errors).lower()  # nats-py lowercases the server's -ERR
            for what in ('subscription to "$sys.req.user.auth"', 'subscription to "_inbox_pi.>"', 'subscription to "lab.>"',
                         'publish to "lab.convo.p.pi.engineer"'):
                assert what in refused, (what, bus.errors)
        finally:
            await bus.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _executor(docs: list[dict[str, Any]]) -> KubernetesSettings:
    return executor_settings(docs)


def _pod_requests(pod: dict[str, Any]) -> dict[str, float]:
    total: dict[str, float] = {}
    for c in pod["containers"]:
        for k, v in c["resources"].get("requests", {}).items():
            total[f"requests.{k}"] = total.get(f"requests.{k}", 0) + quantity(v)
        for k, v in c["resources"].get("limits", {}).items():
            total[f"limits.{k}"] = total.get(f"limits.{k}", 0) + quantity(v)
        if "nvidia.com/gpu" in c["resources"].get("limits", {}):  # extended resources: the request is the limit
            total["requests.nvidia.com/gpu"] = total.get("requests.nvidia.com/gpu", 0) + quantity(c["resources"]["limits"]["nvidia.com/gpu"])
    return total


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu", "overlays/kueue"])
def test_the_jobs_namespace_has_a_quota_and_limits_every_rendered_job_fits(overlay: str) -> None:
    docs = build(overlay)
    quota = one(docs, "ResourceQuota", "lab-jobs")
    limits = one(docs, "LimitRange", "lab-jobs")
    assert quota["metadata"]["namespace"] == limits["metadata"]["namespace"] == "lab-jobs"
    hard = {k: quantity(v) for k, v in quota["spec"]["hard"].items()}
    assert {"requests.nvidia.com/gpu", "requests.memory", "limits.memory", "requests.cpu", "pods"} <= set(hard)
    [item] = limits["spec"]["limits"]
    assert item["type"] == "Container" and {"cpu", "memory"} <= set(item["default"]) and {"cpu", "memory"} <= set(item["defaultRequest"])
    # A max without a default becomes every container's default limit: never for GPUs or disk.
    assert not {"nvidia.com/gpu", "ephemeral-storage"} & (set(item.get("max", {})) | set(item.get("default", {})))
    s = _executor(docs)
    pod = k8s_job(example(), s)["spec"]["template"]["spec"]
    for c in pod["containers"]:  # the executor names CPU and memory: no LimitRange default changes its pods
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]) and {"cpu", "memory"} <= set(c["resources"]["requests"])
        assert all(quantity(c["resources"]["limits"][k]) <= quantity(item["max"][k]) for k in item["max"]), c["name"]
    need = _pod_requests(pod)
    assert all(need[k] <= hard[k] for k in need if k in hard), (need, hard)
    gpus_at_once = s.gpus or 0  # the executor's own count (gpu overlay); Kueue's is checked below
    assert hard["requests.nvidia.com/gpu"] >= gpus_at_once and hard["pods"] >= s.max_jobs


@needs_kubectl
def test_kueue_queue_joins_a_cohort_borrows_within_the_jobs_quota_and_preempts_by_priority() -> None:
    docs = build("overlays/kueue")
    cq = one(docs, "ClusterQueue", "lab-jobs")  # named after the jobs namespace
    spec = cq["spec"]
    assert cq["apiVersion"] == "kueue.x-k8s.io/v1beta1" and set(spec) <= KUEUE_CQ_SPEC, set(spec) - KUEUE_CQ_SPEC
    assert spec["cohort"]  # borrowingLimit is invalid without one
    pre = spec["preemption"]
    assert set(pre) <= {*KUEUE_PREEMPTION, "borrowWithinCohort"}
    assert all(pre[k] in allowed for k, allowed in KUEUE_PREEMPTION.items() if k in pre)
    assert pre["withinClusterQueue"] == "LowerPriority" and pre["reclaimWithinCohort"] in ("LowerPriority", "Any")
    assert pre["borrowWithinCohort"] == {"policy": "Never"}  # never evicts another team's work to borrow
    [group] = spec["resourceGroups"]
    [flavor] = group["flavors"]
    hard = {k: quantity(v) for k, v in one(docs, "ResourceQuota", "lab-jobs")["spec"]["hard"].items()}
    for r in flavor["resources"]:
        assert set(r) <= KUEUE_QUOTA, r
        assert "borrowingLimit" in r, r["name"]
        most = quantity(r["nominalQuota"]) + quantity(r["borrowingLimit"])
        # Kueue admits by requests; the namespace quota must not refuse what Kueue admitted.
        assert hard[f"requests.{r['name']}"] >= most, (r["name"], most, hard)
