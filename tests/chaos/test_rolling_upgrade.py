"""A rolling upgrade of a running lab, as docs/operations.md describes it, with a project running across it.

`lab up --cluster 3`; one project of a sleep template whose runs take SLEEP_S. While it runs:

- each nats-server node in turn goes into lame duck mode (SIGUSR2: it takes no new clients and hands its
  JetStream leaderships on), then is stopped; the supervisor starts it again on its store (the "new
  version"), and the next node waits until every stream has a leader and all three replicas current.
  nats-server ignores SIGTERM while in lame duck mode (it evicts its clients after a 10 s grace, then
  exits by itself, as on Kubernetes); to keep the test short it gets SIGINT after LAME_DUCK_S instead;
- then each agent in turn gets SIGTERM (it stops fetching, finishes the messages in hand, gives the others
  back: services/host/agent.py) and the supervisor starts its replacement.

The project then finishes with one decision, no message published twice, no handler run twice for one
message (a message whose ack was lost is only republished from the outbox), and every job run once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from bus.client import Bus, BusConfig
from bus.errors import ConnectError
from bus.permissions import COPI
from tests.conftest import lab_cmd
from tests.e2e.test_shared_lab import TEMPLATE, check_projects, finish, handled_lines, lab, up
from tests.proc_helpers import processes_with

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SLEEP_S = 60  # each run's compute: longer than the upgrade takes, so the project spans it
LAME_DUCK_S = 3  # the lame duck's head start before SIGINT (in production: its whole grace, docs/operations.md)


def wait(check: Callable[[], object], what: str, timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def slow_template(tmp_path: Path) -> str:
    tpl = tmp_path / "sleep_template"
    shutil.copytree(TEMPLATE, tpl)
    yaml_file = tpl / "template.yaml"
    text = yaml_file.read_text().replace("    default: 2.0\n", f"    default: {SLEEP_S}.0\n", 1)
    assert text != yaml_file.read_text()
    yaml_file.write_text(text.replace("time_budget_s: 60", f"time_budget_s: {SLEEP_S * 3}"))
    return str(tpl)


async def _streams_current(url: str, password: str, node: str) -> bool:
    """Every stream (and bucket) has a leader and all its replicas current, ``node`` among them."""
    try:
        bus = await Bus.connect(BusConfig(url=url, user=COPI, password=password, name="upgrade-check"), reconnect=False, timeout=5)
    except ConnectError:
        return False
    nc = bus.nc
    try:
        names = json.loads((await nc.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)).data).get("streams") or []
        for name in names:
            info = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)).data)
            cluster = info.get("cluster") or {}
            replicas = cluster.get("replicas") or []
            peers = {cluster.get("leader"), *(r["name"] for r in replicas)}
            if not cluster.get("leader") or (replicas and node not in peers):
                return False
            if not all(r.get("current") and not r.get("offline") for r in replicas):
                return False
        return bool(names)
    except Exception:  # a node on its way down or up: not current yet
        return False
    finally:
        await bus.close()


def node_pid(home: Path, n: int) -> int | None:
    [conf] = home.rglob(f"n{n}/nats.conf")
    pids = processes_with(str(conf))
    return pids[0] if pids else None


def roll_nats(home: Path, url: str, password: str) -> None:
    for n in (1, 2, 3):
        old = node_pid(home, n)
        assert old, f"node n{n} is not running"
        os.kill(old, signal.SIGUSR2)  # lame duck: no new clients, its JetStream leaderships handed on
        time.sleep(LAME_DUCK_S)
        try:
            os.kill(old, signal.SIGINT)  # a lame duck ignores SIGTERM
        except ProcessLookupError:
            pass  # the lame duck already went
        wait(lambda n=n, old=old: node_pid(home, n) not in (None, old), f"node n{n} started again")  # type: ignore[misc]
        wait(lambda n=n: asyncio.run(_streams_current(url, password, f"lab-n{n}")), f"JetStream current after n{n}")


def roll_agents(home: Path, running: Callable[[], bool]) -> tuple[list[str], int]:
    """Replace every agent in turn; the names, and how many were replaced while the project still ran."""
    names = sorted(json.loads((home / "lab.json").read_text())["agents"])
    during = 0
    for name in names:
        old = json.loads((home / "lab.json").read_text())["agents"][name]
        os.kill(old, signal.SIGTERM)  # drains: stops fetching, finishes what it holds, gives the rest back

        def replaced(name: str = name, old: int = old) -> bool:
            now = json.loads((home / "lab.json").read_text())["agents"].get(name)
            return now not in (None, old) and (home / "run" / f"{name}.ready").is_file()

        wait(replaced, f"a new {name}")
        during += running()
    return names, during


def test_a_project_runs_across_a_rolling_upgrade_of_nats_and_every_agent(lab_env, tmp_path):
    home, env = lab_env
    env = {k: v for k, v in env.items() if not k.startswith(("OPENAI_", "LAB_LLM_", "LAB_MIND"))}  # agents without a model
    info = up(home, env, "--cluster", "3")
    try:
        out = tmp_path / "out0"
        log = open(tmp_path / "run0.log", "w")
        proc = subprocess.Popen(lab_cmd("run", "--template", slow_template(tmp_path), "--seed", "0", "--max-ideas", "1", "--max-rounds",
                                        "0", "--no-cache", "-q", "--out", str(out)),
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        runs = [(proc, out)]
        wait(lambda: [p for p in handled_lines(home) if p["service"] == "pi"], "the project to start")
        roll_nats(home, info["url"], info["credentials"][COPI])
        assert proc.poll() is None, "the project ended before NATS was rolled: raise SLEEP_S"
        names, during = roll_agents(home, lambda: proc.poll() is None)
        # On a loaded machine the last agents may be replaced after the project has ended; the first is
        # replaced while it runs.
        assert during >= 1, "the project ended before any agent was replaced: raise SLEEP_S"
        finish(runs, tmp_path)
        check_projects(home, runs)  # one decision, no message twice, every job run once
        lines = handled_lines(home)
    finally:
        lab(env, "down")
    # Every message a role handled ran its handler once: a redelivery (an ack lost with a node) is only republished.
    handled = Counter((r["service"], r["message_id"]) for r in lines)
    republished = Counter()
    for path in (home / "logs").glob("*.log"):
        for line in path.read_text().splitlines():
            if line.startswith("{") and "already handled" in line:
                rec = json.loads(line)
                republished[(rec["service"], rec["message_id"])] += 1
    runs_of = {key: n - republished[key] for key, n in handled.items()}
    assert set(runs_of.values()) == {1}, {k: v for k, v in runs_of.items() if v != 1}
    supervisor_log = (home / "supervisor.log").read_text()
    for n in (1, 2, 3):
        assert f"nats-server n{n} exited; restarting it" in supervisor_log
    for name in names:  # each agent left on its own, drained, with status 0
        assert f"agent {name} exited with 0; restarting" in supervisor_log, name
