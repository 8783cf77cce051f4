"""A team's lab: several projects at once on one lab's capacity, on two replicas of every role, each project in order on one replica.

Real `lab up` and `lab run` processes, real nats-server(s), real experiment processes
(the tiny sleep template in tests/sleep_template, which records when each run started
and ended). Each project takes well under a minute on an unloaded machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import ROOT, lab_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TEMPLATE = str(ROOT / "tests" / "sleep_template")
CAPACITY = 2


def lab(env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def up(home: Path, env: dict, *extra: str) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(f"executor:\n  local:\n    capacity: {CAPACITY}\n")
    r = lab(env, "up", "--detach", *extra)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads((home / "lab.json").read_text())


def start_projects(env: dict, tmp_path: Path, n: int) -> list[tuple[subprocess.Popen, Path]]:
    runs = []
    for i in range(n):
        out = tmp_path / f"out{i}"
        log = open(tmp_path / f"run{i}.log", "w")
        # --no-cache: these tests measure how projects share the lab, which identical runs served once would hide.
        args = lab_cmd("run", "--template", TEMPLATE, "--fast", "--seed", str(i), "--max-ideas", "1", "--max-rounds", "0", "--no-cache", "-q",
                       "--out", str(out))
        runs.append((subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), out))
    return runs


def finish(runs: list[tuple[subprocess.Popen, Path]], tmp_path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    for i, (proc, _) in enumerate(runs):
        try:
            proc.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
        assert proc.returncode == 0, (tmp_path / f"run{i}.log").read_text()[-3000:]


def check_projects(home: Path, runs: list[tuple[subprocess.Popen, Path]]) -> list[dict]:
    """Every project finished on its own messages and jobs; every job ran once; returns every run's final_info."""
    projects, all_jobs, infos = set(), [], []
    for _, out in runs:
        convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
        [project] = {m["project"] for m in convo}  # zero cross-talk: one project in its own log
        projects.add(project)
        assert [m["body"]["type"] for m in convo].count("decision") == 1
        ids = [m["id"] for m in convo]
        assert len(ids) == len(set(ids)), "a message was published twice"
        results = [m["body"] for m in convo if m["body"]["type"] == "experiment_result"]
        experiments = [r["experiment_id"] for r in results]
        assert len(experiments) == len(set(experiments)) >= 2, "each experiment is answered exactly once"
        for r in results:
            for run in r["runs"]:
                assert run["status"] == "succeeded", run
                all_jobs.append(run["job_id"])
                infos.append(run["final_info"])
        # The results the project collected are its own jobs' only (a run whose runner was lost with a killed
        # agent or node ran again as a new attempt; what the lost attempt uploaded is that project's too).
        mine = {run["job_id"] for r in results for run in r["runs"]}
        lost = {re.search(r"\((j[0-9a-f]+)\)", why).group(1) for r in results for run in r["runs"] for why in run["lost"]}
        folders = {p.name for p in (out / "results").iterdir()}  # results/<experiment-id>[-attemptN]/, each naming its job
        held = {f["job_id"] for name, f in json.loads((out / "export.json").read_text())["results"].items() if name in folders}
        assert mine <= held <= mine | lost
    assert len(projects) == len(runs)
    assert len(all_jobs) == len(set(all_jobs)), "job ids collide across projects"
    # Each job ran once: one job directory each, one runner start.
    for job in all_jobs:
        runner_log = (home / "jobs" / job / "log.txt").read_text()
        assert runner_log.count(f"[runner] starting job {job}") == 1
        recorded = json.loads((home / "jobs" / job / "job.json").read_text())
        assert recorded["project"] in projects
    # (Not the experiments' pids: each runs in its own pid namespace, where it is always the same small number.)
    return infos


def peak_concurrency(infos: list[dict]) -> int:
    events = sorted([(i["started_at"], 1) for i in infos] + [(i["ended_at"], -1) for i in infos])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def handled_lines(home: Path) -> list[dict]:
    """Every "handled" line of every agent's log: role, instance, project, message id, partition, start and end."""
    lines = []
    for path in (home / "logs").glob("*.log"):
        for line in path.read_text().splitlines():
            if line.startswith("{") and '"handled"' in line:
                rec = json.loads(line)
                if rec.get("event") == "handled":
                    rec["ended"] = datetime.fromisoformat(rec["timestamp"]).timestamp()
                    lines.append(rec)
    return lines


def check_order(home: Path, runs: list[tuple[subprocess.Popen, Path]], replicas: int) -> set[str]:
    """Each project's messages went to one replica per role (restarts keep the index), in order, one at a time.

    Returns the instances that handled anything. A message handled again after a SIGKILL took its ack with it
    counts once, where it was first handled.
    """
    lines = handled_lines(home)
    convo = {}
    for _, out in runs:
        msgs = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
        convo[msgs[0]["project"]] = [m["id"] for m in msgs]
    assert set(convo) == {r["project"] for r in lines}
    assert {r["service"] for r in lines} == {"pi", "literature", "engineer", "analyst", "writer", "reviewer"}
    for rec in lines:
        # Replica i of N reads the partitions p with p % N == i, and nothing else.
        index = int(rec["instance"].partition("-")[2] or 1) - 1
        assert rec["partition"] is not None and rec["partition"] % replicas == index, rec
    for project, order in convo.items():
        for role in {r["service"] for r in lines}:
            mine = sorted((r for r in lines if r["project"] == project and r["service"] == role), key=lambda r: r["started"])
            if not mine:
                continue
            assert len({r["instance"] for r in mine}) == 1, f"{role}/{project} on {({r['instance'] for r in mine})}"
            for a, b in zip(mine, mine[1:], strict=False):
                assert b["started"] >= a["ended"], f"{role}/{project}: {a['message_id']} and {b['message_id']} at once"
            ids = list(dict.fromkeys(r["message_id"] for r in mine))
            # In the order of the project's log (job statuses, which are not in it, aside).
            seen = [i for i in ids if i in order]
            assert seen == sorted(seen, key=order.index), f"{role}/{project} out of order"
    return {r["instance"] for r in lines}


def test_eight_projects_on_two_replicas_of_every_role_each_in_order_on_one_replica(lab_env, tmp_path):
    """8 projects at once, two replicas per role: each project's messages on one replica per role, in order, one at a time.

    The same run checks that the projects share the lab's capacity (what a test of its own, four projects on one
    replica per role, checked in a second lab of the same projects): never more than two jobs at once, both slots used.
    """
    home, env = lab_env
    env = {k: v for k, v in env.items() if not k.startswith(("OPENAI_", "LAB_LLM_", "LAB_MIND"))}  # agents without a model
    info = up(home, env, "--replicas", "all=2")
    try:
        assert len(info["agents"]) == 12
        runs = start_projects(env, tmp_path, 8)
        finish(runs, tmp_path)
        infos = check_projects(home, runs)
        # Sixteen or more experiments of one second on a two-slot lab: never more than two at once, and the slots were shared.
        assert peak_concurrency(infos) == CAPACITY
        status = json.loads(lab(env, "status", "--json").stdout)
        assert status["capacity"]["capacity"] == CAPACITY and status["capacity"]["held"] == {}
        assert {b["role"] for b in status["instances"] if not b["stale"]} == {"pi", "literature", "engineer", "analyst", "writer", "reviewer"}
        # An llm mind for one project on this offline lab, whose agents have no key: refused at once, with the reason.
        r = lab(env, "run", "--template", TEMPLATE, "--mind", "llm", "--model", "gpt-4o-mini", timeout=60)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "cannot use an llm mind for gpt-4o-mini: no API key" in r.stderr
        r = lab(env, "run", "--template", TEMPLATE, "--model", "gpt-4o-mini", timeout=60)
        assert r.returncode == 2 and "--model names the llm mind's model: add --mind llm" in r.stderr
    finally:
        lab(env, "down")
    lines = handled_lines(home)
    for role in {r["service"] for r in lines}:
        for project in {r["project"] for r in lines}:
            ids = [r["message_id"] for r in lines if r["service"] == role and r["project"] == project]
            assert len(ids) == len(set(ids)), f"{role} handled a message of {project} twice"  # no kills here
    used = check_order(home, runs, 2)
    # The projects spread over both replicas (a project's partition is a hash of its id: 8 ids in one parity is rare).
    assert len(used) > 6 or len({r["partition"] % 2 for r in lines}) == 1, used
