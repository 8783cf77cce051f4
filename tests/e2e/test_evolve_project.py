"""`lab evolve` on a running lab: the evolve project is a project like any other.

Real: `lab up --detach` (nats-server and the six agents), `lab evolve` as a process, the engineer running
each candidate as a job with the local executor and the job runner. The template is a tiny sleeping quadratic
with a hook for the loop (written here: two built-in pickers, the baseline at x = 0 and one at the minimum),
so each job takes a second or two. What is checked: the project in `lab status`, its candidates' experiments
in `lab logs`, its candidates in `lab ideas`, ``evolve/`` written by `lab evolve` and by `lab export` alike, and
the project with each candidate's experiment in the web view (`lab web` on the stored lab after `lab down`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TESTS, lab_cmd

EXPERIMENT = '''"""Sleep a moment, then report a noisy quadratic in the x the hook picks (and which split it scored)."""

import argparse
import json
import random
import time
from pathlib import Path


def pick_x_zero(x, split, seed):
    """Evaluate at zero (the baseline)."""
    return 0.0


def pick_x_near(x, split, seed):
    """Evaluate at the minimum."""
    return 0.3


PICK = pick_x_zero


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--sleep_s", type=float, default=1.0)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    time.sleep(args.sleep_s)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    values = []
    for s in seeds:
        x = PICK(0.0, args.split, s)
        values.append((x - 0.3) ** 2 + 0.01 * random.Random(f"{args.split}-{s}").random() + 0.002 * random.Random(f"{s}-{x}").random())
    final = {"metrics": {"loss": {"mean": sum(values) / len(values), "stderr": 0.0, "values": values}},
             "seeds": seeds, "split": args.split}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "final_info.json").write_text(json.dumps(final))


if __name__ == "__main__":
    main()
'''

EVOLVE_YAML = """\
hook: {anchor: "PICK = pick_x_zero\\n", function: pick_x, signature: "pick_x(x, split, seed) -> float",
       assign: PICK = pick_x, describe: returns the x to evaluate the quadratic at}
fixed: the quadratic
splits: {fit: none, dev: dev seeds, test: test seeds from 1000}
baseline: zero
seeds: {first: 2, step: 1, most: 2, test: 2}
"""


def tiny_template(root: Path) -> Path:
    """The sleeping quadratic with an evolve hook: x is the candidate's, not a knob."""
    folder = root / "evolve_sleep"
    shutil.copytree(TESTS / "sleep_template", folder)
    (folder / "experiment.py").write_text(EXPERIMENT)
    (folder / "evolve.yaml").write_text(EVOLVE_YAML)
    spec = (folder / "template.yaml").read_text().replace("name: sleep_template", "name: evolve_sleep")
    spec = spec.replace("  x:\n    type: float\n    default: 0.0\n    min: -1.0\n    max: 1.0\n    candidates: [0.3, 0.9]\n"
                        "    description: where the quadratic is evaluated\n", "")
    (folder / "template.yaml").write_text(spec)
    return folder


def lab(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def evolve_args(folder: Path, out: Path, seed: int = 0) -> list[str]:
    return ["evolve", "--template", str(folder), "--iterations", "1", "--population", "2", "--fast", "--seed", str(seed), "--out", str(out), "--quiet"]


def check_outputs(out: Path) -> list[dict]:
    """``evolve/`` as the PI stored it: per-seed test values, the baseline compared, the plot."""
    d = out / "evolve"
    final = [json.loads(line) for line in (d / "final.jsonl").read_text().splitlines()]
    assert {c["name"] for c in final} == {"near", "zero"}
    assert all(c["state"] == "succeeded" and c["seeds"] == [1000, 1001] and len(c["values"]) == 2 for c in final)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["comparisons"]["baseline"]["split"] == "test" and summary["verdict"]
    assert (d / "progress.png").read_bytes()[:4] == b"\x89PNG"
    return [json.loads(line) for line in (d / "candidates.jsonl").read_text().splitlines()]


@pytest.mark.timeout(300)
def test_lab_evolve_is_a_project_of_the_running_lab(lab_env, tmp_path: Path) -> None:
    _, env = lab_env
    folder = tiny_template(tmp_path)
    assert lab(env, "up", "--detach", timeout=180).returncode == 0
    try:
        proc = lab(env, *evolve_args(folder, tmp_path / "out"), timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        dev = check_outputs(tmp_path / "out")
        assert [c["name"] for c in dev] == ["zero", "near"] and all(len(c["values"]) == 2 for c in dev)
        project = json.loads((tmp_path / "out" / "export.json").read_text())["project"]
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
        assert lab(env, "export", project, "--out", str(tmp_path / "export")).returncode == 0
        assert (tmp_path / "export" / "evolve" / "final.jsonl").read_text() == (tmp_path / "out" / "evolve" / "final.jsonl").read_text()
    finally:
        lab(env, "down", timeout=120)
    # The web view (on the stored lab, read-only): the project on the index, and each candidate's experiment on its page
    index, page = web_pages(env, project)
    assert project in index and 'id="stage">done<' in page
    assert all(f"<h3>{x} <span" in page for x in state["experiments"]), page[:3000]


def web_pages(env: dict, project: str) -> tuple[str, str]:
    """`lab web` on the stopped lab: the index page's text and the project's page."""
    proc = subprocess.Popen(lab_cmd("web", "--port", "0"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "lab web: " in line, line + proc.stderr.read()
        url = line.split("lab web: ", 1)[1].split()[0].split("?")[0].rstrip("/")
        with urllib.request.urlopen(f"{url}/", timeout=30) as index, urllib.request.urlopen(f"{url}/p/{project}", timeout=30) as page:
            return index.read().decode(), page.read().decode()
    finally:
        proc.terminate()
        proc.wait(30)
