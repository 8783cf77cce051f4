"""What the manifest tests share: the repository's k8s/ and deploy/ files, read, built and validated.

Overlays are built with ``kubectl kustomize`` (kustomize v5 ships inside kubectl; no separate binary is
needed) and objects are checked with kubernetes-validate in strict mode against Kubernetes 1.33.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bus.schema import JobSpec, NatsAccess
from services.common.config import config_layers
from services.executors.render import KubernetesSettings
from tests.conftest import ROOT as REPO

K8S_VERSION = "1.33"
# Custom resources: no built-in schema to validate against; their own tests check them.
CRD_GROUPS = ("kueue.x-k8s.io/", "cert-manager.io/", "monitoring.coreos.com/")
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with built-in kustomize) is not installed")


def build(overlay: str) -> list[dict[str, Any]]:
    """The overlay's objects, built once per test session (a fresh copy each call: tests may change theirs)."""
    return copy.deepcopy(_built(overlay))


@functools.cache
def _built(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL or "kubectl", "kustomize", str(REPO / "k8s" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith(CRD_GROUPS):
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def lab_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The lab config of a build as the agents read it: the ConfigMap lab-config's files merged in name order."""
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lab-config")]
    with tempfile.TemporaryDirectory() as folder:  # the mounted ConfigMap: one file per key
        for name, text in cm["data"].items():
            assert name.endswith(".yaml"), name  # only *.yaml files are layers
            (Path(folder) / name).write_text(text)
        return config_layers(Path(folder))


def executor_settings(docs: list[dict[str, Any]]) -> KubernetesSettings:
    return KubernetesSettings.model_validate(lab_config(docs)["executor"]["kubernetes"])


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")}


def assert_restricted(name: str, pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True, name
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    for c in [*pod.get("initContainers", []), *pod["containers"]]:  # the restricted profile holds init containers too
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


def _users_block(conf: str) -> list[dict[str, Any]]:
    start = conf.index("users: [")
    block = conf[start + len("users: "): conf.index("\n  ]\n", start) + len("\n  ]")]
    # Only bare values are variables ("password": $PI_PASSWORD); a $ inside a quoted subject is literal.
    return json.loads(re.sub(r"(?<=: )\$([A-Z_]+)", r'"$\1"', block))


def _compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy/compose.yaml").read_text())


def _env_example() -> dict[str, str]:
    lines = (REPO / "deploy/.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
