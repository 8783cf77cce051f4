"""`lab run --direction "..."`: the ideas on what the direction names come first, the rest only after, each saying why."""

from __future__ import annotations

import pytest

from agents.minds.base import IdeaContext
from agents.minds.llm.errors import InvalidAnswer
from agents.minds.llm.schemas import IdeaBatch, IdeaDraft, KnobValue
from agents.pi import direction
from agents.pi import transitions as t
from agents.pi.llm import IdeaRules, allowed_knobs
from agents.pi.offline import OfflinePIMind
from agents.templates import load
from bus.schema import Budget, Idea, StartProject

_, CHAR_LM = load("char_lm")
SMALLER_LR = "does a smaller learning rate lower the validation loss?"


def test_the_learning_rate_names_lr_through_its_description_and_smaller_says_which_way() -> None:
    focus = direction.read(SMALLER_LR, CHAR_LM)
    # "learning rate" is in lr's description ("peak AdamW learning rate") and spells its initials; the other
    # knobs whose descriptions mention a learning rate (warmup, min_lr_ratio) are less specific and left out.
    assert list(focus.knobs) == ["lr"] and focus.smaller == {"lr"} and not focus.larger
    assert focus.metrics == ["val_loss"]  # "validation loss" is val_loss by its name's parts
    assert list(direction.read("does warmup help?", CHAR_LM).knobs) == ["warmup_steps"]
    assert list(direction.read("min_lr_ratio=0", CHAR_LM).knobs) == ["min_lr_ratio"]  # not lr inside it
    assert not direction.read("", CHAR_LM).named


@pytest.mark.parametrize("profile", ["fast", ""])
async def test_a_direction_naming_the_learning_rate_yields_lr_ideas_first_smaller_first(profile: str) -> None:
    base = CHAR_LM.effective(profile or None)
    ideas = await OfflinePIMind(0).propose_ideas(IdeaContext(spec=CHAR_LM, direction=SMALLER_LR, n=100, profile=profile))
    on_lr = [i for i in ideas if "lr" in i.changes]
    assert on_lr and ideas[: len(on_lr)] == on_lr  # every lr idea before any other
    assert on_lr[0].changes["lr"] < base["lr"]  # "smaller": below the baseline's value first
    smaller = [i.changes["lr"] < base["lr"] for i in on_lr]
    assert smaller == sorted(smaller, reverse=True)
    # The rest say why they are proposed though the direction names lr only.
    assert all(i.outside_direction.startswith("outside the direction") for i in ideas[len(on_lr):])
    assert all(not i.outside_direction for i in on_lr)


async def run_wave(step: t.Step) -> t.Step:
    assert isinstance(step.ask, t.ProposeIdeas)
    ideas = await OfflinePIMind(0).propose_ideas(t.idea_context(step.state, step.ask.n))
    return t.wave_proposed(step.state, ideas, step.ask.take)


def started(direction: str) -> t.Step:
    body = StartProject(template="char_lm", template_object="p1/t.tar.gz", spec=CHAR_LM, direction=direction, seed=1,
                        budget=Budget(max_ideas=4, max_runs=12), fast=True, profile="fast")
    return t.start(None, body, "p1", 0.0)


async def test_the_first_wave_under_fast_runs_lr_ideas_and_outside_ones_come_after_with_a_log_line() -> None:
    step = await run_wave(started(SMALLER_LR))
    checked = [b.idea for b, _ in step.sent if b.type == "novelty_check"]
    assert sorted(i.changes["lr"] for i in checked) == [0.0003, 0.001]  # both below the fast baseline's 0.003
    # The lr candidates are exhausted: the next wave is outside the direction, and each such idea is logged so.
    st = step.state
    for idea in checked:
        st = t.verdict(st, t.NoveltyVerdict(idea_id=idea.id, novel=False, justification="known"), 1.0).state
    nxt = await run_wave(t.Step(st, [], t._plan_wave(st, 1.0)))
    later = [b.idea for b, _ in nxt.sent if b.type == "novelty_check"]
    logged = [e.fields["idea"] for e in nxt.effects if isinstance(e, t.Log) and e.event == "idea outside the direction"]
    assert later and all("lr" not in i.changes and i.outside_direction for i in later)
    assert logged == [i.id for i in later]


def test_an_idea_outside_the_direction_without_a_reason_is_refused_whatever_mind_proposed_it() -> None:
    step = started(SMALLER_LR)
    bare = Idea(id="dropout-0p1", title="dropout", hypothesis="h", falsification="f", changes={"dropout": 0.1})
    said = bare.model_copy(update={"id": "dropout-0p2", "changes": {"dropout": 0.2}, "outside_direction": "regularisation may interact with lr"})
    inside = Idea(id="lr-small", title="lr", hypothesis="h", falsification="f", changes={"lr": 0.001})
    after = t.wave_proposed(step.state, [bare, said, inside], 3)
    assert set(after.state.ideas) == {"dropout-0p2", "lr-small"}
    assert list(after.state.ideas)[0] == "lr-small"  # inside first
    refused = [e.fields for e in after.effects if isinstance(e, t.Log) and e.event == "idea refused"]
    assert [r["idea"] for r in refused] == ["dropout-0p1"] and "outside the direction" in refused[0]["reason"]


def test_the_llm_must_explain_an_idea_outside_the_direction() -> None:
    rules = IdeaRules(CHAR_LM, allowed_knobs(CHAR_LM, {}), [], profile="fast", direction=SMALLER_LR)

    def batch(knob: str, value: float, why: str = "") -> IdeaBatch:
        draft = IdeaDraft(title=f"{knob} change", hypothesis="it lowers val_loss at equal compute", falsification="no lower val_loss, p >= 0.05",
                          changes=[KnobValue(knob=knob, value=value)], rationale="r", interestingness=5, feasibility=5, novelty=5,
                          outside_direction=why)
        return IdeaBatch(thoughts="t", ideas=[draft], done=True)

    with pytest.raises(InvalidAnswer, match="outside_direction"):
        rules(batch("dropout", 0.1))
    rules(batch("dropout", 0.1, "dropout changes the best learning rate"))
    rules(batch("lr", 0.001))
