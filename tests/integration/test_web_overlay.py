"""The optional web view on Kubernetes (k8s/overlays/web) validates like the rest and keeps to the lab's rules."""

from __future__ import annotations

import yaml

from bus.permissions import WEB
from tests.manifests import REPO, assert_restricted, build, needs_kubectl, pod_specs, secret_file, validate


@needs_kubectl
def test_the_web_overlay_builds_validates_and_is_restricted() -> None:
    docs = build("overlays/web")
    for doc in docs:
        validate(doc)
    pods = pod_specs(docs)
    for name, pod in pods.items():
        assert_restricted(name, pod)
    web = pods["lab-web"]
    assert web["automountServiceAccountToken"] is False
    [c] = web["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert c["command"][:2] == ["lab", "web"] and env["LAB_NATS_USER"]["value"] == WEB
    assert secret_file(web, c, "LAB_NATS_PASSWORD_FILE") == ("lab-nats-users", "WEB_PASSWORD")
    assert "LAB_NATS_PASSWORD" not in env
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # Reached only through port-forward: a ClusterIP Service, egress to NATS only, NATS lets it in.
    [svc] = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "lab-web"]
    assert svc["spec"]["type"] == "ClusterIP"
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert [rule["ports"] for rule in policies["web-egress"]["egress"]] == [[{"protocol": "TCP", "port": 4222}]]
    nats_in = policies["nats-from-web"]
    assert nats_in["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "bus"
    web_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "web"}}}
    assert nats_in["ingress"] == [{"from": [web_pods], "ports": [{"protocol": "TCP", "port": 4222}]}]
    # Only the web view's objects: applying it beside the gpu or cpu overlay leaves the lab's config alone.
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "NetworkPolicy"}
    assert all(d["metadata"]["namespace"] == "lab" for d in docs)
    # The secrets it names are in the template the README points at.
    secrets = {d["metadata"]["name"]: d["stringData"] for d in yaml.safe_load_all((REPO / "k8s/base/secrets.example.yaml").read_text())}
    # The link's token: a file of the lab-web Secret (a read-only mount), never a variable.
    assert "LAB_WEB_TOKEN" not in env
    token_secret, token_key = secret_file(web, c, "LAB_WEB_TOKEN_FILE")
    assert token_key in secrets[token_secret] and token_key == "LAB_WEB_TOKEN"


@needs_kubectl
def test_the_base_does_not_include_the_web_view() -> None:
    assert not [d for d in build("base") if d["metadata"]["name"] == "lab-web"]
