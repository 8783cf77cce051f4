"""The built-in templates' fast profiles really run as the runner runs them: they plot, repeat a seed exactly, and their knobs change the result."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from agents import templates
from bus.schema import FinalInfo
from tests.unit.test_template_specs import NAMES


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
