"""Kubernetes for a team's lab: a 3-node NATS cluster that survives a node, agents restarted when their heartbeat stops."""

from __future__ import annotations

import re

from bus.schema import ROLES
from bus.schema.constants import AGENTS_TTL_S
from tests.manifests import REPO, build, needs_kubectl


@needs_kubectl
def test_nats_is_a_three_node_cluster_with_a_disruption_budget_and_lame_duck() -> None:
    docs = build("base")
    [sts] = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats"]
    spec = sts["spec"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    [c] = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # unique server names
    assert {"name": "cluster", "containerPort": 6222} in c["ports"]
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "--signal", "ldm=/var/run/nats/nats.pid"]
    conf = (REPO / "k8s/base/nats.conf").read_text()
    lame = int(re.search(r"^lame_duck_duration: (\d+)s", conf, re.M).group(1))
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > lame
    assert re.search(r"^server_name: \$POD_NAME", conf, re.M) and "pid_file: /var/run/nats/nats.pid" in conf
    routes = re.findall(r"nats://(nats-\d)\.nats-headless:6222", conf)
    assert sorted(routes) == [f"nats-{i}" for i in range(spec["replicas"])]
    assert "# sync_interval: always" in conf  # offered, documented, off by default
    [pdb] = [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "nats"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    headless = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "nats-headless")
    assert {"name": "cluster", "port": 6222, "targetPort": "cluster"} in headless["spec"]["ports"]
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["nats-cluster"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 6222}]


@needs_kubectl
def test_agents_liveness_reads_the_heartbeat_and_streams_are_replicated() -> None:
    docs = build("base")
    agents = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].startswith("lab-")]
    assert len(agents) == len(ROLES)
    for d in agents:
        role = d["metadata"]["name"].removeprefix("lab-")
        assert role in ROLES
        [c] = d["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in c["env"]}
        probe = c["livenessProbe"]["exec"]["command"]
        assert probe[:3] == ["python", "-m", "services.host.alive"] and probe[3] == f"{env['LAB_HOME']['value']}/run/{role}.alive"
        assert float(probe[4]) == AGENTS_TTL_S  # the YAML spells the number; it must be the lab's
        assert env["LAB_NATS_REPLICAS"]["value"] == "3"
