"""Validity before statistics: metric kinds and families, convergence, collapse, the positive control,
the parent as control, seeds added after a look, and intervals that agree with the corrected verdict.

Run sets are shaped like the real templates' (their template.yaml, their metric names).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from agents import stats
from agents.analyst.offline import make
from agents.analyst.workflow import MDE_FRACTION, POSITIVE_CONTROL, build_report
from agents.templates import load
from bus.schema import AnalysisRequest, FinalInfo, JobEnvironment, RunRecord

CHAR_LM = load("char_lm")[1]
MERGING = load("model_merging")[1]
GROKKING = load("grokking")[1]


def run(job, idea, metrics, seeds=(0, 1, 2), overrides=None, experiment=None, extra=None, env=None, wall_s=0.0):
    seeds = list(seeds)
    fi = FinalInfo.model_validate({
        "seeds": seeds,
        "metrics": {m: {"mean": float(np.mean(v)), "stderr": 0.0, "values": list(map(float, v))} for m, v in metrics.items()},
        **(extra or {}),
    })
    return RunRecord(job_id=job, experiment_id=experiment or f"x-{job}", idea_id=idea, overrides=overrides or {}, seeds=seeds,
                     status="succeeded", final_info=fi, environment=env, wall_s=wall_s)


def report(spec, runs, confirmation=()):
    return build_report("p", AnalysisRequest(round=1, spec=spec, runs=runs, confirmation=list(confirmation)))[0]


# ---------------------------------------------------------------- metric kinds and families


def char_lm_runs(env_base=None, env_idea=None):
    base = run("b", "baseline", {"val_loss": [2.43, 2.45, 2.41], "train_loss": [2.40, 2.42, 2.39],
                                 "tokens_per_s": [7688.0, 9182.1, 28244.0]}, env=env_base, wall_s=100)
    warm = run("w", "warmup-steps-300", {"val_loss": [2.42, 2.43, 2.405], "train_loss": [2.39, 2.41, 2.38],
                                         "tokens_per_s": [13100.0, 13148.6, 13200.0]}, overrides={"warmup_steps": 300},
               env=env_idea, wall_s=100)
    return [base, warm]


def test_hardware_metric_is_in_no_family_on_a_char_lm_run_set():
    rep = report(CHAR_LM, char_lm_runs())
    assert CHAR_LM.metrics["tokens_per_s"].kind == "hardware"
    assert {c.metric for c in rep.comparisons} == {"val_loss", "train_loss"}
    assert {(c.metric, c.family) for c in rep.comparisons} == {("val_loss", "primary"), ("train_loss", "secondary")}
    rows = {(d.idea_id, d.metric): d for d in rep.descriptive}
    assert set(rows) == {("baseline", "tokens_per_s"), ("warmup-steps-300", "tokens_per_s")}
    assert rows["warmup-steps-300", "tokens_per_s"].mean == pytest.approx(np.mean([13100.0, 13148.6, 13200.0]))
    assert "machine" in rows["baseline", "tokens_per_s"].reason
    (flag,) = [f for f in rep.flags if f.kind == "hardware_metric"]
    assert flag.metric == "tokens_per_s" and flag.text.startswith("hardware-dependent metric: 'tokens_per_s'")


def test_hardware_metric_is_still_untested_on_one_node_at_different_times():
    env = JobEnvironment(hostname="node-1")
    rep = report(CHAR_LM, char_lm_runs(env, env))  # same node, start times not recorded: not established
    assert "tokens_per_s" not in {c.metric for c in rep.comparisons}
    later = JobEnvironment.model_validate({"hostname": "node-1", "started_at": 1000.0})
    early = JobEnvironment.model_validate({"hostname": "node-1", "started_at": 0.0})
    rep = report(CHAR_LM, char_lm_runs(early, later))  # one after the other (100 s runs): load may differ
    assert "tokens_per_s" not in {c.metric for c in rep.comparisons}
    other = JobEnvironment.model_validate({"hostname": "node-2", "started_at": 50.0})
    rep = report(CHAR_LM, char_lm_runs(early, other))  # overlapping, but two machines
    assert "tokens_per_s" not in {c.metric for c in rep.comparisons}


def test_hardware_metric_is_tested_when_the_arms_ran_on_one_node_at_overlapping_times():
    a = JobEnvironment.model_validate({"hostname": "node-1", "started_at": 0.0})
    b = JobEnvironment.model_validate({"hostname": "node-1", "started_at": 50.0})
    rep = report(CHAR_LM, char_lm_runs(a, b))
    (tps,) = [c for c in rep.comparisons if c.metric == "tokens_per_s"]
    assert tps.family == "secondary"
    assert not any(f.kind == "hardware_metric" for f in rep.flags) and not rep.descriptive


def merging_runs():
    ind = [0.981, 0.979, 0.983]
    base_task = [0.90, 0.86, 0.93]
    ties_task = [0.93, 0.885, 0.955]
    base = run("b", "baseline", {"task_acc": base_task, "merged_acc": [0.70, 0.68, 0.72], "individual_acc": ind,
                                 "acc_gap": [i - t for i, t in zip(ind, base_task, strict=True)]})
    ties = run("t", "ties", {"task_acc": ties_task, "merged_acc": [0.71, 0.69, 0.74], "individual_acc": ind,
                             "acc_gap": [i - t for i, t in zip(ind, ties_task, strict=True)]}, overrides={"merge_fn": "ties"})
    return [base, ties]


def test_model_merging_fixed_and_derived_metrics_are_not_in_the_family():
    assert MERGING.metrics["individual_acc"].kind == "fixed"
    assert MERGING.metrics["acc_gap"].kind == "derived" and set(MERGING.metrics["acc_gap"].derived_from) == {"individual_acc", "task_acc"}
    rep = report(MERGING, merging_runs())
    assert {(c.metric, c.family) for c in rep.comparisons} == {("task_acc", "primary"), ("merged_acc", "secondary")}
    # Each family corrected on its own: one test each, so the corrected p is the raw p.
    assert all(c.p_adjusted == pytest.approx(c.p_value) for c in rep.comparisons)
    reasons = {d.metric: d.reason for d in rep.descriptive}
    assert set(reasons) == {"individual_acc", "acc_gap"}
    assert "same in every arm" in reasons["individual_acc"] and "individual_acc, task_acc" in reasons["acc_gap"]
    assert not any(f.kind == "hardware_metric" for f in rep.flags)


def test_families_are_holm_corrected_separately():
    """Three ideas: the primary family holds three tests, the secondary (merged_acc) three, each with its own Holm."""
    runs = merging_runs()
    for k, shift in enumerate([0.01, 0.02, 0.03]):
        runs.append(run(f"i{k}", f"idea-{k}", {"task_acc": [0.90 + shift, 0.87 + shift, 0.92 + shift],
                                               "merged_acc": [0.70, 0.69 + shift, 0.71]}, overrides={"scaling_coef": 0.1 * (k + 1)}))
    rep = report(MERGING, runs)
    for family in ("primary", "secondary"):
        fam = [c for c in rep.comparisons if c.family == family]
        assert len(fam) == 4
        assert [c.p_adjusted for c in fam] == pytest.approx(stats.holm([c.p_value for c in fam]))


# ---------------------------------------------------------------- effect sizes and intervals in reports


def test_paired_comparison_reports_d_z_and_the_paired_interval():
    rep = report(CHAR_LM, char_lm_runs())
    (c,) = [c for c in rep.comparisons if c.metric == "val_loss"]
    base, idea = [2.43, 2.45, 2.41], [2.42, 2.43, 2.405]
    assert c.test == "paired" and c.effect_kind == "paired_d"
    res = sps.ttest_rel(idea, base)
    ci = res.confidence_interval(confidence_level=c.ci_level)
    assert c.ci_level == pytest.approx(0.95)  # alone in its family: the Holm step's level is alpha
    assert (c.ci_low, c.ci_high) == pytest.approx((-ci.high, -ci.low))  # lower is better: improvement = baseline - idea
    assert c.p_value == pytest.approx(res.pvalue)


def test_interval_excludes_zero_exactly_when_the_corrected_verdict_is_significant():
    rng = np.random.default_rng(5)
    for trial in range(12):
        seeds = list(range(5))
        base_vals = rng.normal(0.9, 0.02, 5)
        runs = [run("b", "baseline", {"task_acc": base_vals, "merged_acc": rng.normal(0.7, 0.02, 5)}, seeds=seeds)]
        for k in range(4):
            shift = rng.choice([0.0, 0.01, 0.03])
            vals = base_vals + shift + rng.normal(0, 0.01, 5)
            idea_seeds = seeds if k % 2 == 0 else list(range(10, 15))  # paired and Welch both
            runs.append(run(f"i{k}", f"idea-{k}", {"task_acc": vals, "merged_acc": rng.normal(0.7, 0.02, 5)},
                            seeds=idea_seeds, overrides={"scaling_coef": 0.1 * (k + 1)}))
        rep = report(MERGING, runs)
        assert {c.test for c in rep.comparisons} == {"paired", "welch"}
        for c in rep.comparisons:
            assert (c.ci_low > 0 or c.ci_high < 0) == (c.p_adjusted < rep.alpha) == (c.verdict != "inconclusive"), (trial, c)


# ---------------------------------------------------------------- curves


def curve_extra(name, mean_curve, seed_curves=None):
    return {"curves": {name: mean_curve}, "seed_curves": {name: seed_curves or {}}}


def test_a_curve_still_moving_at_the_end_is_not_converged():
    steps = list(range(0, 401, 50))
    falling = [[s, 4.2 - 1.75 * s / 400] for s in steps]  # still dropping at the last step: 2.45 at step 400
    flat = [[s, max(1.5, 4.2 - 0.02 * s)] for s in steps]  # settled well before the end
    base = run("b", "baseline", {"val_loss": [2.43, 2.45, 2.41]}, extra=curve_extra("val_loss", falling))
    idea = run("d", "dropout", {"val_loss": [2.46, 2.47, 2.45]}, overrides={"dropout": 0.1}, extra=curve_extra("val_loss", flat))
    rep = report(CHAR_LM, [base, idea])
    (flag,) = [f for f in rep.flags if f.kind == "not_converged"]
    assert (flag.idea_id, flag.job_id, flag.metric) == ("baseline", "b", "val_loss")
    assert flag.text.startswith("not converged: run b (idea 'baseline'): val_loss moved") and "training budget" in flag.detail


def test_a_cosine_tail_that_still_falls_is_not_converged():
    """char_lm --fast as it ran (val_loss per 40 steps, cosine decay to 10%): 1.1% lower over its last 20%, at 2.43 nats/char."""
    ran = [[0, 4.361], [40, 2.927], [80, 2.656], [120, 2.599], [160, 2.568], [200, 2.539], [240, 2.509], [280, 2.486],
           [320, 2.460], [360, 2.444], [400, 2.433]]
    base = run("b", "baseline", {"val_loss": [2.43, 2.45, 2.41]}, extra=curve_extra("val_loss", ran))
    rep = report(CHAR_LM, [base])
    assert [f.kind for f in rep.flags if f.kind == "not_converged"] == ["not_converged"]
    settled = [[s, v] for s, v in ran[:8]] + [[320, 2.4866], [360, 2.4860], [400, 2.4859]]  # flat once it stopped learning
    rep = report(CHAR_LM, [run("b", "baseline", {"val_loss": [2.48, 2.49, 2.48]}, extra=curve_extra("val_loss", settled))])
    assert not [f for f in rep.flags if f.kind == "not_converged"]


def test_grokking_checks_the_curve_its_primary_metric_declares():
    steps = list(range(0, 1001, 100))
    rising = [[s, min(1.0, s / 1000)] for s in steps]
    base = run("b", "baseline", {"steps_to_val_99": [1000, 1000, 1000], "val_acc": [1.0, 0.98, 0.99]},
               extra=curve_extra("val_acc", rising))
    rep = report(GROKKING, [base])
    (flag,) = [f for f in rep.flags if f.kind == "not_converged"]
    assert flag.metric == "val_acc"


def test_a_grokking_run_that_collapses_after_reaching_099_is_unstable():
    """Baseline seed 4 'grokked at step 975' and ends at 0.27; seed 5 ends at 0.95; seed 6 is stable."""
    collapsed = [[0, 0.01], [500, 0.4], [975, 0.995], [1500, 0.6], [2000, 0.27]]
    slipped = [[0, 0.01], [975, 0.99], [2000, 0.95]]
    stable = [[0, 0.01], [900, 0.99], [2000, 1.0]]
    extra = curve_extra("val_acc", [[0, 0.01], [2000, 0.74]], {"4": collapsed, "5": slipped, "6": stable})
    base = run("b", "baseline", {"steps_to_val_99": [975, 975, 900], "val_acc": [0.27, 0.95, 1.0]}, seeds=[4, 5, 6], extra=extra)
    rep = report(GROKKING, [base])
    flags = [f for f in rep.flags if f.kind == "unstable"]
    assert [(f.job_id, f.idea_id, f.seed, f.metric) for f in flags] == [("b", "baseline", 4, "val_acc"), ("b", "baseline", 5, "val_acc")]
    assert "reached 0.99 at step 975" in flags[0].detail and "ended at 0.27" in flags[0].detail


def test_a_loss_that_climbs_back_without_a_declared_plateau_is_unstable():
    diverged = [[0, 4.2], [200, 1.6], [400, 3.5]]
    fine = [[0, 4.2], [200, 1.6], [400, 1.65]]
    extra = curve_extra("val_loss", [[0, 4.2], [400, 2.6]], {"0": diverged, "1": fine})
    rep = report(CHAR_LM, [run("b", "baseline", {"val_loss": [3.5, 1.65]}, seeds=[0, 1], extra=extra)])
    assert [(f.seed, f.metric) for f in rep.flags if f.kind == "unstable"] == [(0, "val_loss")]


# ---------------------------------------------------------------- positive control


def test_a_positive_control_with_no_difference_withholds_conclusions():
    runs = char_lm_runs()
    runs.append(run("pc", POSITIVE_CONTROL, {"val_loss": [2.44, 2.44, 2.42]}, overrides={"lr": 0.0001}))
    rep = report(CHAR_LM, runs)
    assert rep.conclusions_withheld
    (flag,) = [f for f in rep.flags if f.kind == "no_separation"]
    assert flag.idea_id == POSITIVE_CONTROL and flag.text.startswith("testbed cannot separate:")
    assert rep.positive_control is not None and rep.positive_control.verdict == "inconclusive"
    assert POSITIVE_CONTROL not in {c.idea_id for c in rep.comparisons}  # in no family
    assert {c.idea_id for c in rep.comparisons} == {"warmup-steps-300"}  # every other verdict is still computed
    assert rep.summary == "" and "withheld" in _summary(rep)


def test_a_positive_control_that_separates_lets_conclusions_stand():
    runs = char_lm_runs()
    runs.append(run("pc", POSITIVE_CONTROL, {"val_loss": [3.10, 3.14, 3.09]}, overrides={"lr": 0.0001}))
    rep = report(CHAR_LM, runs)
    assert not rep.conclusions_withheld and not any(f.kind == "no_separation" for f in rep.flags)
    assert rep.positive_control is not None and rep.positive_control.verdict == "worse" and rep.positive_control.p_adjusted < 0.05
    assert not any(f.idea_id == POSITIVE_CONTROL and f.kind in ("compute_changed", "unfair_baseline") for f in rep.flags)


def _summary(rep):
    import asyncio

    return asyncio.run(make(0, {}).summarize(rep))


# ---------------------------------------------------------------- the parent as control


def test_a_variant_is_compared_with_its_parent():
    base = run("b", "baseline", {"val_loss": [2.43, 2.45, 2.41]})
    warm = run("w", "warmup", {"val_loss": [2.30, 2.33, 2.28]}, overrides={"warmup_steps": 300})
    both = run("wd", "warmup-dropout", {"val_loss": [2.31, 2.32, 2.29]}, overrides={"warmup_steps": 300, "dropout": 0.1})
    rep = report(CHAR_LM, [base, warm, both])
    controls = {(c.idea_id, c.control) for c in rep.comparisons if c.metric == "val_loss"}
    assert controls == {("warmup", "baseline"), ("warmup-dropout", "baseline"), ("warmup-dropout", "warmup")}
    (flag,) = [f for f in rep.flags if f.kind == "wrong_control"]
    assert (flag.idea_id, flag.control) == ("warmup-dropout", "warmup")
    vs_parent = next(c for c in rep.comparisons if c.control == "warmup" and c.metric == "val_loss")
    vs_base = next(c for c in rep.comparisons if c.idea_id == "warmup-dropout" and c.control == "baseline" and c.metric == "val_loss")
    assert vs_parent.baseline_mean == pytest.approx(np.mean([2.30, 2.33, 2.28]))
    assert vs_base.verdict == "better" and vs_parent.verdict == "inconclusive"  # the gain is warmup's, not dropout's
    assert sum(c.family == "primary" for c in rep.comparisons) == 3  # the parent comparison is in the headline family


# ---------------------------------------------------------------- seeds added after a look


def test_seeds_added_after_a_look_spend_the_alpha():
    base_vals = [0.90, 0.86, 0.93, 0.88, 0.91, 0.87]
    idea_vals = [v + d for v, d in zip(base_vals, [0.012, 0.0, 0.010, 0.001, 0.011, 0.004], strict=True)]
    runs = [
        run("b1", "baseline", {"task_acc": base_vals[:3]}, experiment="x01-baseline"),
        run("i1", "ties", {"task_acc": idea_vals[:3]}, overrides={"merge_fn": "ties"}, experiment="x02-ties"),
        run("b2", "baseline", {"task_acc": base_vals[3:]}, seeds=[3, 4, 5], experiment="x03-baseline"),
        run("i2", "ties", {"task_acc": idea_vals[3:]}, seeds=[3, 4, 5], overrides={"merge_fn": "ties"}, experiment="x04-ties"),
    ]
    rep = report(MERGING, runs)
    (c,) = [c for c in rep.comparisons if c.metric == "task_acc"]
    p = sps.ttest_rel(idea_vals, base_vals).pvalue
    assert 0.025 < p < 0.05  # significant at one look, not after two
    assert c.n_idea == 6 and c.looks == 2 and c.p_value == pytest.approx(p)
    assert c.p_adjusted == pytest.approx(2 * p) and c.verdict == "inconclusive"
    assert c.ci_low < 0 < c.ci_high and c.ci_level == pytest.approx(0.975)
    (flag,) = [f for f in rep.flags if f.kind == "seeds_added"]
    assert flag.idea_id == "ties" and "x02-ties, x04-ties" in flag.detail
    # The same seeds in one experiment: one look, and the same p is significant.
    one = report(MERGING, [run("b", "baseline", {"task_acc": base_vals}, seeds=range(6)),
                           run("i", "ties", {"task_acc": idea_vals}, seeds=range(6), overrides={"merge_fn": "ties"})])
    (c1,) = one.comparisons
    assert c1.looks == 1 and c1.verdict == "better" and not any(f.kind == "seeds_added" for f in one.flags)


def test_a_rerun_of_the_same_seeds_is_not_a_new_look():
    base = run("b", "baseline", {"task_acc": [0.90, 0.86, 0.93]})
    first = run("i1", "ties", {"task_acc": [0.91, 0.87, 0.94]}, overrides={"merge_fn": "ties"}, experiment="x02")
    again = run("i2", "ties", {"task_acc": [0.91, 0.87, 0.94]}, overrides={"merge_fn": "ties"}, experiment="x03")
    rep = report(MERGING, [base, first, again])
    assert rep.comparisons[0].looks == 1 and not any(f.kind == "seeds_added" for f in rep.flags)


# ---------------------------------------------------------------- the seed plan


def test_seed_plan_from_the_baseline_variance():
    rep = report(MERGING, merging_runs())
    plan = rep.seed_plan
    base = [0.90, 0.86, 0.93]
    sd = float(np.std(base, ddof=1))
    assert plan is not None and plan.metric == "task_acc" and plan.power == 0.8
    assert plan.baseline_sd == pytest.approx(sd)
    assert plan.min_detectable_effect == pytest.approx(MDE_FRACTION * np.mean(base))
    assert plan.alpha == pytest.approx(0.05)  # one test in the primary family
    assert plan.seeds == max(MERGING.seeds, stats.sample_size(sd, plan.min_detectable_effect, alpha=0.05, power=0.8))
    declared = MERGING.model_copy(deep=True)
    declared.metrics["task_acc"].min_effect = 0.01
    plan2 = report(declared, merging_runs()).seed_plan
    assert plan2 is not None and plan2.min_detectable_effect == 0.01 and plan2.seeds > plan.seeds
