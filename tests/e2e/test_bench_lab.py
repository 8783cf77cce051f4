"""bench/lab.py runs and prints its table (tiny parameters); its numbers are for people, never asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_bench_lab_runs_with_tiny_parameters(lab_env):
    _, env = lab_env
    env = {k: v for k, v in env.items() if not k.startswith(("OPENAI_", "LAB_LLM_", "LAB_MIND"))}
    r = subprocess.run([sys.executable, "-m", "bench.lab", "--projects", "1", "--replicas", "1,2", "--latency", "0", "--concurrency", "1"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if line[:2].strip().isdigit()]
    assert [(row[0], row[1], row[2]) for row in rows] == [("1", "1", "1"), ("2", "1", "1")], r.stdout
    assert "goal: 1 projects within 2.0x" in r.stdout and "goal: R=2 at 1.7x R=1's throughput (K=1)" in r.stdout
    # CPU-seconds of the lab's process tree were measured, and K=1's own makespan is part of the bound: never above 1.0x it.
    assert all(float(row[10]) > 0 and float(row[-1]) <= 1.0 for row in rows), r.stdout
