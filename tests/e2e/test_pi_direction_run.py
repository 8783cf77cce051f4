"""`lab run --template char_lm --fast --direction "...learning rate..."`: the lr ideas run, after the positive control."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import lab_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_a_direction_on_the_learning_rate_runs_lr_ideas_below_the_fast_baseline(lab_env, tmp_path):
    _, env = lab_env
    out = tmp_path / "out"
    args = lab_cmd("run", "--template", "char_lm", "--fast", "--seed", "0", "--max-ideas", "2", "--max-runs", "4",
                   "--max-rounds", "0", "--direction", "does a smaller learning rate lower the validation loss?", "--out", str(out))
    r = subprocess.run(args, env={**env, "LAB_LIT_SOURCES": "local,template"}, capture_output=True, text=True, timeout=1100)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
    runs = [m["body"] for m in convo if m["body"]["type"] == "experiment_request"]
    assert [b["idea"]["id"] if b["idea"] else "baseline" for b in runs[:2]] == ["baseline", "positive-control"]
    assert runs[0]["seeds"] == runs[1]["seeds"]
    ideas = [b["idea"] for b in runs[2:]]
    assert ideas and all(set(i["changes"]) == {"lr"} and i["changes"]["lr"] < 0.003 for i in ideas)
    assert all("instead of 0.003" in i["hypothesis"] for i in ideas)
