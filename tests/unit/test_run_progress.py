"""`lab run`'s progress lines while jobs train, and run summaries that lead with the primary metric."""

from __future__ import annotations

from bus.schema import Envelope, ExperimentResult, FinalInfo, MetricStat, RunRecord
from services.cli.progress import Progress, total_steps
from services.read.describe import describe


def test_the_step_total_comes_from_the_templates_step_knob() -> None:
    assert total_steps({"max_steps": 400, "lr": 0.003}) == 400  # char_lm
    assert total_steps({"num_steps": 2500}) == 2500  # grokking
    assert total_steps({"lr": 0.1}) is None and total_steps({"max_steps": True}) is None


def test_a_line_per_job_at_most_every_30_s_and_only_when_it_moved() -> None:
    p = Progress(total=400, seeds={"x02-dropout-0p1": 3}, names={"j1": "x02-dropout-0p1"})
    p.log("j1", "seed 0 step 0: train 4.36 val 4.36", now=0.0)
    p.log("j1", "seed 0 step 200: train 2.5 val 2.54", now=20.0)
    (line,) = p.lines(now=30.0)
    # 0.1 s a step: 20 s of this seed left at step 200, 10 s of them gone since; two more seeds of 40 s
    assert line == "x02-dropout-0p1: seed 0 (1/3), step 200/400 (50%), about 90 s left"
    assert p.lines(now=45.0) == []  # within 30 s of the last line
    assert p.lines(now=70.0) == []  # 30 s later, but it did not move
    p.log("j1", "seed 1 step 0: train 4.3 val 4.3", now=60.0)  # seed 0 took 60 s
    p.log("j1", "seed 1 step 100: train 2.6 val 2.6", now=70.0)
    (line,) = p.lines(now=75.0)
    assert line.startswith("x02-dropout-0p1: seed 1 (2/3), step 100/400 (25%)") and line.endswith("left")
    p.finished("j1")
    assert p.lines(now=200.0) == []


def test_lines_that_are_not_steps_are_ignored_and_an_unknown_total_gives_no_eta() -> None:
    p = Progress(total=None)
    p.log("j2", "[runner] starting job j2", now=0.0)
    assert p.lines(now=100.0) == []
    p.log("j2", "seed 4 step 975: train_acc 1.000 val_acc 0.991", now=1.0)
    assert p.lines(now=100.0) == ["j2: seed 4, step 975"]
    q = Progress(total=800)
    q.log("j3", "seed 0 step 500: val_acc 0.4", now=5.0)  # the first line seen for the seed: no rate to tell an ETA from
    assert q.lines(now=40.0) == ["j3: seed 0, step 500/800 (62%)"]


def test_a_run_summary_leads_with_the_primary_metric() -> None:
    stats = {name: MetricStat(mean=v, stderr=0.1, values=[v]) for name, v in
             [("val_acc", 0.99), ("train_acc", 1.0), ("val_loss", 0.05), ("steps_to_val_99", 975.0)]}
    run = RunRecord(job_id="j1", experiment_id="x02-d-model-32", idea_id="d-model-32", overrides={}, seeds=[0], status="succeeded",
                    final_info=FinalInfo(metrics=stats, seeds=[0]), wall_s=12)
    body = ExperimentResult(experiment_id="x02-d-model-32", idea_id="d-model-32", runs=[run], primary_metric="steps_to_val_99")
    line = describe(Envelope(project="p", sender="engineer", recipient="pi", body=body))
    assert line.startswith("x02-d-model-32 done: j1 ok (steps_to_val_99=975±0.1, val_acc=0.99")
