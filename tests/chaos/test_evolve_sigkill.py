"""An evolve project survives the whole lab's SIGKILL: restarted, it finishes with no candidate run twice.

One trial: `lab evolve` on a detached lab (the tiny quadratic of tests/e2e/test_evolve_project.py); while a
candidate's experiment runs, every process of the lab (nats-server, supervisor, agents, runners, experiments)
and the `lab evolve` client are SIGKILLed at once; `lab up --detach` restarts the lab on the same LAB_HOME.
The PI's state and the messages are on JetStream: the project goes on from them and decides; `lab export`
writes its ``evolve/``.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.chaos.test_whole_lab_sigkill import kill_everything, lab, restart, running_experiments
from tests.conftest import lab_cmd
from tests.e2e.test_evolve_project import check_outputs, evolve_args, tiny_template
from tests.e2e.test_lab_run import live_log, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_an_evolve_project_killed_with_the_whole_lab_finishes_on_restart(lab_env, tmp_path: Path) -> None:
    home, env = lab_env
    folder = tiny_template(tmp_path)
    try:
        restart(env)
        with open(tmp_path / "evolve.log", "w") as log:
            client = subprocess.Popen(lab_cmd(*evolve_args(folder, tmp_path / "out")), env=env, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
            wait_for(lambda: running_experiments(home), timeout=300, every=0.5, what="a candidate's experiment running")
            print("killed:", kill_everything(home, [client]))
        restart(env)
        start = [m for m in live_log(env) if m["body"]["type"] == "start_project"]
        project = start[0]["project"]
        wait_for(lambda: any(m["body"]["type"] == "decision" for m in live_log(env, project)), timeout=400, every=2, what="the decision")
        assert lab(env, "export", project, "--out", str(tmp_path / "export")).returncode == 0
        dev = check_outputs(tmp_path / "export")
        assert [c["name"] for c in dev] == ["zero", "near"] and all(c["state"] == "succeeded" for c in dev)
        convo = [json.loads(line) for line in (tmp_path / "export" / "conversation.jsonl").read_text().splitlines()]
        # Each candidate evaluation asked for once and answered once; each job started once (a lost run is a new attempt).
        requested = Counter(m["body"]["experiment_id"] for m in convo if m["body"]["type"] == "experiment_request")
        results = Counter(m["body"]["experiment_id"] for m in convo if m["body"]["type"] == "experiment_result")
        assert len(requested) == 4 and set(requested.values()) == {1} and results == requested, (requested, results)
        runs = [r for m in convo if m["body"]["type"] == "experiment_result" for r in m["body"]["runs"]]
        assert all(r["status"] == "succeeded" and r["attempt"] == len(r["lost"]) + 1 for r in runs)
        for d in home.glob("jobs/*/work/log.txt"):
            assert d.read_text().count("[runner] starting job") == 1, d
        assert sum(m["body"]["type"] == "decision" for m in convo) == 1
    finally:
        lab(env, "down", timeout=120)
