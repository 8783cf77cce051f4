"""bench.bus end to end on a real nats-server: both sides deliver every message once; no timing is asserted."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from bench import bench_bus as bench
from tests.conftest import ROOT as REPO

N = 50


def test_both_sides_deliver_every_message_exactly_once():
    report = bench.measure(bench.Settings(messages=N, rounds=1, requests=20))
    assert len(report.rounds) == 1
    for side in ("lab", "raw"):
        got = report.rounds[0][side]
        for flow in (got.flow, got.hot):
            assert (flow.published, flow.consumed, flow.unique) == (N, N, N)
            assert flow.redelivered == 0 and flow.left_pending == 0
            assert flow.problem() is None
        assert len(got.round_trips) == 20 and all(t > 0 for t in got.round_trips)
    for label, metric, _fmt, _goal in bench.ROWS:
        ratio = report.ratio(metric)
        assert math.isfinite(ratio) and ratio > 0, label
    # The envelope really reached the asked size through added runs, not padding.
    assert report.sizes["experiment_result"] >= bench.Settings().payload


def test_main_prints_the_table_with_goals(capsys):
    assert bench.main(["--messages", str(N), "--rounds", "1", "--requests", "10"]) == 0
    out = capsys.readouterr().out
    assert "lab/raw" in out and "throughput" in out and "round trip p50" in out
    assert out.count("PASS") + out.count("MISS") == 2


def test_bad_settings_are_one_line(capsys):
    assert bench.main(["--payload", "10000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench.bench_bus: --payload must be") and "\n" not in err


def test_a_lost_or_duplicated_message_is_a_problem():
    ok = bench.Flow(published=3, consumed=3, ids={"a", "b", "c"}, left_pending=0)
    assert ok.problem() is None
    lost = bench.Flow(published=3, consumed=2, ids={"a", "b"}, left_pending=0)
    assert "consumed 2" in (lost.problem() or "")
    twice = bench.Flow(published=3, consumed=3, ids={"a", "b"}, left_pending=0)
    assert "2 distinct ids" in (twice.problem() or "")
    kept = bench.Flow(published=3, consumed=3, ids={"a", "b", "c"}, left_pending=1)
    assert "1 left in the consumer" in (kept.problem() or "")


def test_envelopes_grow_with_the_payload():
    small = len(bench.encode(bench.result_envelopes("p", 1, 512)[0]))
    large = len(bench.encode(bench.result_envelopes("p", 1, 20_000)[0]))
    assert 512 <= small < 20_000 <= large


# ---------------------------------------------------------------- the benches run as the README writes them


def _run(*argv: str, pre: str = "") -> subprocess.CompletedProcess:
    """Run a bench from the repo root without PYTHONPATH, as a user who just cloned it would."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, *argv] if not pre else [sys.executable, "-c", pre, *argv]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["bench_bus", "bench_cluster"])
def test_a_bench_runs_as_a_script_and_as_a_module(name):
    for argv in ([f"bench/{name}.py", "--help"], ["-m", f"bench.{name}", "--help"]):
        done = _run(*argv)
        assert done.returncode == 0, (argv, done.stderr)
        assert f"python -m bench.{name}" in done.stdout


def test_a_missing_test_extra_is_one_line_naming_it():
    # kmock made unimportable, as on a machine that ran only README command 1.
    pre = "import runpy, sys; sys.modules['kmock'] = None; sys.argv = ['bench/bench_cluster.py', '--help']; runpy.run_path(sys.argv[0], run_name='__main__')"
    done = _run(pre=pre)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[test]'" in lines[0] and "kmock" in lines[0], done.stderr
