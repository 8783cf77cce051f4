"""`lab evolve` on a running lab: the evolve project is a project like any other, and it survives the whole lab's SIGKILL.

Real: `lab up --detach` (nats-server and the six agents), `lab evolve` as a process, the engineer running each
candidate as a job with the local executor and the job runner, on the tiny quadratic of tests/evolve_sleep.py
(jobs of a second or two). One lab, two projects (one test: the two used to start a lab each):

- the first finishes as a user runs it; checked: the project in `lab status`, its candidates' experiments in
  `lab logs`, its candidates in `lab ideas`, ``evolve/`` written by `lab evolve` and by `lab export` alike, and
  the project with each candidate's experiment in the web view (`lab web` on the stored lab after `lab down`);
- the second (the same template under another name, so the result cache serves it nothing of the first's): while
  a candidate's experiment runs, every process of the lab (nats-server, supervisor, agents, runners, experiments)
  and the `lab evolve` client are SIGKILLed at once; `lab up --detach` restarts the lab on the same LAB_HOME.
  The PI's state and the messages are on JetStream: the project goes on from them and decides, with no candidate
  run twice; `lab export` writes its ``evolve/``.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.chaos.test_whole_lab_sigkill import kill_everything, lab, restart, running_experiments
from tests.conftest import lab_cmd
from tests.e2e.test_lab_run import live_log, wait_for
from tests.evolve_sleep import check_outputs, evolve_args, tiny_template, web_pages

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_evolve_projects_on_a_running_lab_one_finishing_and_one_killed_with_the_whole_lab(lab_env, evolve_sleep: Path, tmp_path: Path) -> None:
    home, env = lab_env
    try:
        restart(env)
        state = finishes_as_a_project_of_the_lab(env, evolve_sleep, tmp_path / "first")
        killed_with_the_lab_finishes_on_restart(env, home, tiny_template(tmp_path, "evolve_sleep_killed"), tmp_path / "second")
    finally:
        lab(env, "down", timeout=120)
    # The web view (on the stored lab, read-only): the project on the index, and each candidate's experiment on its page
    index, page = web_pages(env, state["project"])
    assert state["project"] in index and 'id="stage">done<' in page
    assert all(f"<h3>{x} <span" in page for x in state["experiments"]), page[:3000]


def finishes_as_a_project_of_the_lab(env: dict, folder: Path, tmp: Path) -> dict:
    """`lab evolve` to its end; the project as `lab status`, `lab logs`, `lab ideas` and `lab export` show it (its status)."""
    out = tmp / "out"
    proc = lab(env, *evolve_args(folder, out), timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dev = check_outputs(out)
    assert [c["name"] for c in dev] == ["zero", "near"] and all(len(c["values"]) == 2 for c in dev)
    project = json.loads((out / "export.json").read_text())["project"]
    # `lab status`: the project, done, each candidate's runs as its experiments
    doc = json.loads(lab(env, "status", "--json").stdout)
    state = next(p for p in doc["projects"] if p["project"] == project)
    assert state["stage"] == "done" and set(state["experiments"]) == {"i0-c0-dev-s0", "i0-c1-dev-s0", "test-i0-c1-test-s1000", "test-i0-c0-test-s1000"}
    # `lab logs`: the conversation, each candidate asked of the engineer once
    log = [json.loads(line) for line in lab(env, "logs", "--json", "--project", project).stdout.splitlines() if line.strip()]
    asked = [m["body"]["experiment_id"] for m in log if m["body"]["type"] == "experiment_request"]
    assert sorted(asked) == sorted(state["experiments"]) and sum(m["body"]["type"] == "decision" for m in log) == 1
    # `lab ideas`: the candidate the baseline was compared with, archived with its outcome
    ideas = json.loads(lab(env, "ideas", "--template", "evolve_sleep", "--json").stdout)
    assert [(r["project"], r["outcome"]["title"], r["outcome"]["status"]) for r in ideas] == [(project, "near", "better")]
    # `lab export` writes the same evolve/ files
    assert lab(env, "export", project, "--out", str(tmp / "export")).returncode == 0
    assert (tmp / "export" / "evolve" / "final.jsonl").read_text() == (out / "evolve" / "final.jsonl").read_text()
    return state


def killed_with_the_lab_finishes_on_restart(env: dict, home: Path, folder: Path, tmp: Path) -> None:
    """`lab evolve` SIGKILLed with the whole lab while a candidate runs; restarted, the project decides with nothing run twice."""
    tmp.mkdir()
    before = {m["project"] for m in live_log(env) if m["body"]["type"] == "start_project"}
    with open(tmp / "evolve.log", "w") as log:
        client = subprocess.Popen(lab_cmd(*evolve_args(folder, tmp / "out")), env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        wait_for(lambda: running_experiments(home), timeout=300, every=0.5, what="a candidate's experiment running")
        print("killed:", kill_everything(home, [client]))
    restart(env)
    [project] = [m["project"] for m in live_log(env) if m["body"]["type"] == "start_project" and m["project"] not in before]
    wait_for(lambda: any(m["body"]["type"] == "decision" for m in live_log(env, project)), timeout=400, every=2, what="the decision")
    assert lab(env, "export", project, "--out", str(tmp / "export")).returncode == 0
    dev = check_outputs(tmp / "export")
    assert [c["name"] for c in dev] == ["zero", "near"] and all(c["state"] == "succeeded" for c in dev)
    convo = [json.loads(line) for line in (tmp / "export" / "conversation.jsonl").read_text().splitlines()]
    # Each candidate evaluation asked for once and answered once; each job started once (a lost run is a new attempt).
    requested = Counter(m["body"]["experiment_id"] for m in convo if m["body"]["type"] == "experiment_request")
    results = Counter(m["body"]["experiment_id"] for m in convo if m["body"]["type"] == "experiment_result")
    assert len(requested) == 4 and set(requested.values()) == {1} and results == requested, (requested, results)
    runs = [r for m in convo if m["body"]["type"] == "experiment_result" for r in m["body"]["runs"]]
    assert runs and all(r["status"] == "succeeded" and r["attempt"] == len(r["lost"]) + 1 and not r["reused_from"] for r in runs)
    for d in home.glob("jobs/*/work/log.txt"):
        assert d.read_text().count("[runner] starting job") == 1, d
    assert sum(m["body"]["type"] == "decision" for m in convo) == 1
