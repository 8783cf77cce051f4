"""The idea archive across projects on one lab: the second project learns from the first.

Real `lab up` and `lab run` processes, a real nats-server, the tiny sleep
template (tests/sleep_template) on its fast profile: each project takes well
under a minute on an unloaded machine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from bus.client import Bus
from bus.store import StateStore
from services.common.config import bus_config
from tests.conftest import ROOT, lab_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TEMPLATE = str(ROOT / "tests" / "sleep_template")


def lab(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def run_project(env: dict, out: Path, seed: int) -> str:
    r = lab(env, "run", "--template", TEMPLATE, "--fast", "--seed", str(seed), "--max-ideas", "1", "--max-rounds", "0", "-q", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
    [project] = {m["project"] for m in convo}
    return project


def ideas_of(out: Path) -> list[dict]:
    convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
    return [m["body"]["idea"] for m in convo if m["body"]["type"] == "novelty_check"]


async def pi_state(project: str) -> dict:
    bus = await Bus.connect(bus_config("copi"), reconnect=False)
    try:
        doc, _ = await (await StateStore.open(bus)).read(f"pi.{project}")
        assert doc is not None
        return dict(doc["state"])
    finally:
        await bus.close()


def test_a_second_project_learns_from_the_first_through_the_archive(lab_env, tmp_path):
    home, env = lab_env
    env = {k: v for k, v in env.items() if not k.startswith(("OPENAI_", "LAB_LLM_", "LAB_MIND"))}  # agents without a model
    home.mkdir(parents=True, exist_ok=True)
    r = lab(env, "up", "--detach")
    assert r.returncode == 0, r.stderr + r.stdout
    try:
        first = run_project(env, tmp_path / "out1", seed=0)
        second = run_project(env, tmp_path / "out2", seed=0)  # the same seed: only the archive can make it differ
        tried_first = [i["changes"] for i in ideas_of(tmp_path / "out1")]
        tried_second = [i["changes"] for i in ideas_of(tmp_path / "out2")]
        assert tried_first and tried_second
        assert not [c for c in tried_second if c in tried_first], (tried_first, tried_second)
        # The second project's PI saw the first's outcomes (with numbers) when it proposed.
        state = asyncio.run(pi_state(second))
        prior = state["prior"]
        assert {r["project"] for r in prior} == {first}
        assert [r["outcome"]["changes"] for r in prior] == tried_first
        assert all(r["outcome"]["improvement"] is not None and r["outcome"]["source"] == "analysis" for r in prior)
        # `lab ideas` lists both projects' ideas, as a table and as JSON.
        r = lab(env, "ideas", "--template", "sleep_template", "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        records = json.loads(r.stdout)
        assert {x["project"] for x in records} == {first, second}
        assert sorted(json.dumps(x["outcome"]["changes"]) for x in records) == sorted(json.dumps(c) for c in tried_first + tried_second)
        r = lab(env, "ideas", "--template", "sleep_template", timeout=60)
        assert r.returncode == 0 and first in r.stdout and second in r.stdout, r.stderr
        r = lab(env, "ideas", "--template", "sleep_templat", timeout=60)  # a typo is refused, not "nothing yet"
        assert r.returncode == 2 and "unknown template 'sleep_templat'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        lab(env, "down")
