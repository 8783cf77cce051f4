"""Every baseline value the PI states or compares with is the one the runs use under the project's profile."""

from __future__ import annotations

from agents.minds.base import IdeaContext
from agents.minds.llm.common import knob_lines
from agents.minds.llm.errors import InvalidAnswer
from agents.minds.llm.schemas import IdeaBatch, IdeaDraft, KnobValue
from agents.pi import transitions as t
from agents.pi.llm import IdeaRules, allowed_knobs
from agents.pi.offline import OfflinePIMind, candidate_values
from agents.pi.scoring import Scorer
from agents.templates import load
from bus.schema import Budget, Idea, StartProject

_, CHAR_LM = load("char_lm")
FAST = CHAR_LM.effective("fast")


def started(profile: str = "fast", direction: str = "") -> t.Step:
    body = StartProject(template="char_lm", template_object="p1/t.tar.gz", spec=CHAR_LM, direction=direction, seed=1,
                        budget=Budget(max_ideas=3, max_runs=12), fast=profile == "fast", profile=profile)
    return t.start(None, body, "p1", 0.0)


async def test_under_the_fast_profile_every_stated_baseline_value_is_the_effective_one() -> None:
    assert FAST["warmup_steps"] == 40 and FAST["lr"] == 0.003  # the fast profile moves them off the declared 50 and 0.001
    ideas = await OfflinePIMind(0).propose_ideas(IdeaContext(spec=CHAR_LM, direction="", n=100, profile="fast"))
    assert ideas
    for idea in ideas:
        if idea.code is not None:
            continue
        [(name, value)] = idea.changes.items()
        assert f"(baseline {FAST[name]})" in idea.title, idea.title
        assert f"instead of {FAST[name]} " in idea.hypothesis, idea.hypothesis
        assert value != FAST[name]
    warmup = [i for i in ideas if "warmup_steps" in i.changes]
    assert warmup and all("from 50" not in i.hypothesis and "instead of 50 " not in i.hypothesis for i in warmup)


async def test_an_idea_identical_to_the_effective_baseline_never_enters_the_pool() -> None:
    ideas = await OfflinePIMind(0).propose_ideas(IdeaContext(spec=CHAR_LM, direction="", n=100, profile="fast"))
    ids = {i.id for i in ideas}
    assert "lr-0p003" not in ids  # the fast baseline's own lr
    assert "lr-0p001" in ids  # the declared default is a change under --fast
    assert all(any(FAST[k] != v for k, v in i.changes.items()) for i in ideas if i.code is None)
    assert 0.003 not in candidate_values(CHAR_LM.knobs["lr"], FAST["lr"])
    # As declared (no profile), 0.003 is a change again and the default 0.001 is not.
    plain = await OfflinePIMind(0).propose_ideas(IdeaContext(spec=CHAR_LM, direction="", n=100))
    assert "lr-0p003" in {i.id for i in plain} and "lr-0p001" not in {i.id for i in plain}


def test_the_pi_refuses_an_idea_identical_to_the_baseline_with_a_logged_reason() -> None:
    step = started()
    same = Idea(id="lr-fast", title="lr 0.003", hypothesis="h", falsification="f", changes={"lr": 0.003})
    other = Idea(id="lr-small", title="lr 0.001", hypothesis="h", falsification="f", changes={"lr": 0.001})
    after = t.wave_proposed(step.state, [same, other], 2)
    assert "lr-fast" not in after.state.ideas and "lr-small" in after.state.ideas
    refused = [e for e in after.effects if isinstance(e, t.Log) and e.event == "idea refused"]
    assert len(refused) == 1 and refused[0].fields["idea"] == "lr-fast"
    assert "identical to the baseline as it runs under profile fast (lr=0.003)" in refused[0].fields["reason"]
    checked = [b.idea.id for b, _ in after.sent if b.type == "novelty_check"]
    assert checked == ["lr-small"]


def test_the_idea_context_carries_the_profile_even_for_a_fast_only_start() -> None:
    body = StartProject(template="char_lm", template_object="p1/t.tar.gz", spec=CHAR_LM, seed=1, fast=True)
    step = t.start(None, body, "p1", 0.0)
    assert step.state.profile == "" and t.idea_context(step.state, 2).profile == "fast"
    assert t.baseline_of(step.state) == FAST


def test_the_scorer_and_the_llm_prompt_compare_with_the_effective_baseline() -> None:
    assert Scorer(IdeaContext(spec=CHAR_LM, direction="", profile="fast")).base == FAST
    lines = {ln.split(":")[0][2:]: ln for ln in knob_lines(CHAR_LM, profile="fast").splitlines()}
    assert "baseline 40" in lines["warmup_steps"] and "baseline 0.003" in lines["lr"]
    assert "baseline" not in knob_lines(CHAR_LM, baseline=False)


def test_the_llm_rules_refuse_an_idea_that_restates_the_effective_baseline() -> None:
    rules = IdeaRules(CHAR_LM, allowed_knobs(CHAR_LM, {}), [], profile="fast")

    def batch(value: float) -> IdeaBatch:
        draft = IdeaDraft(title="lr change", hypothesis="a different lr lowers val_loss", falsification="no lower val_loss, p >= 0.05",
                          changes=[KnobValue(knob="lr", value=value)], rationale="r", interestingness=5, feasibility=5, novelty=5)
        return IdeaBatch(thoughts="t", ideas=[draft], done=True)

    try:
        rules(batch(0.003))
        raise AssertionError("lr 0.003 is the fast baseline's own value")
    except InvalidAnswer as e:
        assert "{'lr': 0.003}" in str(e)
    rules(batch(0.001))  # the declared default is a change under --fast
