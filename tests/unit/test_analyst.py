"""The analyst handler on constructed runs, with a dict-backed artifact store."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from agents import stats
from agents.analyst.offline import make
from agents.analyst.workflow import ROLE, build_report
from agents.base import Context
from bus.schema import AnalysisDone, AnalysisReport, AnalysisRequest, Envelope, FinalInfo, MetricStat, RunRecord
from tests.fakes import MemoryStore

SPEC = {
    "name": "toy",
    "title": "Toy",
    "task": "classify toys",
    "knobs": {
        "lr": {"type": "float", "default": 0.01},
        "steps": {"type": "int", "default": 100, "fairness": True},
    },
    "metrics": {"acc": {"direction": "higher", "primary": True}, "loss": {"direction": "lower"}},
    "baseline": {},
}


def run(job, idea, acc, loss, seeds=None, overrides=None, status="succeeded", reason=""):
    seeds = seeds if seeds is not None else list(range(len(acc)))
    fi = None
    if status == "succeeded":
        fi = FinalInfo(
            seeds=seeds,
            metrics={
                "acc": MetricStat(mean=sum(acc) / len(acc), stderr=0.0, values=acc),
                "loss": MetricStat(mean=sum(loss) / len(loss), stderr=0.0, values=loss),
            },
        )
    return RunRecord(job_id=job, experiment_id=f"e-{job}", idea_id=idea, overrides=overrides or {}, seeds=seeds,
                     status=status, reason=reason, final_info=fi)


async def handle(runs, spec=SPEC):
    ctx = Context(project="p1", role="analyst", state=None, artifacts=MemoryStore(), mind=make(0, {}))
    env = Envelope(project="p1", sender="pi", recipient="analyst", body=AnalysisRequest(round=1, spec=spec, runs=runs))
    await ROLE().handle(env, ctx)
    assert len(ctx.outputs) == 1
    body, to = ctx.outputs[0]
    assert to == "pi"
    return body, ctx


BASE = run("j1", "baseline", [0.80, 0.81, 0.79], [0.50, 0.52, 0.51])
GOOD = run("j2", "wd", [0.90, 0.91, 0.89], [0.30, 0.31, 0.29], overrides={"lr": 0.02})


async def test_comparisons_respect_direction_and_figures_are_uploaded():
    body, ctx = await handle([BASE, GOOD])
    assert isinstance(body, AnalysisDone)
    rep = body.report
    by_metric = {c.metric: c for c in rep.comparisons}
    acc, loss = by_metric["acc"], by_metric["loss"]
    assert acc.direction == "higher" and acc.diff == pytest.approx(0.10) and acc.improvement == pytest.approx(0.10)
    assert loss.direction == "lower" and loss.diff == pytest.approx(-0.21) and loss.improvement == pytest.approx(0.21)
    assert loss.effect_size > 0 and loss.verdict == "better" and loss.better
    assert acc.verdict == "better" and acc.n_baseline == acc.n_idea == 3
    assert rep.primary_metric == "acc" and rep.round == 1
    assert sorted(rep.figures) == ["p1/figures/round-1/acc.png", "p1/figures/round-1/loss.png"]
    for name in rep.figures:
        assert ctx.artifacts.data[name].startswith(b"\x89PNG")
    assert "wd raised acc" in rep.summary and "wd lowered loss" in rep.summary
    assert not rep.flags


async def test_worse_idea_is_called_worse():
    bad = run("j3", "bad", [0.60, 0.61, 0.59], [0.90, 0.92, 0.91])
    rep = (await handle([BASE, bad]))[0].report
    assert {c.metric: c.verdict for c in rep.comparisons} == {"acc": "worse", "loss": "worse"}
    assert all(c.improvement < 0 and c.effect_size < 0 and not c.better for c in rep.comparisons)


async def test_missing_baseline_gives_no_comparisons_and_a_flag():
    failed_base = run("j0", "baseline", [], [], seeds=[0, 1, 2], status="failed", reason="oom")
    rep = (await handle([failed_base, GOOD]))[0].report
    assert rep.comparisons == []
    assert rep.flags[0].kind == "missing_baseline"
    (failed,) = [f for f in rep.flags if f.kind == "failed_run"]
    assert failed.job_id == "j0" and failed.idea_id == "baseline" and failed.text == "failed run: j0 (idea 'baseline'): oom"
    assert rep.figures == ["p1/figures/round-1/acc.png", "p1/figures/round-1/loss.png"]  # the idea alone is still plotted


async def test_unfair_knob_is_named():
    longer = run("j4", "long", [0.90, 0.92, 0.91], [0.3, 0.3, 0.31], overrides={"steps": 400})
    rep = (await handle([BASE, longer, GOOD]))[0].report
    (unfair,) = [f for f in rep.flags if f.kind == "unfair_baseline"]
    assert unfair.idea_id == "long" and unfair.text.startswith("unfair baseline: idea 'long' changes the fairness knob 'steps'")
    assert "400" in unfair.detail


async def test_pooling_later_seeds_and_seed_flags():
    more = run("j5", "wd", [0.92, 0.90], [0.28, 0.30], seeds=[3, 4])
    rep = (await handle([BASE, GOOD, more]))[0].report
    acc = next(c for c in rep.comparisons if c.metric == "acc")
    assert acc.n_idea == 5 and acc.n_baseline == 3
    assert acc.idea_mean == pytest.approx((0.90 + 0.91 + 0.89 + 0.92 + 0.90) / 5)
    (fewer,) = [f for f in rep.flags if f.kind == "baseline_fewer_seeds"]
    assert (fewer.idea_id, fewer.metric, fewer.seeds, fewer.baseline_seeds) == ("wd", "acc", 5, 3)
    assert fewer.text == "baseline has fewer seeds: baseline 3 vs idea 'wd' 5 for 'acc'"
    # The later seeds came in another experiment, after the first was analysed: the alpha is spent over the two looks.
    (added,) = [f for f in rep.flags if f.kind == "seeds_added"]
    assert added.idea_id == "wd" and acc.looks == 2 and acc.p_adjusted == pytest.approx(min(1.0, 2 * acc.p_value))
    two = run("j6", "tiny", [0.9, 0.8], [0.3, 0.4])
    rep = (await handle([BASE, two]))[0].report
    (few,) = [f for f in rep.flags if f.kind == "too_few_seeds"]
    assert (few.idea_id, few.seeds, few.required_seeds) == ("tiny", 2, 3)
    assert few.text == "too few seeds: 'tiny' has 2 seed(s) for 'acc'; at least 3 are needed"


async def test_rerun_seed_keeps_later_value_and_is_flagged():
    again = run("j7", "wd", [0.50, 0.50, 0.50], [0.9, 0.9, 0.9])
    rep, arms = build_report("p1", AnalysisRequest(round=0, spec=SPEC, runs=[BASE, GOOD, again]))
    assert arms["wd"].list("acc") == [0.5, 0.5, 0.5]
    assert [(f.kind, f.idea_id, f.job_id) for f in rep.flags] == [("duplicate_seed", "wd", "j7")] * 3


async def test_degenerate_values_leave_no_nan_in_the_report():
    const_b = run("j8", "baseline", [1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    const_i = run("j9", "same", [1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    one = run("j10", "one", [0.7], [0.2])
    body, _ = await handle([const_b, const_i, one])
    for c in body.report.comparisons:
        assert all(math.isfinite(v) for v in (c.p_value, c.effect_size, c.ci_low, c.ci_high, c.idea_stderr))
        assert c.verdict == "inconclusive" and c.p_value == 1.0
    assert any(f.kind == "zero_variance" and f.idea_id == "same" and f.text.startswith("zero variance: every seed of 'same'")
               for f in body.report.flags)
    Envelope.model_validate_json(Envelope(project="p1", sender="analyst", recipient="pi", body=body).model_dump_json())


def test_a_bad_spec_never_reaches_the_analyst():
    """The spec is a typed contract: a request with a bad metric direction fails validation (and goes to the dead letters)."""
    with pytest.raises(ValidationError, match="direction"):
        AnalysisRequest(round=1, spec={**SPEC, "metrics": {"acc": {"direction": "up"}}}, runs=[BASE])


async def test_report_is_deterministic():
    a = (await handle([BASE, GOOD]))[0].report
    b = (await handle([BASE, GOOD]))[0].report
    assert a == b


async def test_arms_that_share_seeds_are_paired_and_others_use_welch():
    base = run("j1", "baseline", [0.71, 0.80, 0.65, 0.90], [0.5, 0.6, 0.4, 0.7], seeds=[0, 1, 2, 3])
    same = run("j2", "same-seeds", [0.74, 0.82, 0.69, 0.91], [0.45, 0.58, 0.37, 0.66], seeds=[0, 1, 2, 3])
    other = run("j3", "other-seeds", [0.74, 0.82, 0.69, 0.91], [0.45, 0.58, 0.37, 0.66], seeds=[4, 5, 6, 7])
    rep, _ = build_report("p", AnalysisRequest(round=1, spec=SPEC, runs=[base, same, other]))
    tests = {(c.idea_id, c.metric): c.test for c in rep.comparisons}
    assert tests == {("same-seeds", "acc"): "paired", ("same-seeds", "loss"): "paired",
                     ("other-seeds", "acc"): "welch", ("other-seeds", "loss"): "welch"}
    assert rep.correction == "holm"


async def test_holm_correction_over_every_comparison_decides_the_verdict():
    """Ten comparisons (5 ideas x 2 metrics) in two families of five: a raw p near 0.03 is not significant after Holm."""
    acc = [0.80, 0.83, 0.79, 0.82, 0.81]
    loss = [0.50, 0.52, 0.51, 0.53, 0.49]
    runs = [run("b", "baseline", acc, loss, seeds=[0, 1, 2, 3, 4])]
    runs.append(run("w", "weak", [a + 0.026 + 0.004 * (k % 2) for k, a in enumerate(acc)], loss, seeds=[10, 11, 12, 13, 14]))
    for k in range(4):
        runs.append(run(f"n{k}", f"null-{k}", [a + 0.001 * ((k + j) % 3 - 1) for j, a in enumerate(acc)], loss, seeds=[20 + 5 * k + j for j in range(5)]))
    rep, _ = build_report("p", AnalysisRequest(round=1, spec=SPEC, runs=runs))
    assert len(rep.comparisons) == 10
    weak = next(c for c in rep.comparisons if c.idea_id == "weak" and c.metric == "acc")
    assert 0.01 < weak.p_value < 0.05  # significant on its own ...
    assert weak.p_adjusted >= 0.05 and weak.verdict == "inconclusive" and not weak.better  # ... but not after Holm
    assert all(c.p_adjusted is not None and c.p_adjusted >= c.p_value for c in rep.comparisons)
    for family, metric in (("primary", "acc"), ("secondary", "loss")):
        fam = [c for c in rep.comparisons if c.family == family]
        assert {c.metric for c in fam} == {metric} and len(fam) == 5
        assert [c.p_adjusted for c in fam] == pytest.approx(stats.holm([c.p_value for c in fam]))
    assert weak.ci_low < 0 < weak.ci_high  # its interval, at the Holm step's level, agrees with the corrected verdict


async def test_a_knob_that_changes_compute_is_flagged():
    spec = {**SPEC, "knobs": {**SPEC["knobs"], "layers": {"type": "int", "default": 1, "changes_compute": True}}}
    deeper = run("j3", "deeper", [0.85, 0.86, 0.84], [0.4, 0.41, 0.39], overrides={"layers": 2})
    same = run("j4", "same-layers", [0.85, 0.86, 0.84], [0.4, 0.41, 0.39], overrides={"layers": 1, "lr": 0.02})
    rep, _ = build_report("p", AnalysisRequest(round=1, spec=spec, runs=[BASE, deeper, same]))
    (compute,) = [f for f in rep.flags if f.kind == "compute_changed"]
    assert compute.idea_id == "deeper" and compute.text.startswith("compute changed: idea 'deeper' changes 'layers'")
    assert "not at equal compute" in compute.detail


async def test_confirmation_runs_on_fresh_seeds_mark_replicated_and_are_not_pooled():
    good_again = run("c2", "wd", [0.90, 0.92, 0.89], [0.30, 0.32, 0.28], seeds=[100, 101, 102], overrides={"lr": 0.02})
    base_again = run("c1", "baseline", [0.80, 0.79, 0.81], [0.50, 0.51, 0.52], seeds=[100, 101, 102])
    req = AnalysisRequest(round=1, spec=SPEC, runs=[BASE, GOOD, base_again, good_again], confirmation=["e-c1", "e-c2"])
    rep, arms = build_report("p", req)
    acc = next(c for c in rep.comparisons if c.metric == "acc")
    assert acc.n_idea == 3 and acc.n_baseline == 3  # confirmation seeds are not pooled into the exploratory arms
    assert acc.verdict == "better" and acc.replicated is True
    assert [(c.idea_id, c.metric, c.n_idea) for c in rep.confirmations] == [("wd", "acc", 3)]
    assert next(c for c in rep.comparisons if c.metric == "loss").replicated is None  # only the primary is confirmed

    fails = run("c2", "wd", [0.80, 0.78, 0.81], [0.5, 0.5, 0.5], seeds=[100, 101, 102], overrides={"lr": 0.02})
    rep, _ = build_report("p", AnalysisRequest(round=1, spec=SPEC, runs=[BASE, GOOD, base_again, fails], confirmation=["e-c1", "e-c2"]))
    acc = next(c for c in rep.comparisons if c.metric == "acc")
    assert acc.verdict == "better" and acc.replicated is False


async def test_flags_someone_acts_on_are_typed():
    unfair = run("j5", "longer", [0.9, 0.91, 0.92], [0.3, 0.3, 0.3], overrides={"steps": 200})
    rep, _ = build_report("p", AnalysisRequest(round=1, spec=SPEC, runs=[BASE, unfair]))
    (flag,) = rep.flags
    assert flag.kind == "unfair_baseline" and flag.idea_id == "longer"
    rep, _ = build_report("p", AnalysisRequest(round=1, spec=SPEC, runs=[unfair]))
    assert [f.kind for f in rep.flags] == ["missing_baseline", "unfair_baseline"]
    assert rep.flags[0].text == "missing baseline: no successful baseline run, so no idea could be compared"


def test_a_report_stored_with_sentence_flags_still_loads_typed():
    """An older lab stored flags as sentences plus the typed ``flag_items``; both become the typed flags, in order."""
    unfair = "unfair baseline: idea 'long' changes the fairness knob 'steps' (baseline 100, idea 400), so the arms differ"
    old = {
        "project": "p", "primary_metric": "acc", "comparisons": [], "runs": [],
        "flags": [
            "failed run: j0 (idea 'baseline'): oom",
            unfair,
            "too few seeds: 'tiny' has 2 seed(s) for 'acc'; at least 3 are needed",
            "baseline has fewer seeds: baseline 3 vs idea 'wd' 5 for 'acc'",
            "no per-seed values: run j2 reported only a mean for 'loss'; it counts as one observation",
            "something an even older lab wrote",
        ],
        "flag_items": [{"kind": "unfair_baseline", "detail": unfair.removeprefix("unfair baseline: "), "idea_id": "long"}],
    }
    rep = AnalysisReport.model_validate(old)
    assert [f.text for f in rep.flags] == old["flags"]  # people read the same sentences
    kinds = [f.kind for f in rep.flags]
    assert kinds == ["failed_run", "unfair_baseline", "too_few_seeds", "baseline_fewer_seeds", "no_per_seed_values", "other"]
    failed, fair, few, fewer, mean_only, _ = rep.flags
    assert (failed.job_id, failed.idea_id) == ("j0", "baseline") and fair.idea_id == "long"
    assert (few.idea_id, few.seeds, few.required_seeds, few.metric) == ("tiny", 2, 3, "acc")
    assert (fewer.idea_id, fewer.seeds, fewer.baseline_seeds) == ("wd", 5, 3)
    assert (mean_only.job_id, mean_only.metric) == ("j2", "loss")
    # A report written now round-trips as it is.
    assert AnalysisReport.model_validate_json(rep.model_dump_json()) == rep
