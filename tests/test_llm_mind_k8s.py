"""The optional vLLM overlay: valid manifests, and a kustomization that wires the agents to the server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "k8s" / "overlays" / "vllm"
K8S_VERSION = "1.33"

STUB_BASE = """
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [agent.yaml]
"""
STUB_AGENT = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: lab-pi, namespace: lab, labels: {app.kubernetes.io/component: agent}}
spec:
  serviceName: lab-agents
  selector: {matchLabels: {app: pi}}
  template:
    metadata: {labels: {app: pi, app.kubernetes.io/component: agent}}
    spec: {containers: [{name: agent, image: kenkyu-lab:dev}]}
"""


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_vllm_manifests_validate_strictly() -> None:
    manifests = docs((OVERLAY / "vllm.yaml").read_text())
    assert {d["kind"] for d in manifests} == {"PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy"}
    for doc in manifests:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployment = next(d for d in manifests if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert ":latest" not in container["image"] and ":" in container["image"]


def test_overlay_points_agents_at_the_service() -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../base", "vllm.yaml"]
    literals = dict(item.split("=", 1) for item in kustomization["configMapGenerator"][0]["literals"])
    service = next(d for d in docs((OVERLAY / "vllm.yaml").read_text()) if d["kind"] == "Service")
    assert literals["LAB_LLM_BASE_URL"] == (
        f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}/v1")
    args = next(d for d in docs((OVERLAY / "vllm.yaml").read_text()) if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--model={literals['LAB_LLM_MODEL']}" in args  # the agents ask for the model the server serves


def build(overlay: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return docs(out.stdout)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for kustomize) is not installed")
def test_overlay_builds_and_patches_agent_deployments(tmp_path: Path) -> None:
    """Against a stub base, so the overlay is checked on its own whatever the real base holds."""
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "kustomization.yaml").write_text(STUB_BASE)
    (tmp_path / "base" / "agent.yaml").write_text(STUB_AGENT)
    shutil.copytree(OVERLAY, tmp_path / "overlays" / "vllm")
    built = build(tmp_path / "overlays" / "vllm")
    agent = next(d for d in built if d["metadata"]["name"] == "lab-pi")
    env_from = agent["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    config_map = next(d for d in built if d["kind"] == "ConfigMap")
    assert env_from == [{"configMapRef": {"name": config_map["metadata"]["name"]}}]  # the generated (hashed) name
    assert config_map["data"]["LAB_LLM_BASE_URL"] == "http://vllm.lab.svc:8000/v1"
    for doc in built:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None or not (ROOT / "k8s" / "base" / "kustomization.yaml").is_file(), reason="needs kubectl and k8s/base")
def test_overlay_builds_on_the_real_base() -> None:
    built = build(OVERLAY)
    assert any(d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm" for d in built)
    [generated] = [d["metadata"]["name"] for d in built if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lab-llm-")]
    wired = [
        d["metadata"]["name"] for d in built
        if d["kind"] == "StatefulSet" and any(
            ref.get("configMapRef", {}).get("name") == generated  # the hashed name, not a dangling "lab-llm"
            for ref in d["spec"]["template"]["spec"]["containers"][0].get("envFrom", [])
        )
    ]
    assert wired, "no agent StatefulSet in k8s/base carries the label app.kubernetes.io/component=agent"
