"""A project's budget as a user meets it: the estimate, the approval gate, a refusal, a restart while waiting, a spent budget.

Real `lab up`, `lab run`, `lab approve`/`lab refuse` and `lab status` processes on one lab, with the
tiny sleep template (tests/sleep_template). What these tests cannot show on a machine without a GPU:
a project stopped by its GPU-hour budget. A CPU job's ``gpu_s`` is 0, and faking GPU accounting would
test the fake, so the spent-budget test uses the CPU-hour budget, which takes the same path in the PI
(``agents.pi.budget.spent_reason``; the GPU-hour one is checked from run records in tests/unit/test_pi_budget.py).
The refused project asks for a GPU (the template's ``gpu`` profile) and never runs a job, so it needs none.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, lab_cmd
from tests.e2e.test_lab_run import wait_for
from tests.e2e.test_shared_lab import lab, up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TEMPLATE = str(ROOT / "tests" / "sleep_template")


def start(env: dict, tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / name
    log = open(tmp_path / f"{name}.log", "w")
    args = lab_cmd("run", "--template", TEMPLATE, "--max-ideas", "1", "--max-rounds", "0", "-q", "--out", str(out), *extra)
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), out


def projects(env: dict) -> dict[str, dict]:
    r = lab(env, "status", "--json", timeout=60)
    return {p["project"]: p for p in json.loads(r.stdout)["projects"]} if r.returncode == 0 else {}


def waiting(env: dict) -> list[str]:
    return [name for name, p in projects(env).items() if p["stage"] == "approval"]


def kinds(env: dict, project: str) -> list[str]:
    r = lab(env, "logs", "--json", "--project", project, timeout=60)
    return [json.loads(line)["body"]["type"] for line in r.stdout.splitlines() if line.startswith("{") and '"body"' in line]


def up_with(home: Path, env: dict, config: str) -> None:
    """`lab up --detach` with this config.yaml (the agents read it at start)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(config)
    r = lab(env, "up", "--detach")
    assert r.returncode == 0, r.stderr + r.stdout


CONFIG = "executor:\n  local:\n    capacity: 2\napproval:\n  gpu_hours_over: 0.05\n"


def test_over_the_threshold_a_project_waits_a_refusal_ends_it_and_an_approval_survives_a_restart(lab_env, tmp_path):
    home, env = lab_env
    env = {k: v for k, v in env.items() if not k.startswith(("OPENAI_", "LAB_LLM_", "LAB_MIND"))}
    up_with(home, env, CONFIG)  # this lab's approval threshold: 0.05 GPU-hours
    try:
        # 1. The gpu profile: 12 runs x 60 s x 1 GPU = 0.2 GPU-h, over the threshold: it waits, no job is asked for.
        proc, out = start(env, tmp_path, "gpu", "--profile", "gpu")
        [gpu] = wait_for(lambda: waiting(env), 120, what="a project waiting for approval")
        text = wait_for(lambda: (tmp_path / "gpu.log").read_text() if "lab approve" in (tmp_path / "gpu.log").read_text() else "", 60)
        assert f"waiting for approval (0.20 GPU-h is over the lab's approval threshold of 0.05 GPU-h): `lab approve {gpu}`" in text
        shown = lab(env, "status", "--wide", timeout=60).stdout
        assert "waiting for approval" in shown and f"lab approve {gpu}" in shown and "12 runs x 60 s" in shown
        assert "experiment_request" not in kinds(env, gpu)
        refused = lab(env, "refuse", gpu, "--reason", "no GPUs this week", timeout=60)
        assert refused.returncode == 0 and f"refused {gpu}: no GPUs this week" in refused.stdout, refused.stderr
        proc.wait(120)
        assert proc.returncode == 1  # no paper: nothing ran
        manifest = json.loads((out / "export.json").read_text())
        assert manifest["reason"] == "refused by the co-PI: no GPUs this week" and manifest["accepted"] is False
        assert manifest["spend"]["jobs"] == 0 and manifest["spend"]["estimate"]["gpu_hours"] == 0.2
        assert "experiment_request" not in kinds(env, gpu)
        again = lab(env, "approve", gpu, timeout=60)
        assert again.returncode != 0 and "is not waiting for approval (stage failed)" in again.stderr + again.stdout

        # 2. --require-approval on a CPU project; the whole lab restarts while it waits; the approval after it starts it.
        proc, out = start({**env, "LAB_USER": "alice"}, tmp_path, "cpu", "--fast", "--require-approval")
        [cpu] = wait_for(lambda: [p for p in waiting(env) if p != gpu], 120, what="the second project waiting")
        proc.kill()  # its follower goes with the lab; `lab run --attach` follows it after the restart
        proc.wait(30)
        assert lab(env, "down").returncode == 0
        up_with(home, env, CONFIG)
        assert projects(env)[cpu]["stage"] == "approval"
        assert "experiment_request" not in kinds(env, cpu)
        approved = lab(env, "approve", cpu, timeout=60)
        assert approved.returncode == 0 and f"approved {cpu}" in approved.stdout, approved.stderr
        attached = lab(env, "run", "--attach", cpu, "--out", str(out), "-q", timeout=600)
        assert attached.returncode == 0, attached.stdout[-3000:] + attached.stderr[-2000:]
        manifest = json.loads((out / "export.json").read_text())
        assert manifest["status"] == "finished" and "paper.md" in manifest["files"] and manifest["spend"]["jobs"] >= 1
        assert manifest["started_by"] == "alice"  # what per-user budgets count by (LAB_USER on `lab run`)
        said = kinds(env, cpu)
        assert said.index("project_approval") < said.index("experiment_request")
    finally:
        lab(env, "down")


def test_a_spent_cpu_hour_budget_stops_new_runs_and_the_project_finishes_with_its_paper(lab_env, tmp_path):
    home, env = lab_env
    env = {k: v for k, v in env.items() if not k.startswith(("OPENAI_", "LAB_LLM_", "LAB_MIND"))}
    up(home, env)
    try:
        # A limit of 0.36 ms of CPU: the baseline's job (a Python process) spends it, whatever else runs beside it.
        proc, out = start(env, tmp_path, "spent", "--fast", "--max-ideas", "2", "--max-cpu-hours", "0.0000001")
        proc.wait(600)
        assert proc.returncode == 0, (tmp_path / "spent.log").read_text()[-3000:]
        manifest = json.loads((out / "export.json").read_text())
        assert "CPU-hour budget spent" in manifest["reason"] and "paper.md" in manifest["files"]
        assert manifest["spend"]["limits"]["max_cpu_hours"] == 1e-7 and manifest["spend"]["cpu_s"] > 0
        convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
        order = [m["body"]["type"] for m in convo]
        # A project that does not wait still publishes its estimate first, and the export keeps it beside the spend;
        # the lab was fresh, so no archived job times: the declared time budget.
        assert order.index("project_estimate") < order.index("experiment_request")
        assert manifest["spend"]["estimate"]["job_s_from"].startswith("declared") and not manifest["spend"]["estimate"]["needs_approval"]
        # The first result already spent the budget: no run was asked for after it (ones asked before it ran, in flight).
        first_result = order.index("experiment_result")
        assert "experiment_request" not in order[first_result + 1:], order
        assert order.count("decision") == 1 and "draft_request" in order
    finally:
        lab(env, "down")
