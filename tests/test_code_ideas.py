"""Code-level ideas: template-declared variants, the engineer's edits, compute checks and the paper's diff."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from agents import templates
from agents.codeedit import apply_edits

MERGING = templates.BUILTIN_DIR / "model_merging"


def copy_with(tmp_path: Path, edit_yaml) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "model_merging"
    shutil.copytree(MERGING, folder)
    data = yaml.safe_load((folder / "template.yaml").read_text())
    edit_yaml(data)
    (folder / "template.yaml").write_text(yaml.safe_dump(data))
    return folder


def test_model_merging_declares_variants_whose_edits_apply_and_pass_the_guard() -> None:
    folder, spec = templates.load("model_merging")
    assert {"ties_magnitude_sign", "dare_ties"} <= set(spec.variants)
    files = templates.bundle_files(templates.bundle(folder))
    for name, variant in spec.variants.items():
        out = apply_edits(files, variant.edits)
        assert out["experiment.py"] != files["experiment.py"], name
        assert variant.description


def test_a_variant_whose_search_text_is_not_found_is_rejected_at_load(tmp_path: Path) -> None:
    folder = copy_with(tmp_path, lambda d: d["variants"]["dare_ties"]["edits"][0].update(search="    return no_such_line()\n"))
    with pytest.raises(templates.TemplateError) as e:
        templates.load(str(folder))
    msg = str(e.value)
    assert "\n" not in msg and "variants.dare_ties.edits.0" in msg and "not found" in msg


def test_a_variant_naming_a_missing_file_or_an_ambiguous_search_is_rejected(tmp_path: Path) -> None:
    folder = copy_with(tmp_path, lambda d: d["variants"]["dare_ties"]["edits"][0].update(path="nope.py"))
    with pytest.raises(templates.TemplateError, match="no file 'nope.py'"):
        templates.load(str(folder))
    folder = copy_with(tmp_path / "b", lambda d: d["variants"]["dare_ties"]["edits"][0].update(search="import "))
    with pytest.raises(templates.TemplateError, match="found [0-9]+ times"):
        templates.load(str(folder))


def test_an_idea_whose_recorded_compute_differs_from_the_baseline_is_flagged() -> None:
    from agents.analyst import build_report
    from bus.schema import AnalysisRequest
    from tests.test_analyst import SPEC, run

    def with_compute(r, **compute):  # type: ignore[no-untyped-def]
        assert r.final_info is not None
        r.final_info.compute = {"parameters": 100.0, "optimizer_steps": 130.0, **compute}
        return r

    base = with_compute(run("b", "baseline", [0.80, 0.79, 0.81], [0.5, 0.51, 0.52]))
    longer = with_compute(run("l", "longer-merge", [0.85, 0.86, 0.84], [0.4, 0.41, 0.39]), optimizer_steps=230.0)
    same = with_compute(run("s", "new-merge", [0.85, 0.86, 0.84], [0.4, 0.41, 0.39]))
    rep, _ = build_report("p", AnalysisRequest(round=1, spec=SPEC, runs=[base, longer, same]))
    flags = [f for f in rep.flag_items if f.kind == "compute_changed"]
    assert [f.idea_id for f in flags] == ["longer-merge"]
    assert "optimizer_steps: baseline 130, idea 230" in flags[0].text and "not at equal compute" in flags[0].text
    assert any(t.startswith("compute changed: idea 'longer-merge'") for t in rep.flags)
