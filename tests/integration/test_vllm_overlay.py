"""The optional vLLM overlay built with kubectl kustomize: a kustomization that wires the agents to the server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest

from tests.conftest import ROOT
from tests.unit.test_vllm_manifests import K8S_VERSION, OVERLAY, docs

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
