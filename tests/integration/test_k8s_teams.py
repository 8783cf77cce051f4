"""Many teams on one cluster: each lab installed with k8s/components/team is its own, and none collides.

Three labs are rendered side by side: the kueue overlay as it is (namespaces lab and lab-jobs), the example
team k8s/overlays/team-physics, and a third made here the way docs/deploy-kubernetes.md says (a folder with
a LabTeam and the component). No two objects of the three may share (kind, namespace, name), the
cluster-scoped Kueue objects differ, and every place one lab names a namespace names one of its own.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT as REPO
from tests.manifests import KUBECTL, build, executor_settings, needs_kubectl, validate

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ResourceFlavor", "ClusterQueue", "WorkloadPriorityClass"}
SHARED = {"kube-system", "monitoring"}  # namespaces every lab may name: DNS, the scraper


def _team(tmp: Path, name: str, priority: int, overlay: str = "overlays/kueue") -> list[dict[str, Any]]:
    folder = tmp / name
    folder.mkdir()
    rel = Path(os.path.relpath(REPO / "k8s", folder))
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [str(rel / overlay), "team.yaml"], "components": [str(rel / "components/team")]}))
    (folder / "team.yaml").write_text(yaml.safe_dump({"apiVersion": "lab.kenkyu.dev/v1", "kind": "LabTeam", "metadata": {"name": "team"},
                                                      "spec": {"namespace": name, "jobsNamespace": f"{name}-jobs", "priority": priority}}))
    out = subprocess.run([KUBECTL or "kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return {("lab", "lab-jobs"): build("overlays/kueue"), ("physics", "physics-jobs"): build("overlays/team-physics"),
            ("chemistry", "chemistry-jobs"): _team(tmp_path_factory.mktemp("teams"), "chemistry", 50)}


def _namespace_references(node: Any, at: str = "") -> list[tuple[str, str]]:
    """(where, namespace) of every namespace an object names: metadata and subjects, selectors, matchNames."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("namespace", "kubernetes.io/metadata.name") and isinstance(value, str):
                found.append((f"{at}.{key}", value))
            elif key == "matchNames":
                found += [(f"{at}.matchNames", v) for v in value]
            else:
                found += _namespace_references(value, f"{at}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _namespace_references(item, f"{at}.{i}")
    return found


@needs_kubectl
def test_three_labs_side_by_side_share_no_name(labs: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    for (lab, _), docs in labs.items():
        for d in docs:
            key = (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
            assert key not in seen, f"{key} is in both {seen[key]} and {lab}"
            seen[key] = lab
    cluster_scoped = {lab: {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in CLUSTER_SCOPED} for (lab, _), docs in labs.items()}
    assert all(len(names) == 5 for names in cluster_scoped.values()), cluster_scoped  # 2 Namespaces and 3 Kueue objects each


@needs_kubectl
def test_every_namespace_a_lab_names_is_its_own(labs: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    for (lab, jobs), docs in labs.items():
        for d in docs:
            validate(d)
            for where, ns in _namespace_references(d):
                assert ns in {lab, jobs} | SHARED, (lab, d["kind"], d["metadata"]["name"], where, ns)
        by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        # Where each side of the lab finds the other: NATS lets the jobs namespace in, jobs reach NATS's.
        runners = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": jobs}},
                   "podSelector": {"matchLabels": {"app.kubernetes.io/component": "job-runner"}}}
        assert runners in by[("NetworkPolicy", "nats-ingress")]["spec"]["ingress"][0]["from"]
        [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
        assert binding["metadata"]["namespace"] == jobs and binding["subjects"] == [{"kind": "ServiceAccount", "name": "lab-engineer", "namespace": lab}]
        engineer = {e["name"]: e.get("value") for e in by[("StatefulSet", "lab-engineer")]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert engineer["LAB_RUNNER_NATS_URL"] == f"nats://nats.{lab}.svc:4222"
        # Kueue: the ClusterQueue admits this lab's jobs namespace only; its objects are named after it.
        cq = by[("ClusterQueue", jobs)]["spec"]
        assert cq["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": jobs}}
        assert cq["resourceGroups"][0]["flavors"][0]["name"] == jobs and ("ResourceFlavor", jobs) in by
        [local] = [d for d in docs if d["kind"] == "LocalQueue"]
        assert local["metadata"]["namespace"] == jobs and local["spec"]["clusterQueue"] == jobs
        # The engineer submits to its own namespace, with its own priority class.
        s = executor_settings(docs)
        assert s.namespace == jobs and s.extra_labels["kueue.x-k8s.io/priority-class"] == jobs
        assert ("WorkloadPriorityClass", jobs) in by
    priorities = {lab: next(d["value"] for d in docs if d["kind"] == "WorkloadPriorityClass") for (lab, _), docs in labs.items()}
    assert priorities == {"lab": 100, "physics": 200, "chemistry": 50}


@needs_kubectl
@pytest.mark.parametrize("overlay", ["overlays/tls", "overlays/vllm", "overlays/monitoring"])
def test_a_team_s_tls_model_server_and_monitors_name_its_own_namespace(overlay: str, tmp_path: Path) -> None:
    """What only some overlays have: the NATS certificate's names, the vLLM URL, the PodMonitors' namespaces."""
    docs = _team(tmp_path, "bio", 100, overlay)
    for d in docs:
        for where, ns in _namespace_references(d):
            assert ns in {"bio", "bio-jobs"} | SHARED, (d["kind"], d["metadata"]["name"], where, ns)
    if overlay == "overlays/tls":
        [cert] = [d for d in docs if d["kind"] == "Certificate" and d["metadata"]["name"] == "nats-tls"]
        names = set(cert["spec"]["dnsNames"])
        assert {"nats.bio", "nats.bio.svc", "nats.bio.svc.cluster.local", "*.nats-headless.bio.svc"} <= names
        assert not {n for n in names if ".lab" in n}
        # The engineer keeps the Jobs' CA ConfigMap in the team's own jobs namespace, where its Role lets it.
        s = executor_settings(docs)
        [role] = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "lab-engineer"]
        assert s.namespace == role["metadata"]["namespace"] == "bio-jobs"
        assert {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [s.nats_ca_configmap], "verbs": ["get", "update", "patch"]} in role["rules"]
    if overlay == "overlays/vllm":
        [llm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lab-llm")]
        assert llm["data"]["LAB_LLM_BASE_URL"] == "http://vllm.bio.svc:8000/v1"
    if overlay == "overlays/monitoring":
        monitors = {d["metadata"]["name"]: d["spec"]["namespaceSelector"] for d in docs if d["kind"] == "PodMonitor"}
        # Every one watches the team's lab, but the job pods' in the team's jobs namespace.
        assert monitors == {n: {"matchNames": ["bio-jobs" if n == "lab-jobs" else "bio"]}
                            for n in ("lab-agents", "lab-nats", "lab-auth", "lab-web", "lab-jobs")}
        [jobs] = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "jobs-metrics-ingress"]
        assert jobs["metadata"]["namespace"] == "bio-jobs"
