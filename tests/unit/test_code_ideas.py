"""Code-level ideas: template-declared variants, the engineer's edits and compute checks (the runs themselves: tests/integration/test_code_idea_runs.py)."""

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
    from agents.analyst.workflow import build_report
    from bus.schema import AnalysisRequest
    from tests.unit.test_analyst import SPEC, run

    def with_compute(r, **compute):  # type: ignore[no-untyped-def]
        assert r.final_info is not None
        r.final_info.compute = {"parameters": 100.0, "optimizer_steps": 130.0, **compute}
        return r

    base = with_compute(run("b", "baseline", [0.80, 0.79, 0.81], [0.5, 0.51, 0.52]))
    longer = with_compute(run("l", "longer-merge", [0.85, 0.86, 0.84], [0.4, 0.41, 0.39]), optimizer_steps=230.0)
    same = with_compute(run("s", "new-merge", [0.85, 0.86, 0.84], [0.4, 0.41, 0.39]))
    rep, _ = build_report("p", AnalysisRequest(round=1, spec=SPEC, runs=[base, longer, same]))
    flags = [f for f in rep.flags if f.kind == "compute_changed"]
    assert [f.idea_id for f in flags] == ["longer-merge"]
    assert "optimizer_steps: baseline 130, idea 230" in flags[0].text and "not at equal compute" in flags[0].text
    assert flags[0].text.startswith("compute changed: idea 'longer-merge'")


# ------------------------------------------------------------------ the minds' rules for code ideas


def _draft(**kw):  # type: ignore[no-untyped-def]
    from agents.minds.llm.schemas import IdeaDraft

    base = dict(title="A new merge", hypothesis="A new merge rule raises task_acc.", falsification="task_acc does not rise over seeds.",
                changes=[], rationale="", interestingness=5, feasibility=5, novelty=5)
    return IdeaDraft.model_validate({**base, **kw})


def test_the_llm_pi_accepts_a_code_idea_without_knob_changes_and_rejects_an_empty_one() -> None:
    from agents.minds.llm.errors import InvalidAnswer
    from agents.minds.llm.schemas import IdeaBatch
    from agents.pi.llm import IdeaRules, LLMPIMind, allowed_knobs

    _, spec = templates.load("model_merging")
    rules = IdeaRules(spec, allowed_knobs(spec, {}), [])
    code = _draft(code="Add a median-sign merge function and call it from merge().")
    rules(IdeaBatch(thoughts="", ideas=[code], done=True))
    idea = LLMPIMind._idea(None, code, rules)  # type: ignore[arg-type]
    assert idea.changes == {} and idea.code is not None and idea.code.summary.startswith("Add a median-sign")
    with pytest.raises(InvalidAnswer, match="changes no code"):
        rules(IdeaBatch(thoughts="", ideas=[_draft()], done=True))
    again = IdeaRules(spec, allowed_knobs(spec, {}), [idea])
    with pytest.raises(InvalidAnswer, match="repeats"):
        again(IdeaBatch(thoughts="", ideas=[_draft(title="Same again", code="add a median-sign merge function and call it from merge().")], done=True))


async def test_the_offline_engineer_implements_only_declared_variants() -> None:
    from agents.engineer.offline import OfflineEngineerMind
    from bus.schema import CodeChange, Idea, TemplateError

    _, spec = templates.load("model_merging")
    mind = OfflineEngineerMind()
    idea = Idea(id="i", title="t", hypothesis="h", falsification="f", changes={"density": 0.5},
                code=CodeChange(summary="DARE then TIES", variant="dare_ties"))
    plan = await mind.plan(idea, spec, {})
    assert plan.overrides == {"density": 0.5} and plan.edits == spec.variants["dare_ties"].edits
    with pytest.raises(TemplateError, match="declares no code variant 'nope'"):
        await mind.plan(idea.model_copy(update={"code": CodeChange(summary="x", variant="nope")}), spec, {})
    with pytest.raises(TemplateError, match="writes no code"):
        await mind.plan(idea.model_copy(update={"code": CodeChange(summary="something new")}), spec, {})
