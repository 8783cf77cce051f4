"""k8s/components/backup: a nightly `lab backup` CronJob that validates, meets the restricted profile and reaches only NATS.

The component is rendered on top of the gpu overlay through a kustomization of the test's own (no
overlay of the repository includes it; an operator adds one line, docs/backup.md), then every object
is checked like the overlays' (tests/integration/test_k8s_overlays.py): schema, restricted pod
security, and names that agree with the base (the admin's Secret key, the NATS user it logs in as).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from services.cli.app import app
from tests.manifests import REPO, _users_block, assert_restricted, build, needs_kubectl, secret_file, validate

pytestmark = pytest.mark.integration


def render(tmp_path: Path) -> list[dict[str, Any]]:
    rel = os.path.relpath(REPO / "k8s", tmp_path)  # kustomize takes no absolute base path
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{rel}/overlays/gpu"], "components": [f"{rel}/components/backup"],
    }))
    return build(str(tmp_path))  # an absolute path replaces build's k8s/ prefix


@needs_kubectl
def test_the_backup_cronjob_validates_is_restricted_and_logs_in_as_the_admin(tmp_path: Path) -> None:
    docs = render(tmp_path)
    for doc in docs:
        validate(doc)
    [cron] = [d for d in docs if d["kind"] == "CronJob"]
    assert cron["metadata"]["namespace"] == "lab" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert_restricted("lab-backup", pod)
    [c] = pod["initContainers"]
    assert c["command"][:2] == ["lab", "backup"] and "--out" in c["command"]
    # Retention runs after the night's archive, and only if it was written (an init container that fails stops the pod).
    [prune] = pod["containers"]
    assert prune["command"][:2] == ["lab", "prune"] and prune["env"] == c["env"] and prune["securityContext"] == c["securityContext"]
    cli = typer.main.get_command(app)
    for container in (c, prune):  # the options are the commands' own: a typo or a renamed option fails here, not at 03:17
        command = cli.commands[container["command"][1]]  # type: ignore[attr-defined]
        command.make_context(command.name, list(container["command"][2:]))
    assert "--failed-days" in prune["command"] and "--checkpoints-days" in prune["command"]
    out = c["command"][c["command"].index("--out") + 1]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LAB_NATS_URL"] == "nats://nats:4222" and "LAB_NATS_PASSWORD" not in env
    # The archive goes to the PVC the component makes; the admin's password is its Secret key, and the admin reads every stream.
    volumes = {v["name"]: v for v in pod["volumes"]}
    [mount] = [m for m in c["volumeMounts"] if out.startswith(m["mountPath"])]
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", claim) in {(d["kind"], d["metadata"]["name"]) for d in docs}
    secret, key = secret_file(pod, c, "LAB_NATS_PASSWORD_FILE")
    users = {u["user"]: u for u in _users_block((REPO / "k8s/base/nats.conf").read_text())}
    assert secret == "lab-nats-users" and users[env["LAB_NATS_USER"]]["password"] == f"${key}"
    allowed = users[env["LAB_NATS_USER"]].get("permissions", {}).get("publish", {}).get("allow", [">"])
    assert {"$JS.API.>"} & set(allowed) or ">" in allowed, allowed
    # NATS admits the backup pods on 4222, and they may reach nothing else (beyond the DNS every pod gets: components/default-deny).
    labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]

    def selects(selector: dict[str, Any]) -> bool:
        match = selector.get("matchLabels", {})
        return bool(match) and match.items() <= labels.items()

    egress = [r for p in policies if selects(p["podSelector"]) and "Egress" in p["policyTypes"] for r in p["egress"]]
    assert [r["ports"] for r in egress] == [[{"protocol": "TCP", "port": 4222}]], egress
    assert all(t["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "nats" for r in egress for t in r["to"])
    ingress = [r for p in policies if p["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "nats"
               for r in p.get("ingress", []) if any("namespaceSelector" not in f and selects(f.get("podSelector", {})) for f in r["from"])]
    assert ingress and all(r["ports"] == [{"protocol": "TCP", "port": 4222}] for r in ingress), ingress
