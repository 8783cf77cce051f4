"""The built-in experiment templates: their specs load, bad ones are refused in one line, and their metrics and compute knobs say what they mean."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agents import templates

NAMES = ["grokking", "2d_diffusion", "model_merging"]


@pytest.mark.parametrize("name", NAMES)
def test_builtin_spec_loads(name: str) -> None:
    folder, spec = templates.load(name)
    assert (folder / "references.bib").is_file()
    assert spec.seeds >= 3
    assert spec.task and spec.keywords
    # Every knob in template.yaml is a flag of experiment.py with the same default.
    source = (folder / "experiment.py").read_text()
    for knob in spec.knobs:
        assert f'"{knob}": (' in source, f"{name}: knob {knob} missing from experiment.py"
    spec.check_overrides({**spec.baseline, **spec.fast})


def broken(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "grokking"
    src, _ = templates.load("grokking")
    folder.mkdir()
    for f in ("experiment.py", "plot.py", "references.bib"):
        (folder / f).write_text((src / f).read_text())
    data = yaml.safe_load((src / "template.yaml").read_text())
    edit(data)
    (folder / "template.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_knob_default_out_of_range_names_the_field(tmp_path: Path) -> None:
    folder = broken(tmp_path, lambda d: d["knobs"]["lr"].update(default=5.0))
    with pytest.raises(templates.TemplateError) as e:
        templates.load(str(folder))
    msg = str(e.value)
    assert "\n" not in msg and "knobs.lr" in msg and "maximum" in msg


def test_missing_primary_metric_is_one_line(tmp_path: Path) -> None:
    folder = broken(tmp_path, lambda d: d["metrics"]["steps_to_val_99"].pop("primary"))
    with pytest.raises(templates.TemplateError) as e:
        templates.load(str(folder))
    msg = str(e.value)
    assert "\n" not in msg and "primary" in msg


def test_unknown_fast_override_names_the_knob(tmp_path: Path) -> None:
    folder = broken(tmp_path, lambda d: d["fast"].update(learning_rate=0.1))
    with pytest.raises(templates.TemplateError, match="fast.learning_rate"):
        templates.load(str(folder))


def test_primary_metrics_can_discriminate_and_compute_knobs_are_marked() -> None:
    """grokking's final val_acc saturates at 1.0, so its primary is the steps until 99%, as in the AI Scientist."""
    primaries = {name: templates.load(name)[1].primary_metric for name in NAMES}
    assert primaries["grokking"] == "steps_to_val_99"
    assert primaries["2d_diffusion"] == "mmd" and primaries["model_merging"] == "task_acc"
    compute = {name: {k for k, v in templates.load(name)[1].knobs.items() if v.changes_compute} for name in NAMES}
    assert {"num_layers", "d_model", "num_steps"} <= compute["grokking"] and "weight_decay" not in compute["grokking"]
    assert {"num_layers", "hidden_size", "num_timesteps", "num_train_steps"} <= compute["2d_diffusion"]
    assert {"hidden_size", "finetune_steps"} <= compute["model_merging"] and "merge_fn" not in compute["model_merging"]


async def test_offline_hypotheses_never_claim_equal_compute_when_a_compute_knob_changes() -> None:
    from agents.minds.base import IdeaContext
    from agents.pi.offline import OfflinePIMind

    folder, spec = templates.load("grokking")
    ideas = await OfflinePIMind(0).propose_ideas(IdeaContext(spec=spec.model_dump(), n=30, direction="", seed=0))
    by_knob = {next(iter(i.changes)): i for i in ideas}
    assert "num_layers" in by_knob and "weight_decay" in by_knob
    assert "compute budget held equal" not in by_knob["num_layers"].hypothesis
    assert "not at equal compute" in by_knob["num_layers"].hypothesis
    assert "compute budget held equal" in by_knob["weight_decay"].hypothesis
    assert "Holm" in by_knob["weight_decay"].falsification
