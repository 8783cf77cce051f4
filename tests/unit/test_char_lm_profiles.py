"""The char_lm template's spec: its knobs match the experiment, its profiles size jobs, and the engineer plans each run with them."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from agents.templates import BUILTIN_DIR, load
from bus.schema import TemplateError, parse_spec

TEMPLATE = BUILTIN_DIR / "char_lm"


def test_knob_defaults_match_the_experiment():
    spec = importlib.util.spec_from_file_location("char_lm_experiment", TEMPLATE / "experiment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _, tpl = load("char_lm")
    assert {k: v.default for k, v in tpl.knobs.items()} == {k: d for k, (_, d) in module.KNOBS.items()}


def test_profiles_choose_knobs_resources_and_time():
    _, spec = load("char_lm")
    assert spec.resumable
    default, fast, gpu = spec.profile(None), spec.profile("fast"), spec.profile("gpu")
    assert default.resources.gpu == 0 and default.overrides == {}
    assert fast.resources == spec.resources and fast.overrides["max_steps"] < spec.knobs["max_steps"].default
    assert spec.fast == fast.overrides  # --fast and --profile fast are one thing
    assert gpu.resources.gpu == 1 and gpu.time_budget_s > spec.time_budget_s and gpu.overrides["n_embd"] == 384
    with pytest.raises(TemplateError, match="no profile 'tpu'; known: default, fast, gpu"):
        spec.profile("tpu")
    assert parse_spec(spec.model_dump(mode="json")) == spec  # the spec travels in messages as JSON


def test_a_profile_with_an_unknown_knob_is_rejected():
    data = yaml.safe_load((TEMPLATE / "template.yaml").read_text())
    data["profiles"]["gpu"]["overrides"]["n_layers"] = 6
    with pytest.raises(TemplateError, match=r"profiles.gpu.n_layers: not a declared knob"):
        parse_spec(data)
    del data["profiles"]["gpu"]["overrides"]["n_layers"]
    data["fast"] = {"max_steps": 50}  # an old-style fast profile that disagrees with profiles.fast
    with pytest.raises(TemplateError, match="declare the fast profile once"):
        parse_spec(data)
    data["profiles"]["default"] = data["profiles"].pop("fast")
    with pytest.raises(TemplateError, match="profiles.default: reserved"):
        parse_spec(data)


@pytest.mark.parametrize(
    ("profile", "fast", "gpu", "max_steps"),
    [("gpu", False, 1, 5000), ("", True, 0, 400), ("fast", False, 0, 400), ("", False, 0, 500)],
)
async def test_the_engineer_plans_a_job_with_its_profile(profile, fast, gpu, max_steps):
    """A project's profile reaches the job: knobs, GPUs, memory and time; an old `fast: true` still means fast."""
    from types import SimpleNamespace

    from agents.engineer.workflow import Engineer
    from bus.schema import ExperimentRequest

    _, spec = load("char_lm")
    req = ExperimentRequest(experiment_id="x00-baseline", seeds=[0, 1, 2], template="char_lm", template_object="p/t.tar.gz",
                            spec=spec.model_dump(mode="json"), profile=profile, fast=fast)
    record = await Engineer()._plan(SimpleNamespace(project="p", jobs=SimpleNamespace(results=None)), req, 1, "")  # no result cache
    job = record.spec
    chosen = spec.profile(profile or ("fast" if fast else None))
    assert job.gpu == gpu and job.memory_mb == chosen.resources.memory_mb and job.wall_time_s == chosen.time_budget_s
    assert job.overrides.get("max_steps", spec.knobs["max_steps"].default) == max_steps
    assert job.resumable and job.nats is None  # a plan kept in state never holds the runner's credential


def test_heads_must_divide_the_width_in_every_run_the_template_allows():
    """``divides``: checked on the template's own runs when it loads, and on each run's whole configuration."""
    from agents.engineer.jobs import plan_job

    _, spec = load("char_lm")
    assert spec.knobs["n_head"].divides == ["n_embd"]
    assert spec.check_overrides({"n_head": 8}) == {"n_head": 8}
    with pytest.raises(TemplateError, match="n_head=12 must divide n_embd=128"):
        spec.check_overrides({"n_head": 12})
    assert spec.check_overrides({"n_head": 12}, profile="gpu") == {"n_head": 12}  # 384 wide
    with pytest.raises(TemplateError, match="n_head=6 must divide n_embd=64"):
        spec.check_overrides({"n_embd": 64}, profile="gpu")  # the gpu profile's 6 heads stay
    # The engineer plans the run with the profile's knobs: the same refusal, before any job starts.
    with pytest.raises(TemplateError, match="n_head=12 must divide n_embd=64"):
        plan_job(spec, "fast", job_id="j", project="p", experiment_id="x", bundle_object="b", seeds=[0], changes={"n_head": 12})
    # A template whose own profile breaks the relation does not load, in one line naming it.
    data = yaml.safe_load((TEMPLATE / "template.yaml").read_text())
    data["profiles"]["gpu"]["overrides"]["n_embd"] = 380
    with pytest.raises(TemplateError, match="profiles.gpu: n_head=6 must divide n_embd=380"):
        parse_spec(data)
    data = yaml.safe_load((TEMPLATE / "template.yaml").read_text())
    data["knobs"]["n_head"]["divides"] = ["dropout"]
    with pytest.raises(TemplateError, match="divides: 'dropout' must be a declared int knob"):
        parse_spec(data)
