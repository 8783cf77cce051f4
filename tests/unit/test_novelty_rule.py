"""The offline novelty rule over the built-in templates' own bibliographies: it can say "not novel", with the evidence."""

from __future__ import annotations

import pytest

from agents import templates
from agents.lit.library_files import parse_bibtex
from agents.literature.offline import OfflineLiteratureMind, method_terms, topic_terms
from agents.literature.workflow import task_text
from agents.minds.base import IdeaContext
from agents.pi.offline import OfflinePIMind
from bus.schema import Idea, NoveltyCheck


def library(name: str):
    folder, spec = templates.load(name)
    refs = parse_bibtex((folder / "references.bib").read_text(), source="template").refs
    task = task_text(NoveltyCheck(idea=idea({"x": 1}), template=name, task=spec.task, keywords=spec.keywords))
    return refs, task


def idea(changes: dict, title: str = "", hypothesis: str = "") -> Idea:
    k, v = next(iter(changes.items()))
    return Idea(id="i", title=title or f"{k} = {v}", hypothesis=hypothesis or f"Setting {k} to {v} helps.",
                falsification="It does not.", changes=changes)


async def judge(name: str, changes: dict):
    refs, task = library(name)
    return await OfflineLiteratureMind(0, {}).judge_novelty(idea(changes), refs, task=task)


def test_method_and_topic_terms():
    assert method_terms(idea({"merge_fn": "ties"})) == {"tie"}  # the shared stemmer: "ties" ~ "TIES-Merging"
    assert method_terms(idea({"weight_decay": 3.0})) == {"weight", "decay"}
    assert method_terms(idea({"num_layers": 2})) == {"layer"}
    assert topic_terms("Grokking on ...\nKeywords: grokking, modular arithmetic") == {"grokking"}
    assert topic_terms("no keywords here") == set()


async def test_ties_merge_is_not_novel_against_ties_merging_with_the_evidence_quoted():
    j = await judge("model_merging", {"merge_fn": "ties"})
    assert j.novel is False
    assert j.cited_keys[0] == "yadav2023ties"
    assert "TIES-Merging" in j.justification and '"' in j.justification


async def test_dare_is_not_novel_but_the_lab_s_own_merge_functions_are():
    assert (await judge("model_merging", {"merge_fn": "dare"})).novel is False
    for own in ("magnitude_weighted", "consensus_rescale"):
        j = await judge("model_merging", {"merge_fn": own})
        assert j.novel is True, j.justification


async def test_weight_decay_on_grokking_is_not_novel_against_power_or_omnigrok():
    j = await judge("grokking", {"weight_decay": 3.0})
    assert j.novel is False
    assert {"power2022grokking", "liu2023omnigrok"} & set(j.cited_keys)
    assert "weight decay" in j.justification.lower()


async def test_a_change_no_paper_studies_on_the_task_stays_novel():
    j = await judge("grokking", {"dropout": 0.1})
    assert j.novel is True, j.justification


@pytest.mark.parametrize("name", ["grokking", "model_merging", "2d_diffusion"])
async def test_the_rule_can_say_both_over_each_template_s_candidate_ideas(name):
    """Over all the offline PI's candidate ideas: not everything is novel (the old rule said so of all 38)."""
    folder, spec = templates.load(name)
    refs, task = library(name)
    ideas = await OfflinePIMind(0).propose_ideas(IdeaContext(spec=spec.model_dump(), direction="", n=50, seed=0))
    mind = OfflineLiteratureMind(0, {})
    verdicts = [(await mind.judge_novelty(i, refs, task=task)).novel for i in ideas]
    assert True in verdicts
    if name != "2d_diffusion":
        assert False in verdicts


async def test_one_generic_knob_word_is_not_evidence():
    """Nanda et al. describe "a one-layer transformer"; that does not study changing the number of layers."""
    j = await judge("grokking", {"num_layers": 2})
    assert j.novel is True, j.justification


# ------------------------------------------------------------ code ideas: judged by their own words


def code_idea(summary: str, variant: str | None = None) -> Idea:
    from bus.schema import CodeChange

    return Idea(id="c", title=f"code variant {variant or 'new'} instead of the baseline's code", hypothesis="Switching the code helps.",
                falsification="It does not.", changes={}, code=CodeChange(summary=summary, variant=variant))


async def judge_code(summary: str, variant: str | None = None, name: str = "model_merging"):
    refs, task = library(name)
    return await OfflineLiteratureMind(0, {}).judge_novelty(code_idea(summary, variant), refs, task=task)


async def test_a_code_idea_that_describes_a_known_method_is_not_novel_with_the_sentence_quoted():
    # No knob changes, so the knob rules see nothing: the summary's words are the evidence.
    j = await judge_code("trim each task vector to its largest-magnitude entries, elect a sign per parameter and average the entries that agree")
    assert j.novel is False and j.cited_keys[0] == "yadav2023ties"
    assert "Merges task vectors in three steps" in j.justification and "/" in j.justification
    j = await judge_code("randomly drop most delta parameters of each fine-tuned model and rescale the rest before merging")
    assert j.novel is False and j.cited_keys[0] == "yu2024dare"
    # A declared variant's name is a named method, like a knob's string value.
    j = await judge_code("drop and rescale", variant="dare")
    assert j.novel is False and j.cited_keys == ["yu2024dare"] and "Proposes DARE" in j.justification


async def test_the_declared_variants_verdicts_rest_on_counted_overlap_with_the_closest_papers():
    folder, spec = templates.load("model_merging")
    for name, variant in spec.variants.items():
        j = await judge_code(variant.description, variant=name)
        # Novel on this library, and the justification says how close the closest paper came, in the code's own words.
        assert j.novel is True, (name, j.justification)
        assert "yadav2023ties" in j.cited_keys and "Closest: yadav2023ties" in j.justification
        assert "sign" in j.justification and "no content words" not in j.justification


async def test_a_code_idea_with_no_papers_found_says_there_is_no_evidence():
    j = await OfflineLiteratureMind(0, {}).judge_novelty(code_idea("a sharpness-aware step"), [], task="x\nKeywords: grokking")
    assert j.novel is True and j.justification.startswith("No evidence either way") and "sharpness" in j.justification


async def test_a_code_idea_is_searched_by_what_its_code_does():
    _, task = library("model_merging")
    folder, spec = templates.load("model_merging")
    queries = await OfflineLiteratureMind(0, {}).queries(code_idea(spec.variants["dare_ties"].description, "dare_ties"), task, [], 0)
    assert queries[0].startswith("dare ties") and any("drop" in q for q in queries)
