"""`lab evolve` as a user runs it: whole runs (offline and with a scripted model), and one-line errors for bad arguments.

The whole runs are real: the embedded lab `lab evolve` starts (nats-server and
the six agents: the PI runs the loop, the engineer each candidate), the local
executor, the job runner and model_merging's fast profile on CPU (2 iterations
x 3 candidates, a few minutes each on 2 cores). What they check is read back from the files
the run wrote: which split each recorded run scored, the preference pairs,
the plot, and failed candidates recorded next to the ones that ran.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import lab_cmd
from tests.fake_openai import FakeOpenAI, Reply, Request
from tests.unit.test_evolve_loop import CRASH, FORBIDDEN, HALF_SUM, MEDIAN, SIGN_MEAN

# ------------------------------------------------------------------ whole runs


def records(out: Path) -> tuple[list[dict], list[dict]]:
    d = out / "evolve"
    dev = [json.loads(line) for line in (d / "candidates.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (d / "final.jsonl").read_text().splitlines()]
    return dev, test


def check_run(out: Path, iterations: int, population: int) -> tuple[list[dict], list[dict]]:
    """What every run must hold: three splits respected, per-seed scores, pairs only with evidence, the plot, every candidate's code."""
    d = out / "evolve"
    dev, test = records(out)
    assert len(dev) == iterations * population
    assert {c["split"] for c in dev} == {"dev"} and {c["split"] for c in test} == {"test"}
    # dev seeds and test seeds never meet; each ran candidate keeps one score per seed
    assert all(max(c["seeds"]) < 1000 and len(c["seeds"]) == len(c["values"]) >= 3 for c in dev if c["state"] == "succeeded")
    assert test and all(t["state"] == "succeeded" and min(t["seeds"]) >= 1000 and t["job_ids"] for t in test)
    summary = json.loads((d / "summary.json").read_text())
    # the final runs are the dev leader, the baseline and the best built-in (fewer when they coincide)
    assert any(t["name"] == "task_arithmetic" for t in test) and summary["verdict"]
    jobs = [j for c in dev + test for j in c["job_ids"]]
    assert len(set(jobs)) == len(jobs) == summary["runs"]
    for pair in (json.loads(line) for line in (d / "preferences.jsonl").read_text().splitlines()):
        assert {"prompt", "chosen", "rejected", "evidence"} <= set(pair) and pair["chosen"] != pair["rejected"]
        assert pair["evidence"]["comparison"]["lo"] > 0 and pair["evidence"]["comparison"]["split"] == "dev"
    assert (d / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((d / "candidates").glob("*.py"))) == len(dev) + len(test)
    assert len((d / "iterations.jsonl").read_text().splitlines()) == iterations
    return dev, test


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_lab_evolve_offline(lab_env, tmp_path: Path) -> None:
    _, env = lab_env
    (tmp_path / "crash.py").write_text(CRASH)
    (tmp_path / "forbidden.py").write_text(FORBIDDEN)
    out = tmp_path / "out"
    proc = subprocess.run(
        lab_cmd("evolve", "--template", "model_merging", "--iterations", "2", "--population", "3", "--fast", "--final-top", "2",
                "--out", str(out), "--seed-code", str(tmp_path / "crash.py"), "--seed-code", str(tmp_path / "forbidden.py"), "--quiet"),
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dev, _ = check_run(out, 2, 3)
    crash = next(c for c in dev if c["name"] == "crash")
    assert crash["state"] == "failed" and "evolve-test: this candidate crashes" in crash["reason"] and crash["job_ids"]
    refused = next(c for c in dev if c["name"] == "forbidden")
    assert refused["state"] == "failed" and refused["reason"].startswith("edit refused") and "subprocess" in refused["reason"]
    assert not refused["job_ids"]  # refused before any job ran
    assert all(c["state"] == "succeeded" for c in dev if c["iteration"] == 1)  # the loop went on after the failures
    assert any(c["parents"] and c["diff"] for c in dev if c["iteration"] == 1)  # the second iteration builds on the first's best


def llm_config(path: Path, base_url: str) -> Path:
    path.write_text(yaml.safe_dump({"mind": {
        "model": "fake-model", "base_url": base_url, "api_key_env": "LAB_E2E_NO_SUCH_KEY", "timeout_s": 60,
        "retries": {"invalid_output": 2, "transport": 2, "backoff_s": 0.2, "backoff_max_s": 1.0},
    }}))
    return path


def scripted(req: Request) -> Reply:
    """Iteration 0 (beside the baseline): one candidate that crashes and one that runs; iteration 1: three more."""
    prompt = req.last_user
    if "best algorithms so far" not in prompt:
        drafts = [("crasher", CRASH), ("half_sum", HALF_SUM), ("sign_sum", SIGN_MEAN)]
    else:
        drafts = [("median", MEDIAN), ("half_sign", SIGN_MEAN.replace("return (", "return 0.5 * (")),
                  ("sum", "def merge(task_vectors, args, gen):\n    return task_vectors.sum(0)\n")]
    return Reply.json({"candidates": [{"name": n, "rationale": f"scripted {n}", "code": c} for n, c in drafts]})


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_lab_evolve_with_a_scripted_llm(lab_env, tmp_path: Path) -> None:
    _, env = lab_env
    out = tmp_path / "out"
    with FakeOpenAI(scripted) as fake:
        config = llm_config(tmp_path / "mind.yaml", fake.base_url)
        env = {**{k: v for k, v in env.items() if not k.startswith("LAB_LLM_")}, "LAB_MIND_CONFIG": str(config),
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        proc = subprocess.run(
            lab_cmd("evolve", "--iterations", "2", "--population", "3", "--fast", "--mind", "llm", "--final-top", "1", "--out", str(out), "--quiet"),
            env=env, capture_output=True, text=True, timeout=400,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    dev, test = check_run(out, 2, 3)
    crash = next(c for c in dev if c["name"] == "crasher")
    assert crash["state"] == "failed" and "this candidate crashes" in crash["reason"]
    assert [c["state"] for c in dev if c["iteration"] == 1] == ["succeeded"] * 3
    # One model call per iteration; the second shows the first's best code as an example.
    assert len(fake.requests) == 2
    # "sum" is task arithmetic's code under another name: one algorithm, named once (as the baseline). half_sum, the
    # same algorithm only once the coefficient is fitted, is not asserted: on the SGD testbed (evolve.yaml) its
    # fit/dev predictions differed from the baseline's by float rounding (dev scores equal to 1e-9), so the
    # prediction hash rightly calls it another behaviour there.
    twin = next(c for c in dev if c["name"] == "sum")
    assert twin["same_as"] == next(c["id"] for c in dev if c["name"] == "task_arithmetic")
    best0 = max((c for c in dev if c["iteration"] == 0 and c["state"] == "succeeded" and not c["same_as"]), key=lambda c: c["score"])
    assert best0["code"].strip() in fake.requests[1].last_user
    assert "task_arithmetic" in {c["name"] for c in dev if c["iteration"] == 0}  # the baseline runs first, to compare with


@pytest.mark.parametrize("args, says", [
    (["--population", "0"], "--population must be at least 1"),
    (["--template", "grokking"], "declares no hook for `lab evolve`"),
    (["--seed-code", "/no/such/file.py"], "--seed-code /no/such/file.py: cannot read"),
    (["--max-runs", "2"], "leaves no run for the loop"),
])
def test_bad_arguments_are_one_line(lab_env, args: list[str], says: str) -> None:
    _, env = lab_env
    proc = subprocess.run(lab_cmd("evolve", *args), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
