"""Each role's llm mind on autogen's ReplayChatCompletionClient: happy paths, and rules the model must obey."""

from __future__ import annotations

import pytest

from agents.minds import make_mind
from agents.minds.base import AnalystMind, EngineerMind, IdeaContext, LiteratureMind, PIMind, ReviewContext, ReviewerMind, WriterMind
from agents.minds.llm.errors import MindFailed
from bus.schema import CoPINote, DraftRequest, Idea, IdeaOutcome, Reference, Review, RevisionItem, TemplateSpec
from tests.llm_helpers import SPEC, clean_env, replay, report, sent

pytestmark = pytest.mark.usefixtures("clean_env")
__all__ = ["clean_env"]


def mind(role: str, client, **config):
    return make_mind("llm", role, seed=7, config={"model_client": client, **config})


def idea_json(title: str, changes: dict, **kw) -> dict:
    return {
        "title": title, "hypothesis": f"{title} lowers val_loss against the baseline", "falsification": "no drop over 3 seeds, p >= 0.05",
        "changes": [{"knob": k, "value": v} for k, v in changes.items()], "rationale": "regularisation", "interestingness": 6,
        "feasibility": 9, "novelty": 4, **kw,
    }


IDEA = Idea(id="wd-1", title="Weight decay", hypothesis="h", falsification="f", changes={"weight_decay": 0.01})
REFS = [Reference(key="loshchilov2019", title="Decoupled Weight Decay Regularization", bibtex="@article{loshchilov2019}")]


async def test_pi_reflects_until_done_and_keeps_ideas_in_the_knob_space() -> None:
    client = replay(
        {"thoughts": "first", "ideas": [idea_json("Weight decay", {"weight_decay": 0.01}), idea_json("GELU", {"activation": "gelu"})], "done": False},
        {"thoughts": "better", "ideas": [idea_json("Weight decay 0.02", {"weight_decay": 0.02}), idea_json("GELU", {"activation": "gelu"})], "done": True},
    )
    pi = mind("pi", client, reflection_rounds=3)
    assert isinstance(pi, PIMind)
    note = CoPINote(id="n1", text="please try regularisation")
    ideas = await pi.propose_ideas(IdeaContext(spec=SPEC, direction="regularisation", notes=[note], n=2))
    assert [i.changes for i in ideas] == [{"weight_decay": 0.02}, {"activation": "gelu"}]
    assert len(client.create_calls) == 2  # stopped early: done after the first reflection, not 3
    first = sent(client, 0)
    assert "please try regularisation" in first and "n_train" not in first  # a fairness knob is never offered
    assert "Reflection round 1 of 3" in sent(client, 1)
    assert ideas[0].id != ideas[1].id and all(1 <= i.novelty <= 10 for i in ideas)
    assert pi.usage.prompt_tokens > 0 and pi.usage.completion_tokens > 0


async def test_pi_ideas_outside_allowed_knobs_are_sent_back_with_the_reason() -> None:
    client = replay(
        {"thoughts": "", "ideas": [idea_json("Larger LR", {"lr": 0.3})], "done": True},
        {"thoughts": "", "ideas": [idea_json("More data", {"n_train": 5000})], "done": True},
        {"thoughts": "", "ideas": [idea_json("Huge WD", {"weight_decay": 5.0})], "done": True},
        {"thoughts": "", "ideas": [idea_json("Some WD", {"weight_decay": 0.05})], "done": True},
    )
    pi = mind("pi", client)
    ctx = IdeaContext(spec=SPEC, direction="", constraints={"allowed_knobs": ["weight_decay", "n_train"]}, n=1)
    ideas = await pi.propose_ideas(ctx)
    assert ideas[0].changes == {"weight_decay": 0.05}
    assert "['lr'], not allowed" in sent(client, 1) and "['weight_decay']" in sent(client, 1)
    assert "['n_train'], not allowed" in sent(client, 2)  # fairness knobs stay out even when the co-PI allows them
    assert "above the maximum" in sent(client, 3)


async def test_pi_does_not_repeat_previous_ideas() -> None:
    client = replay(
        {"thoughts": "", "ideas": [idea_json("WD again", {"weight_decay": 0.01})], "done": True},
        {"thoughts": "", "ideas": [idea_json("tanh", {"activation": "tanh"})], "done": True},
    )
    outcomes = {"wd-1": IdeaOutcome(idea_id="wd-1", changes=IDEA.changes, status="worse")}
    ideas = await mind("pi", client).propose_ideas(IdeaContext(spec=SPEC, direction="", previous=[IDEA], outcomes=outcomes, n=1))
    assert ideas[0].changes == {"activation": "tanh"}
    assert "worse" in sent(client, 0) and "already proposed" in sent(client, 1)


async def test_pi_reads_a_note_into_constraints() -> None:
    client = replay(
        {"understood": "only weight decay from now on", "allowed_knobs": ["wd"], "forbidden_knobs": []},
        {"understood": "only weight decay from now on", "allowed_knobs": ["weight_decay"], "forbidden_knobs": []},
    )
    reading = await mind("pi", client).read_note(CoPINote(id="n", text="only vary weight decay"), TemplateSpec.model_validate(SPEC))
    assert reading.constraints == {"allowed_knobs": ["weight_decay"]}
    assert "unknown knobs ['wd']" in sent(client, 1)


async def test_pi_answers_every_review_item_within_the_run_budget() -> None:
    items = [RevisionItem(id="r1", kind="more_seeds", text="more seeds"), RevisionItem(id="r2", kind="add_limitation", text="limits")]
    client = replay(
        {"responses": [{"item_id": "r1", "action": "act", "text": "will run"}, {"item_id": "r2", "action": "act", "text": "added"}]},
        {"responses": [{"item_id": "r1", "action": "rebut", "text": "no runs left; stated as a limitation"}]},
        {"responses": [{"item_id": "r1", "action": "rebut", "text": "no runs left"}, {"item_id": "r2", "action": "act", "text": "added"}]},
    )
    answers = await mind("pi", client).answer_review(ReviewContext(items=items, report=report(), runs_left=0, rounds_left=1))
    assert [(a.item_id, a.action) for a in answers] == [("r1", "rebut"), ("r2", "act")]
    assert "['r1'] cannot be acted on" in sent(client, 1) and "missing ['r2']" in sent(client, 2)


async def test_literature_queries_and_novelty_cite_only_found_papers() -> None:
    client = replay(
        {"queries": ["weight decay MLP regression", "weight decay MLP regression", "decoupled weight decay"]},
        {"novel": False, "justification": "Already studied by prior work.", "cited_keys": ["smith2020"]},
        {"novel": False, "justification": "Decoupled weight decay covers it.", "cited_keys": ["loshchilov2019"]},
    )
    lit = mind("literature", client)
    assert isinstance(lit, LiteratureMind)
    assert await lit.queries(IDEA, SPEC["task"], [], 1) == ["weight decay MLP regression", "decoupled weight decay"]
    verdict = await lit.judge_novelty(IDEA, REFS)
    assert not verdict.novel and verdict.cited_keys == ["loshchilov2019"]
    assert "['smith2020'] are not among the papers found" in sent(client, 2)


FILES = {"experiment.py": "import json\nlr = 0.1\nprint(json.dumps({'lr': lr}))\n", "plot.py": "import json\n", "template.yaml": "name: toy\n"}


async def test_engineer_plans_overrides_and_guarded_edits() -> None:
    client = replay(
        {"explanation": "wd", "overrides": [{"knob": "weight_decay", "value": 0.01}],
         "edits": [{"path": "experiment.py", "search": "lr = 0.1\n", "replace": "lr = 0.1\nimport signal\nsignal.alarm(10**6)\n"}]},
        {"explanation": "wd", "overrides": [{"knob": "weight_decay", "value": 0.01}],
         "edits": [{"path": "experiment.py", "search": "lr = 0.2\n", "replace": "lr = 0.05\n"}]},
        {"explanation": "wd and a smaller step", "overrides": [{"knob": "weight_decay", "value": 0.01}],
         "edits": [{"path": "experiment.py", "search": "lr = 0.1\n", "replace": "lr = 0.05\n"}]},
    )
    eng = mind("engineer", client)
    assert isinstance(eng, EngineerMind)
    plan = await eng.plan(IDEA, TemplateSpec.model_validate(SPEC), FILES, error="Traceback: ZeroDivisionError in experiment.py line 3")
    assert plan.overrides == {"weight_decay": 0.01} and plan.edits[0].replace == "lr = 0.05\n"
    assert "ZeroDivisionError" in sent(client, 0) and "lr = 0.1" in sent(client, 0)  # the files and the error are shown
    assert "signal.alarm" in sent(client, 1) and "search text not found: 'lr = 0.2'" in sent(client, 2)


async def test_writer_cites_only_given_references() -> None:
    sections = {
        k: f"{k} text" for k in ("introduction", "related_work", "method", "experimental_setup", "results", "limitations", "conclusion", "revision_notes")
    }
    client = replay(
        {"title": "Weight decay", "abstract": "We test weight decay on a toy task.", **sections, "related_work": "See \\cite{ghost2021}."},
        {"title": "Weight decay", "abstract": "We test weight decay on a toy task.", **sections, "related_work": "See \\citep{loshchilov2019}."},
    )
    writer = mind("writer", client, write_by_section=False)
    assert isinstance(writer, WriterMind)
    request = DraftRequest(round=0, spec=SPEC, direction="regularisation", ideas=[IDEA], report=report(), references=REFS)
    paper = await writer.write(request)
    assert paper.related_work == "See \\citep{loshchilov2019}." and paper.title == "Weight decay"
    assert "['ghost2021'] are not in the references" in sent(client, 1)


def review_json(overall: int, decision: str) -> dict:
    scores = {k: 3 for k in ("originality", "quality", "clarity", "significance", "soundness", "presentation", "contribution")}
    return {"summary": "A small study of weight decay.", "strengths": ["clear"], "weaknesses": ["few seeds"], "questions": ["why 3 seeds?"],
            "limitations": "toy task", "ethics": "none", "scores": {**scores, "overall": overall, "confidence": 3}, "decision": decision}


async def test_reviewer_ensemble_member_and_meta_review() -> None:
    client = replay(
        review_json(2, "accept"),
        review_json(6, "accept"),
        {"summary": "Sound but small.", "overall": 6, "decision": "revise",
         "revision_items": [{"id": "r1", "kind": "more_seeds", "text": "10 seeds", "target": "wd-1"}]},
        {"summary": "Sound but small.", "overall": 6, "decision": "accept", "revision_items": []},
    )
    reviewer = mind("reviewer", client, review_reflections=0)
    assert isinstance(reviewer, ReviewerMind) and reviewer.client.settings.temperature > 0
    review = await reviewer.review("# Weight decay\n...", report(), REFS, index=1)
    assert isinstance(review, Review) and review.reviewer == "llm-1" and review.scores.overall == 6
    assert "contradicts overall score 2" in sent(client, 1)
    assert client.create_calls[0]["extra_create_args"]["seed"] == 7 * 1000 + 1  # each ensemble member samples differently
    meta = await reviewer.meta_review([review], report(), round=2, max_rounds=2)
    assert meta.decision == "accept" and meta.revision_items == []
    assert "no revision rounds are left" in sent(client, 3)


async def test_reviewer_reflects_before_its_final_review_and_stops_when_done() -> None:
    first = review_json(7, "accept")
    reflected = {**review_json(4, "reject"), "weaknesses": ["the gain is not significant after Holm's correction"],
                 "thoughts": "I accepted a claim the corrected p-value does not support.", "done": False}
    final = {**reflected, "thoughts": "Nothing more to change.", "done": True}
    unused = {**review_json(9, "accept"), "thoughts": "never asked", "done": True}
    client = replay(first, reflected, final, unused)
    reviewer = mind("reviewer", client, review_reflections=3)
    review = await reviewer.review("# Weight decay\n...", report(), REFS, index=0)
    assert review.decision == "reject" and review.scores.overall == 4
    assert review.weaknesses == ["the gain is not significant after Holm's correction"]
    assert len(client.create_calls) == 3  # the draft, then two reflections: done stopped the third
    assert "Reflection round 1 of 3" in sent(client, 1) and "Paper (Markdown)" in sent(client, 1)
    assert "Reflection round 2 of 3" in sent(client, 2) and '"overall": 4' in sent(client, 2)


async def test_writer_writes_section_by_section_then_refines_the_whole_paper() -> None:
    from agents.writer.llm import SECTION_PLAN

    sections = {
        k: f"{k} text" for k in ("introduction", "related_work", "method", "experimental_setup", "results", "limitations", "conclusion", "revision_notes")
    }
    turns = [{"text": f"draft of {field}"} for field, _ in SECTION_PLAN]
    turns[1] = {"text": "See \\cite{ghost2021}."}  # related work cites a paper nobody found: sent back within its turn
    turns.insert(2, {"text": "See \\cite{loshchilov2019}."})
    final = {"title": "Weight decay, refined", "abstract": "We test weight decay on a toy task, refined.", **sections}
    client = replay(*turns, final)
    writer = mind("writer", client)
    request = DraftRequest(round=0, spec=SPEC, direction="regularisation", ideas=[IDEA], report=report(), references=REFS)
    paper = await writer.write(request)
    assert paper.title == "Weight decay, refined" and paper.related_work == "related_work text"
    assert len(client.create_calls) == len(SECTION_PLAN) + 2  # one turn per section, one retry, one refinement
    assert "Write the introduction" in sent(client, 0) and "Analysis (the only source of results)" in sent(client, 0)
    assert "Write the related work" in sent(client, 1) and "not in the references" in sent(client, 2)
    refine = sent(client, len(SECTION_PLAN) + 1)
    assert "Refinement pass" in refine and "draft of introduction" in refine and "loshchilov2019" in refine


async def test_analyst_summary_may_not_overclaim() -> None:
    client = replay(
        {"summary": "Weight decay gives a significant improvement in val_loss."},
        {"summary": "Weight decay lowered val_loss by 0.08 but the difference is inconclusive (p=0.4)."},
    )
    analyst = mind("analyst", client)
    assert isinstance(analyst, AnalystMind)
    assert "inconclusive" in await analyst.summarize(report(better=False))
    assert "do not claim a significant improvement" in sent(client, 1)


async def test_retries_run_out_into_mind_failed() -> None:
    client = replay("not json", "{\"summary\": 3}", "still not json", "{}")
    analyst = mind("analyst", client, retries={"invalid_output": 3})
    with pytest.raises(MindFailed) as e:
        await analyst.summarize(report())
    assert (e.value.role, e.value.step) == ("analyst", "summarize")
    assert "no valid answer after 4 tries" in e.value.reason and "summary" in e.value.reason and "\n" not in e.value.reason


async def test_code_fenced_answers_from_local_models_are_accepted() -> None:
    client = replay('Here you go:\n```json\n{"summary": "Weight decay helped: 0.08 lower loss."}\n```')
    assert (await mind("analyst", client).summarize(report())).startswith("Weight decay helped")


def test_prompt_files_are_used_when_present_else_builtin() -> None:
    from agents.minds.llm.prompts import prompt_path

    for role in ("pi", "literature", "engineer", "analyst", "writer", "reviewer"):
        m = mind(role, replay())
        path = prompt_path(role)
        assert path.is_file(), f"{role}'s prompt belongs beside its workflow: {path}"
        assert m.prompt_source == str(path) and m.system


def test_knob_lines_tell_the_model_which_knobs_change_compute() -> None:
    from agents.minds.llm.common import knob_lines
    from agents.templates import load

    _, spec = load("grokking")
    lines = {ln.split(":")[0][2:]: ln for ln in knob_lines(spec).splitlines()}
    assert "must not claim equal compute" in lines["num_layers"] and "must not claim equal compute" not in lines["weight_decay"]


async def test_pi_proposes_code_ideas_for_a_template_without_knobs() -> None:
    """Found running an AI Scientist template with --mind llm: with no knob to offer the PI asked the model nothing,
    so a project ran the template's seed ideas and never one of its own."""
    knobless = TemplateSpec.model_validate({**SPEC, "knobs": {}})
    code = "Ramp the step size linearly over the first 20 steps."
    client = replay({"thoughts": "", "ideas": [idea_json("Warmup", {}, code=code)], "done": True})
    (idea,) = await mind("pi", client).propose_ideas(IdeaContext(spec=knobless, direction="", n=1))
    assert idea.changes == {} and idea.code is not None and idea.code.summary == code
    assert "declares no knobs" in sent(client, 0) and "every idea changes the code" in sent(client, 0)
    # A template with knobs the co-PI ruled out entirely still gets no ideas (and the model is not asked).
    client = replay()
    assert await mind("pi", client).propose_ideas(IdeaContext(spec=SPEC, direction="", constraints={"allowed_knobs": []}, n=1)) == []
    assert not client.create_calls
