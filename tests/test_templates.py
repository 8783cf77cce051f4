"""The built-in experiment templates: their specs load, and their fast profiles really run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agents import templates
from bus.schema import FinalInfo

NAMES = ["grokking", "2d_diffusion", "model_merging"]


def flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    return out


def run_fast(name: str, out: Path, seeds: str = "0,1,2") -> FinalInfo:
    folder, spec = templates.load(name)
    cmd = [sys.executable, "experiment.py", "--out_dir", str(out), "--seeds", seeds, *flags(spec.fast)]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seed" in proc.stdout  # progress lines are printed
    return FinalInfo.model_validate_json((out / "final_info.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_builtin_spec_loads(name: str) -> None:
    folder, spec = templates.load(name)
    assert (folder / "references.bib").is_file()
    assert spec.seeds >= 3
    assert spec.task and spec.keywords
    # Every knob in template.yaml is a flag of experiment.py with the same default.
    source = (folder / "experiment.py").read_text()
    for knob, k in spec.knobs.items():
        assert f'"{knob}": (' in source, f"{name}: knob {knob} missing from experiment.py"
    spec.check_overrides({**spec.baseline, **spec.fast})


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fast_profile_runs_and_plots(name: str, tmp_path: Path) -> None:
    _, spec = templates.load(name)
    info = run_fast(name, tmp_path / "run")
    assert info.seeds == [0, 1, 2]
    assert set(info.metrics) == set(spec.metrics)
    for metric, stat in info.metrics.items():
        assert len(stat.values) == 3 and all(math.isfinite(v) for v in stat.values), metric
        mean = sum(stat.values) / 3
        sd = math.sqrt(sum((v - mean) ** 2 for v in stat.values) / 2)
        assert stat.mean == pytest.approx(mean, abs=1e-9)
        assert stat.stderr == pytest.approx(sd / math.sqrt(3), abs=1e-9)
    extra = info.model_extra or {}
    assert extra["device"] in ("cpu", "cuda")
    assert info.config == {**spec.defaults(), **spec.fast}
    assert info.compute and all(math.isfinite(v) and v >= 0 for v in info.compute.values())  # what each run spent

    folder, _ = templates.load(name)
    figs = tmp_path / "figs"
    proc = subprocess.run([sys.executable, "plot.py", "--run_dir", str(tmp_path / "run"), "--out_dir", str(figs)],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(figs.glob("*.png"))


@pytest.mark.slow
def test_same_seed_gives_same_numbers(tmp_path: Path) -> None:
    a = run_fast("model_merging", tmp_path / "a", seeds="4")
    b = run_fast("model_merging", tmp_path / "b", seeds="4")
    assert {m: s.values for m, s in a.metrics.items()} == {m: s.values for m, s in b.metrics.items()}


@pytest.mark.slow
def test_merge_function_changes_the_result(tmp_path: Path) -> None:
    """The knobs are wired: a different merge function or coefficient gives different numbers."""
    folder, spec = templates.load("model_merging")
    results = {}
    for label, extra in {"ta": [], "avg": ["--merge_fn", "average"], "fixed": ["--select_scaling", "false", "--scaling_coef", "1.5"]}.items():
        out = tmp_path / label
        subprocess.run([sys.executable, "experiment.py", "--out_dir", str(out), "--seeds", "0", *flags(spec.fast), *extra],
                       cwd=folder, check=True, capture_output=True, timeout=120)
        results[label] = json.loads((out / "final_info.json").read_text())["metrics"]["merged_acc"]["mean"]
    assert len(set(results.values())) == 3, results


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
