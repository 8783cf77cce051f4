"""bench.bus end to end on a real nats-server: both sides deliver every message once; no timing is asserted."""

from __future__ import annotations

import math

import pytest

from bench import bus as bench

pytestmark = pytest.mark.integration

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
    assert err.startswith("bench.bus: --payload must be") and "\n" not in err


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
