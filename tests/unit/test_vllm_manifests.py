"""The optional vLLM overlay's own manifests: valid, and their Service is where the agents are told to find the model."""

from __future__ import annotations

import kubernetes_validate
import yaml

from tests.conftest import ROOT

OVERLAY = ROOT / "k8s" / "overlays" / "vllm"
K8S_VERSION = "1.33"


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_vllm_manifests_validate_strictly() -> None:
    manifests = docs((OVERLAY / "vllm.yaml").read_text())
    assert {d["kind"] for d in manifests} == {"PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy", "ResourceQuota"}
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
