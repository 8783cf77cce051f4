"""AI Scientist templates are recognised and their spec derived (agents/aisci.py), and `lab template check` says what and what not.

The fixture tests/aisci/aisci_tiny is a template in the AI Scientist's format written for
these tests (two datasets, three seeds, a checked-in run_0/final_info.json); the broken
cases are copies of it with one thing wrong.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
from typer.testing import CliRunner

from agents import aisci, aisci_shim, templates
from bus.errors import MindError, MindUnavailable
from bus.schema import RunRecord, TemplateError
from services.cli.app import app
from tests.conftest import TESTS

TINY = TESTS / "aisci" / "aisci_tiny"


@pytest.fixture
def tiny(tmp_path):
    dest = tmp_path / "aisci_tiny"
    shutil.copytree(TINY, dest)
    return dest


def check(path) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["template", "check", str(path)], terminal_width=200)
    return r.exit_code, r.stdout, r.stderr


def test_the_spec_is_derived_from_prompt_and_run_0():
    folder, spec = templates.load(str(TINY))
    assert folder == TINY.resolve() and spec.name == "aisci_tiny"
    assert spec.task.startswith("You are given the following file") and spec.knobs == {} and spec.seeds == 3
    assert spec.fixed_seeds  # it runs its own seeds: a review's "more seeds" cannot be run
    assert list(spec.metrics) == [f"{ds}/{m}" for ds in ("line", "wave") for m in ("final_train_loss", "final_val_loss", "val_sign_acc", "total_train_time")]
    assert spec.metrics["line/final_val_loss"].direction == "lower" and spec.metrics["wave/val_sign_acc"].direction == "higher"
    # A time depends on the machine: reported, never tested, never primary.
    assert spec.metrics["line/total_train_time"].kind == "hardware"
    # The stated rule: the first dataset's first validation metric that is an outcome.
    assert spec.primary_metric == "line/final_val_loss"


@pytest.mark.parametrize("name, direction", [
    ("final_val_loss", "lower"), ("eval_error", "lower"), ("training_time", "lower"), ("val_ppl", "lower"),
    ("test_acc", "higher"), ("mean_reward", "higher"), ("bleu_score", "higher"), ("kl_divergence", "lower"),
    ("sharpness", None), ("score_time", None),
])
def test_direction_from_the_name(name, direction):
    assert aisci.direction_of(name) == direction


def test_both_final_info_forms_convert_with_per_seed_values():
    means = {"d": {"means": {"acc_mean": 0.5}, "stderrs": {"acc_stderr": 0.1}, "final_info_dict": {"acc": [0.4, 0.5, 0.6]}}}
    flat = {"d": {"eval_loss": 1.5, "training_time": 2.0}}
    got = aisci_shim.convert(means)
    assert got["metrics"]["d/acc"] == {"mean": 0.5, "stderr": 0.1, "values": [0.4, 0.5, 0.6]} and got["seeds"] == [0, 1, 2]
    assert aisci_shim.convert(flat)["metrics"]["d/eval_loss"] == {"mean": 1.5, "stderr": 0.0, "values": [1.5]}
    with pytest.raises(aisci_shim.FormatError, match="no numeric metric"):
        aisci_shim.convert({"d": {"note": "text"}})


def test_the_bundle_wraps_the_template_unchanged():
    _, spec = templates.load(str(TINY))
    with tarfile.open(fileobj=io.BytesIO(templates.bundle(TINY)), mode="r:gz") as tar:
        names = set(tar.getnames())
        read = lambda n: tar.extractfile(n).read()  # noqa: E731
        assert read("experiment.py") == (TESTS.parent / "agents" / "aisci_shim.py").read_bytes()
        assert read("original/experiment.py") == (TINY / "experiment.py").read_bytes()
        assert b"boyd2004convex" in read("references.bib")  # the filecontents block of latex/template.tex
    assert {"plot.py", "template.yaml", "original/plot.py", "original/prompt.json", "original/latex/template.tex"} <= names
    assert not any(n.startswith("original/run_") for n in names)  # earlier outputs are not code


def test_check_shows_what_it_derived():
    code, out, _ = check(TINY)
    assert code == 0
    for text in ("AI Scientist", "line/final_val_loss", "rule: first dataset", "seed ideas", "latex/template.tex", "none (hyper-parameters"):
        assert text in out


def test_check_without_run_0_says_how_to_make_it(tiny):
    shutil.rmtree(tiny / "run_0")
    code, _, err = check(tiny)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no run_0/final_info.json" in lines[0] and "python experiment.py --out_dir=run_0" in lines[0]
    with pytest.raises(TemplateError, match="no run_0/final_info.json"):
        templates.load(str(tiny))


def test_check_a_malformed_seed_ideas_json(tiny):
    ideas = json.loads((tiny / "seed_ideas.json").read_text())
    del ideas[1]["Feasibility"]
    (tiny / "seed_ideas.json").write_text(json.dumps(ideas))
    code, _, err = check(tiny)
    assert code == 2 and err.strip() == f"error: {tiny / 'seed_ideas.json'}: idea 1: Feasibility: Field required"
    (tiny / "seed_ideas.json").write_text("[{")
    code, _, err = check(tiny)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "seed_ideas.json: not valid JSON" in err


def test_an_unknown_direction_is_one_line_and_the_override_file_settles_it(tiny):
    info = json.loads((tiny / "run_0" / "final_info.json").read_text())
    for block in info.values():
        block["means"]["sharpness_mean"] = 1.0
    (tiny / "run_0" / "final_info.json").write_text(json.dumps(info))
    code, _, err = check(tiny)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2  # one per dataset
    assert "metric line/sharpness: cannot tell" in lines[0] and "lab.yaml" in lines[0]
    (tiny / "lab.yaml").write_text("directions: {sharpness: lower}\nprimary: wave/val_sign_acc\n")
    code, out, _ = check(tiny)
    assert code == 0 and "lab.yaml" in out
    assert aisci.load(tiny).primary_metric == "wave/val_sign_acc"


def test_a_folder_that_is_neither_format_is_refused(tmp_path):
    (tmp_path / "experiment.py").write_text("")
    code, _, err = check(tmp_path)
    assert code == 2 and "not a template" in err


def _started(mind: str):
    from agents.pi import transitions as t
    from bus.schema import Budget, StartProject

    _, spec = templates.load(str(TINY))
    body = StartProject(template=spec.name, template_object="p1/template.tar.gz", spec=spec, seed=0, mind=mind,
                        budget=Budget(max_ideas=2, max_runs=10, max_revision_rounds=1, wall_time_s=600))
    return t, t.start(None, body, "p1", 1000.0)


def test_seed_ideas_lead_the_llm_minds_first_wave_as_code_changes():
    t, step = _started("llm")
    seeds = step.state.spec.seed_ideas
    assert [i.id for i in seeds] == ["seed-learning-rate-warmup", "seed-sine-features"]
    assert seeds[1].code is not None and seeds[1].code.summary.startswith("Append sin(3x)") and seeds[1].changes == {}
    assert (seeds[1].interestingness, seeds[1].feasibility, seeds[1].novelty) == (6, 9, 4)
    wave = t.wave_proposed(step.state, [], take=2)
    assert [b.idea.id for b, _ in wave.sent] == ["seed-sine-features", "seed-learning-rate-warmup"]  # ranked by the template's scores
    # A model that fails to propose (here: invalid answers) does not lose the template's own ideas; one that is down does.
    failed = t.wave_failed(step.state, MindError("ideas: List should have at least 1 item"), take=2)
    assert [b.idea.id for b, _ in failed.sent] == ["seed-sine-features", "seed-learning-rate-warmup"]
    assert any(isinstance(e, t.Log) and "seed ideas go on" in e.event for e in failed.effects)
    assert t.wave_failed(step.state, MindUnavailable("endpoint down"), take=2).sent == []


def test_the_offline_mind_says_it_has_nothing_to_vary_and_proposes_no_seed_idea():
    t, step = _started("offline")
    assert any(getattr(e, "event", "") == "nothing to vary" for e in step.effects)
    wave = t.wave_proposed(step.state, [], take=2)
    assert wave.sent == [] and wave.state.ideas == {}


def test_seed_ideas_are_archived_when_a_project_starts_and_listed_by_lab_ideas():
    import io as _io

    from rich.console import Console

    from services.cli.ideas import render

    t, step = _started("offline")  # archived whatever the mind: the offline one cannot run them, `lab ideas` still lists them
    records = [e.record for e in step.effects if isinstance(e, t.Remember)]
    assert [(r.outcome.idea_id, r.outcome.status, r.project, r.template) for r in records] == [
        ("seed-learning-rate-warmup", "seeded", "p1", "aisci_tiny"), ("seed-sine-features", "seeded", "p1", "aisci_tiny"),
    ]
    assert records[1].outcome.code.summary.startswith("Append sin(3x)") and records[1].recorded_at == 1000.0
    # Under the key the idea's outcome takes if the project runs it, so that outcome replaces the seed.
    assert records[1].signature == t.signature_of(step.state.spec.seed_ideas[1])
    out = _io.StringIO()
    render("aisci_tiny", records, Console(file=out, width=200))
    assert "seed-sine-features" in out.getvalue() and "seeded" in out.getvalue() and "code: Append sin(3x)" in out.getvalue()
    # A seed no project ran is not "tried": a later project on the template still proposes it.
    later = t.with_prior(step.state.model_copy(update={"project": "p2"}), records)
    assert later.prior == []


def _run(job: str, wall_s: float, idea: str = "baseline", status: str = "succeeded") -> RunRecord:
    return RunRecord(job_id=job, experiment_id=f"e-{job}", idea_id=idea, overrides={}, seeds=[0, 1, 2], status=status, wall_s=wall_s)


def test_the_first_baseline_runs_time_sets_the_next_projects_budget(tiny, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LAB_HOME", str(home))
    assert aisci.load(tiny).time_budget_s == aisci.DEFAULT_BUDGET_S  # nothing measured yet: the AI Scientist's own timeout
    # Only a succeeded baseline run is measured; the first project's export records it.
    assert not aisci.record_measured("aisci_tiny", [_run("j0", 9.0, status="failed"), _run("j1", 5.0, idea="i1")], "p0")
    assert aisci.record_measured("aisci_tiny", [_run("j1", 30.0, idea="i1"), _run("j2", 40.0), _run("j3", 50.0)], "p1")
    assert aisci.load(tiny).time_budget_s == 120.0  # 3 x 40 s: the second project on the same template gets it
    # The first measurement stands; a later project's export does not move it.
    assert not aisci.record_measured("aisci_tiny", [_run("j9", 1.0)], "p2")
    assert aisci.measured("aisci_tiny")[0] == 40.0
    code, said, _ = check(tiny)
    assert code == 0 and "3 × the measured 40 s = 120 s (measured on" in " ".join(said.split())
    # The override file still wins.
    (tiny / "lab.yaml").write_text("time_budget_s: 900\n")
    assert aisci.load(tiny).time_budget_s == 900.0


@pytest.mark.parametrize("wall_s, budget", [(0.2, 60.0), (20.0, 60.0), (100.0, 300.0), (5000.0, 7200.0)])
def test_the_measured_budget_is_at_least_a_minute_and_at_most_two_hours(tiny, tmp_path, wall_s, budget):
    aisci.record_measured("aisci_tiny", [_run("j", wall_s)], "p", home=tmp_path)
    assert aisci.derive(tiny, home=tmp_path).spec.time_budget_s == budget
