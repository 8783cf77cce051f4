"""An AI Scientist template, unchanged, through `lab run` with the offline mind: the baseline runs as run_0 with
the template's own command line and the project ends with a baseline-characterisation report, not a tested idea.

Real agents on an embedded nats-server, the local executor, the fixture tests/aisci/aisci_tiny
(two datasets, three seeds, about a second of numpy): some thirty seconds on two cores.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from agents import templates
from tests.conftest import TESTS, lab_cmd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_an_ai_scientist_template_runs_its_baseline_and_is_characterised(lab_env, tmp_path):
    _, env = lab_env
    out = tmp_path / "out"
    run = subprocess.run(
        lab_cmd("run", "--template", str(TESTS / "aisci" / "aisci_tiny"), "--out", str(out), "--quiet"),
        env=env, capture_output=True, text=True, timeout=540,
    )
    assert run.returncode in (0, 1), run.stdout[-3000:] + run.stderr[-3000:]  # 1: a paper of no finding is not accepted
    said = " ".join(run.stdout.split())
    assert "This template declares no knobs or variants" in said

    # The run: the template's own seeds and datasets, converted to the lab's metrics <dataset>/<metric>.
    [job] = list((out / "results").iterdir())
    info = json.loads((job / "final_info.json").read_text())
    assert info["seeds"] == [0, 1, 2] and info["aisci"]["datasets"] == ["line", "wave"]
    assert len(info["metrics"]["wave/final_val_loss"]["values"]) == 3
    assert (job / "val_loss.png").is_file()  # the template's own plot.py, reading run_0 as it expects

    analysis = json.loads((out / "analysis.json").read_text())
    report = analysis.get("report", analysis)
    assert report["primary_metric"] == "line/final_val_loss" and report["comparisons"] == []

    baseline = (out / "baseline.md").read_text()
    assert "No idea was tested." in baseline
    stat = info["metrics"]["line/final_val_loss"]
    assert f"| **line/final_val_loss** (primary) | lower | {stat['mean']:.4g} | {stat['stderr']:.4g} |" in baseline
    assert "wave/total_train_time | lower (hardware)" in baseline

    # The first run's wall time is recorded where `lab run` runs, and the next project on the template is budgeted by it.
    home, _ = lab_env
    measured = json.loads((home / "aisci_measured.json").read_text())["aisci_tiny"]
    assert measured["wall_s"] > 0 and measured["job_id"] == json.loads((out / "export.json").read_text())["results"][job.name]["job_id"]
    _, spec = templates.load(str(TESTS / "aisci" / "aisci_tiny"))
    assert spec.time_budget_s == min(7200.0, max(60.0, 3 * measured["wall_s"]))
    assert "time budget: 3 × the measured" in " ".join(subprocess.run(
        lab_cmd("template", "check", str(TESTS / "aisci" / "aisci_tiny")), env=env, capture_output=True, text=True, timeout=120,
    ).stdout.split())
