"""The six agent StatefulSets are one definition plus a table of what differs per role.

k8s/base/agents/agent/statefulset.yaml is the only agent StatefulSet; each role is a row folder
(k8s/base/agents/<role>/kustomization.yaml) whose ConfigMap literals role/fill.yaml puts in place,
plus an optional JSON patch (the engineer's). These tests hold the built base to that: blank out
the table's fields and every agent is the same object, so a hand-made seventh copy, or one copy
edited on its own, fails here; and each agent carries exactly its row's values.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import yaml

from bus.schema import ROLES
from tests.manifests import REPO, build, needs_kubectl

AGENTS = REPO / "k8s/base/agents"
BLANK = "<the row's>"


def _yaml(path: str) -> Any:
    return yaml.safe_load((AGENTS / path).read_text())


def table() -> dict[str, dict[str, str]]:
    """Each row's agent-role literals, by role, in the order base/agents lists the rows."""
    rows = {}
    for folder in _yaml("kustomization.yaml")["resources"]:
        assert (AGENTS / folder / "kustomization.yaml").is_file(), f"{folder}: base/agents lists row folders only, no copies"
        row = _yaml(f"{folder}/kustomization.yaml")
        # A row is the template, its table ConfigMap and the shared fill: nothing of its own but a patch.
        assert row["resources"] == ["../agent"] and row["transformers"] == ["../role"], folder
        assert set(row) <= {"apiVersion", "kind", "resources", "configMapGenerator", "transformers", "patches"}, folder
        [generator] = row["configMapGenerator"]
        assert generator["name"] == "agent-role", folder
        rows[folder] = dict(literal.split("=", 1) for literal in generator["literals"])
        assert rows[folder]["role"] == folder  # the folder is named after its role
    return rows


def _fill_paths() -> list[str]:
    """Every field role/fill.yaml writes into the StatefulSet: the table's fields."""
    fill = [d for d in yaml.safe_load_all((AGENTS / "role/fill.yaml").read_text()) if d]
    [replacements] = [d for d in fill if d["kind"] == "ReplacementTransformer"]
    return [path for r in replacements["replacements"] for t in r["targets"] if t["select"]["kind"] == "StatefulSet"
            for path in t["fieldPaths"]]


def _row_patches() -> list[dict[str, Any]]:
    """The JSON patch operations of every row: fields only some roles have, blanked in all."""
    ops = []
    for role in table():
        for patch in _yaml(f"{role}/kustomization.yaml").get("patches", []):
            assert set(patch) == {"path", "target"}, (role, patch)  # a JSON patch file; see _blank
            ops += _yaml(f"{role}/{patch['path']}")
    return ops


def _step(node: Any, segment: str) -> tuple[Any, Any]:
    """(container, key) for one segment of a kustomize fieldPath: name, 2, [key=value] or [dotted.key]."""
    if segment.startswith("[") and "=" in segment:
        key, value = segment[1:-1].split("=", 1)
        [index] = [i for i, item in enumerate(node) if item.get(key) == value]
        return node, index
    if segment.startswith("["):
        return node, segment[1:-1]
    return node, int(segment) if isinstance(node, list) else segment


def _set(doc: dict[str, Any], segments: list[Any], value: Any) -> None:
    node = doc
    for segment in segments[:-1]:
        parent, key = _step(node, segment)
        node = parent[key]
    parent, key = _step(node, segments[-1])
    parent[key] = value


def _blank(sts: dict[str, Any]) -> dict[str, Any]:
    """The StatefulSet with every field the table or a row's patch decides replaced by BLANK."""
    sts = copy.deepcopy(sts)
    for path in _fill_paths():
        _set(sts, re.findall(r"\[[^\]]*\]|[^.\[\]]+", path), BLANK)
    for op in _row_patches():
        pointer = op["path"].lstrip("/").split("/")
        if op["op"] == "replace":
            _set(sts, pointer, BLANK)
        elif op["op"] == "add" and pointer[-1] == "-":  # an entry appended to a list, by its name
            node = sts
            for segment in pointer[:-1]:
                node = node[int(segment) if isinstance(node, list) else segment]
            node[:] = [item for item in node if item.get("name") != op["value"]["name"]]
        else:
            raise AssertionError(f"a row patch this test cannot undo: {op}")
    return sts


def _differences(a: Any, b: Any, at: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{at}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{at}.{i}")]
    return [] if a == b else [at]


def copies_that_drift(agents: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """For each agent, the fields outside the table where it differs from the first one."""
    blanked = {name: _blank(sts) for name, sts in agents.items()}
    first = next(iter(blanked.values()))
    return {name: diff for name, sts in blanked.items() if (diff := _differences(first, sts))}


@pytest.fixture(scope="module")
def agents() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in build("base")
            if d["kind"] == "StatefulSet" and d["metadata"]["labels"].get("app.kubernetes.io/component") == "agent"}


def test_the_table_has_one_row_per_role() -> None:
    rows = table()
    assert list(rows) == list(ROLES)
    for role, row in rows.items():
        assert set(row) == {"role", "nats-password-key", "memory-limit"}, role
        assert row["nats-password-key"] == f"{role.upper()}_PASSWORD"  # k8s/base/secrets.example.yaml's key


@needs_kubectl
def test_every_agent_statefulset_is_a_row_of_the_table(agents: dict[str, dict[str, Any]]) -> None:
    """No agent StatefulSet outside the table: a hand-written seventh has no row and fails here."""
    assert sorted(agents) == sorted(f"lab-{role}" for role in table())
    for name, sts in agents.items():
        assert "ROLE" not in json.dumps(sts), name  # every placeholder of the template was filled


@needs_kubectl
def test_the_agents_are_identical_outside_the_table(agents: dict[str, dict[str, Any]]) -> None:
    assert copies_that_drift(agents) == {}
    # The check is real: one agent's copy edited on its own is caught, with the field named.
    edited = copy.deepcopy(agents)
    edited["lab-writer"]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "200m"
    assert copies_that_drift(edited) == {"lab-writer": [".spec.template.spec.containers.0.resources.requests.cpu"]}
    # ... and so is an env entry only one role has, unless a row's patch adds it.
    edited = copy.deepcopy(agents)
    edited["lab-pi"]["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "LAB_EXTRA", "value": "1"})
    assert list(copies_that_drift(edited)) == ["lab-pi"]


@needs_kubectl
def test_each_agent_carries_its_row_s_values(agents: dict[str, dict[str, Any]]) -> None:
    for role, row in table().items():
        sts = agents[f"lab-{role}"]
        pod = sts["spec"]["template"]["spec"]
        [c] = pod["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        for labels in (sts["metadata"]["labels"], sts["spec"]["selector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"]):
            assert labels["lab.kenkyu.dev/role"] == row["role"], role
        assert c["command"] == ["lab", "agent", row["role"]]
        assert env["LAB_NATS_USER"] == row["role"]
        home = env["LAB_HOME"]
        assert c["readinessProbe"]["exec"]["command"] == ["test", "-f", f"{home}/run/{row['role']}.ready"]
        assert c["livenessProbe"]["exec"]["command"][3] == f"{home}/run/{row['role']}.alive"
        [password] = [v["secret"] for v in pod["volumes"] if v["name"] == "nats-password"]
        assert password["secretName"] == "lab-nats-users" and password["items"] == [{"key": row["nats-password-key"], "path": "password"}]
        assert c["resources"]["limits"]["memory"] == row["memory-limit"]
        # Only the engineer's row patches anything in (its ServiceAccount, the job secret).
        assert (pod["serviceAccountName"] == "lab-engineer") is (role == "engineer")
        assert ("LAB_JOB_SECRET_FILE" in env) is (role == "engineer")
