"""A lab's store is read after `lab down`: status, logs, export, ideas and the web view, through a transient server.

Real `lab up --detach`, one real project on the tiny sleep template (tests/sleep_template, fast
profile), `lab logs -f` following when `lab down` comes, then every read command on the stopped
lab. Writes (`lab say`, `lab run --attach`) are refused in one line naming the lab they looked for.
`lab prune` and `lab backup` run on the lab while it is up; its archive, restored, exports the same bytes.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, lab_cmd
from tests.proc_helpers import processes_with

pytestmark = [pytest.mark.timeout(600)]

TEMPLATE = str(ROOT / "tests" / "sleep_template")
NOTE = "lab is not running; showing what is stored"


def lab(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def refused(r: subprocess.CompletedProcess, home: Path) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert f"LAB_HOME={home}" in lines[0] and "lab up" in lines[0] and "4222" not in lines[0], lines[0]
    return lines[0]


def run_one_project(env: dict, out: Path) -> str:
    r = lab(env, "run", "--template", TEMPLATE, "--fast", "--max-ideas", "1", "--max-rounds", "0", "--out", str(out))
    assert r.returncode in (0, 1), r.stderr[-3000:] + r.stdout[-3000:]
    assert r.stdout.startswith("literature sources: local, template (offline"), r.stdout[:300]  # LAB_LIT_SOURCES, said first
    assert "DECISION:" not in r.stdout and r.stdout.count("ACCEPTED: ") == 1, r.stdout[-3000:]  # the closing summary, once
    [project] = {json.loads(line)["project"] for line in (out / "conversation.jsonl").read_text().splitlines()}
    return project


def web_page(env: dict, home: Path) -> tuple[int, str, str]:
    """`lab web` on the stopped lab: the index page's status and text, and what the command printed."""
    proc = subprocess.Popen(lab_cmd("web", "--port", "0"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "read-only" in line, line + proc.stderr.read()
        url = line.split("lab web: ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read().decode(), line
    finally:
        proc.terminate()
        proc.wait(30)


def test_read_commands_show_a_stopped_labs_store(lab_env, tmp_path):
    home, env = lab_env
    assert lab(env, "up", "--detach").returncode == 0
    follower = None
    try:
        project = run_one_project(env, tmp_path / "run")
        archive = backup_and_prune_running(env, home, tmp_path)
        follower = subprocess.Popen(lab_cmd("logs", "-f"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert project in follower.stdout.readline()  # it follows: the replay has begun
    finally:
        down = lab(env, "down")
    assert down.returncode == 0, down.stderr
    assert not (home / "secrets" / "lab").exists()  # the admin's password went with the lab
    assert follower is not None
    out, errs = follower.communicate(timeout=60)
    assert follower.returncode == 0 and "lab stopped" in errs and "Traceback" not in errs, errs

    status = lab(env, "status")
    assert status.returncode == 0 and NOTE in status.stderr and project in status.stdout, status.stderr + status.stdout
    logs = lab(env, "logs", "--project", project)
    assert logs.returncode == 0 and NOTE in logs.stderr and "copi → pi" in logs.stdout, logs.stderr + logs.stdout
    export = lab(env, "export", project, "--out", str(tmp_path / "exported"))
    assert export.returncode == 0 and (tmp_path / "exported" / "conversation.jsonl").is_file(), export.stderr
    convo = [json.loads(line) for line in (tmp_path / "exported" / "conversation.jsonl").read_text().splitlines()]
    planned = {j: m["body"]["experiment_id"] for m in convo if m["body"]["type"] == "experiment_planned" for j in m["body"]["job_ids"]}
    results = json.loads((tmp_path / "exported" / "export.json").read_text())["results"]
    assert results and all(planned[r["job_id"]] == folder.split("-attempt")[0] for folder, r in results.items()), results
    assert {p.name for p in (tmp_path / "exported" / "results").iterdir()} == set(results)  # named for people, by experiment
    ideas = lab(env, "ideas", "--template", "sleep_template", "--json")
    assert ideas.returncode == 0 and json.loads(ideas.stdout), ideas.stderr
    typo = lab(env, "ideas", "--template", "grokkin")
    assert typo.returncode == 2 and typo.stderr.strip().splitlines()[-1] == "lab: error: unknown template 'grokkin'; did you mean grokking?", typo.stderr
    status_code, page, _ = web_page(env, home)
    assert status_code == 200 and project in page

    refused(lab(env, "say", "--project", project, "hello"), home)
    refused(lab(env, "run", "--attach", project), home)
    assert not processes_with(str(home / "nats" / "nats.conf")), "the transient server outlived its command"


    # `lab backup` of the stopped lab works too; the running lab's archive, restored into a fresh LAB_HOME: `lab export` there
    # writes the same bytes, every file (export.json is as of the log's newest message). services/read/backup.py, services/lab/restore.py.
    stopped = lab(env, "backup", "--out", str(tmp_path / "backups" / "stopped.tar.gz"))
    assert stopped.returncode == 0, stopped.stderr
    fresh = {**env, "LAB_HOME": str(tmp_path / "restored")}
    restored = lab(fresh, "restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    again = lab(fresh, "export", project, "--out", str(tmp_path / "exported-again"))
    assert again.returncode == 0, again.stderr
    assert tree(tmp_path / "exported-again") == tree(tmp_path / "exported")


def backup_and_prune_running(env: dict, home: Path, tmp_path: Path) -> Path:
    """`lab prune` and `lab backup` of the running lab, as its admin (the password `lab up` wrote, 0600); `lab restore` into it refused."""
    assert (home / "secrets" / "lab").stat().st_mode & 0o777 == 0o600
    pruned = lab(env, "prune", "--checkpoints-days", "0", "--failed-days", "0")
    assert pruned.returncode == 0 and pruned.stdout.startswith("deleted "), pruned.stderr
    archive = tmp_path / "backups" / "lab.tar.gz"
    backed = lab(env, "backup", "--out", str(archive))
    assert backed.returncode == 0 and archive.is_file() and archive.stat().st_mode & 0o077 == 0, backed.stderr
    into = lab(env, "restore", "--force", str(archive))
    assert into.returncode == 2 and "lab down" in into.stderr, into.stderr
    return archive


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
