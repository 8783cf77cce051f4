"""A 3-node NATS cluster with two replicas of every role, under SIGKILLs.

Agents and a server node are SIGKILLed while several projects run, and every
project still ends, each handled in order.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest

from tests.e2e.test_shared_lab import CAPACITY, check_order, check_projects, finish, lab, peak_concurrency, start_projects, up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_cluster_of_three_with_two_replicas_per_role_survives_sigkills(lab_env, tmp_path):
    """Three nats-servers, two agents per role; a node and random agent replicas are SIGKILLed mid-run."""
    home, env = lab_env
    info = up(home, env, "--cluster", "3", "--replicas", "all=2")
    try:
        assert len(info["server_pids"]) == 3 and len(info["agents"]) == 12
        runs = start_projects(env, tmp_path, 3)
        rng = random.Random(11)
        time.sleep(8)
        victims = [info["server_pids"][1], *(info["agents"][name] for name in rng.sample(sorted(info["agents"]), 3))]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(2)
        finish(runs, tmp_path)
        infos = check_projects(home, runs)
        assert peak_concurrency(infos) <= CAPACITY
        # Killed replicas came back with their index: each project still on one replica per role, in order.
        check_order(home, runs, 2)
        log = (home / "supervisor.log").read_text()
        assert "nats-server n2 exited; restarting it" in log
        status = json.loads(lab(env, "status", "--json").stdout)
        assert len(status["nats"].split(",")) == 3
    finally:
        lab(env, "down")
