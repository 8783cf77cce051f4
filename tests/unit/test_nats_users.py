"""The NATS users the cluster's server config declares mirror the bus's permissions, role by role; the web view's user speaks only as the co-PI."""

from __future__ import annotations

import json
import re

import yaml

from bus.permissions import ADMIN, USERS, WEB, permissions
from tests.manifests import REPO, _users_block


def test_nats_users_mirror_bus_permissions_and_secret_template() -> None:
    users = _users_block((REPO / "k8s/base/nats.conf").read_text())
    assert [u["user"] for u in users] == list(USERS)
    for u in users:
        assert u["password"] == f"${u['user'].upper()}_PASSWORD"
        if u["user"] != ADMIN:  # the cluster's admin is restricted (tests/integration/test_k8s_ops.py)
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


def test_the_web_nats_user_reads_and_speaks_only_as_the_co_pi() -> None:
    allow = permissions(WEB)["publish"]["allow"]
    assert [s for s in allow if s.startswith("lab.")] == ["lab.convo.*.copi.*"]
    assert not [s for s in allow if s.startswith(("$KV.", "$O.", "$JS.ACK")) or ".PURGE." in s or ".DELETE." in s and "CONSUMER" not in s]
    assert not [s for s in allow if "STREAM.CREATE" in s or "STREAM.DELETE" in s or "DURABLE" in s]
    [web] = [u for u in _users_block((REPO / "k8s/base/nats.conf").read_text()) if u["user"] == WEB]
    assert web["permissions"] == permissions(WEB)
