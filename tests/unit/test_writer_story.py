"""Papers that are true: the offline paper states what ran, tells one story, states every flag, and reads like prose.

Run records shaped like a `char_lm --fast` project: each run's final_info.config records the fast
profile's values (2 layers, lr 0.003, 400 steps, warmup 40), which differ from the template's defaults.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

import pytest
import yaml

from agents.base import Context
from agents.writer import markup, story
from agents.writer.assemble import comparison_figures
from agents.writer.offline import Draft, make
from agents.writer.workflow import ROLE
from bus.schema import (
    AnalysisFlag,
    AnalysisReport,
    Comparison,
    DraftReady,
    DraftRequest,
    Envelope,
    FinalInfo,
    Idea,
    MetricStat,
    Reference,
    RunRecord,
)
from bus.schema.analysis import Descriptive
from bus.schema.template import parse_spec
from tests.fakes import MemoryStore

SPEC = parse_spec(yaml.safe_load((Path(__file__).resolve().parents[2] / "templates/char_lm/template.yaml").read_text()))
FAST = SPEC.effective("fast")
IDEAS = [
    Idea(id="warmup-steps-300", title="warmup_steps = 300 (baseline 50)", hypothesis="Setting warmup_steps to 300 instead of 50 helps.",
         falsification="Rejected if val_loss is not lower than the baseline's.", changes={"warmup_steps": 300}),
    Idea(id="dropout-0p2", title="dropout = 0.2 (baseline 0.0)", hypothesis="Setting dropout to 0.2 instead of 0.0 helps.",
         falsification="Rejected if val_loss is not lower than the baseline's.", changes={"dropout": 0.2}),
    Idea(id="positive-control", title="positive control", hypothesis="A known-different setting differs.",
         falsification="It does not differ.", changes={"lr": 0.0003}),
]
REFS = [Reference(key="loshchilov2017sgdr", title="SGDR: Stochastic Gradient Descent with Warm Restarts", authors=["Ilya Loshchilov", "Frank Hutter"],
                  year=2017, abstract="We study learning rate warmup steps and restarts.", bibtex="@article{x, title={SGDR}, year={2017}}"),
        Reference(key="srivastava2014dropout", title="Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
                  authors=["Nitish Srivastava"], year=2014, bibtex="@article{y, title={Dropout}, year={2014}}")]


def run(idea: str, loss: list[float], **config: object) -> RunRecord:
    fi = FinalInfo(seeds=[0, 1, 2], config={**FAST, **config},
                   metrics={"val_loss": MetricStat(mean=sum(loss) / 3, stderr=0.01, values=loss)})
    return RunRecord(job_id=f"job-{idea}", experiment_id=f"x-{idea}", idea_id=idea, overrides=dict(config), seeds=[0, 1, 2],
                     status="succeeded", final_info=fi)


RUNS = [run("baseline", [2.1, 2.11, 2.09]), run("warmup-steps-300", [2.0, 2.01, 1.99], warmup_steps=300),
        run("dropout-0p2", [2.3, 2.31, 2.29], dropout=0.2), run("positive-control", [2.6, 2.61, 2.59], lr=0.0003)]


def comparison(idea: str, verdict: str, metric: str = "val_loss", family: str = "primary", replicated: bool | None = None,
               mean: float = 2.0) -> Comparison:
    imp = {"better": 0.1, "worse": -0.2, "inconclusive": 0.001}[verdict]
    return Comparison(idea_id=idea, metric=metric, direction="lower", baseline_mean=2.1, baseline_stderr=0.01, idea_mean=mean,
                      idea_stderr=0.01, n_baseline=3, n_idea=3, diff=-imp, improvement=imp, ci_low=imp - 0.01, ci_high=imp + 0.01,
                      p_value=0.001 if verdict != "inconclusive" else 0.6, p_adjusted=0.003 if verdict != "inconclusive" else 0.9,
                      effect_size=imp * 10, better=verdict == "better", verdict=verdict, test="paired", effect_kind="paired_d",
                      family=family, replicated=replicated)


def report(warmup: str = "inconclusive", dropout: str = "worse", **kw: object) -> AnalysisReport:
    cs = [comparison("warmup-steps-300", warmup, replicated=True if warmup == "better" else None),
          comparison("dropout-0p2", dropout, mean=2.3),
          comparison("positive-control", "worse", mean=2.6),
          comparison("dropout-0p2", "inconclusive", metric="train_loss", family="secondary")]
    return AnalysisReport(project="p", round=1, primary_metric="val_loss", comparisons=cs, runs=RUNS, **kw)


def request(rep: AnalysisReport | None = None, direction: str = "", **kw: object) -> DraftRequest:
    return DraftRequest(round=1, spec=SPEC, direction=direction, ideas=IDEAS, report=rep or report(), references=REFS, **kw)


async def write(req: DraftRequest) -> tuple[DraftReady, str, str]:
    store = MemoryStore()
    ctx = Context(project="p", role="writer", state=None, artifacts=store, mind=make(0, {}))
    await ROLE().handle(Envelope(project="p", sender="pi", recipient="writer", body=req), ctx)
    (out, _), = ctx.outputs
    assert isinstance(out, DraftReady)
    return out, store.data[out.markdown].decode(), store.data[out.tex].decode()


@pytest.fixture(scope="module")
def paper() -> tuple[DraftReady, str, str]:
    return asyncio.run(write(request()))


def section(md: str, name: str) -> str:
    return story.sections(md)[name.lower()]


def test_setup_and_method_state_the_recorded_configuration(paper):
    _, md, _ = paper
    setup, method = section(md, "Experimental Setup"), section(md, "Method")
    for knob, v in [("n_layer", "2"), ("lr", "0.003"), ("max_steps", "400"), ("warmup_steps", "40"), ("n_embd", "64")]:
        assert f"- `{knob}`: " in setup and f"baseline {v}," in setup.split(f"- `{knob}`: ")[1].splitlines()[0], knob
    assert "baseline 3," not in setup.split("- `n_layer`: ")[1].splitlines()[0]  # the template's default, not what ran
    assert "the runs' recorded configuration matches the template's `fast` profile" in setup
    assert "`warmup_steps` from 40 to 300" in method and "from 50 to 300" not in md
    assert "instead of the baseline's 40" in method  # the hypothesis, restated from the records
    assert "(not recorded by the runs" not in setup  # every knob was recorded


def test_a_told_profile_is_stated_and_unrecorded_knobs_fall_back_to_it():
    bare = [r.model_copy(update={"final_info": r.final_info.model_copy(update={"config": {"lr": 0.003}})}) for r in RUNS]
    d = Draft(request(report().model_copy(update={"runs": bare}), profile="fast"), random.Random(0))
    setup = d.setup()
    assert "Profile: the runs used the template's `fast` profile" in setup
    assert "`max_steps`: int, baseline 400 (not recorded by the runs: the template's value under this profile)" in setup


def test_no_slips_and_no_positive_control_as_an_idea(paper):
    _, md, _ = paper
    body = md.split("## References")[0]
    assert story.slips(body) == []
    assert "(s)" not in body and "if: Rejected if" not in body
    assert "2 proposed changes" in section(md, "Abstract")  # the positive control is not counted
    assert "positive-control" not in section(md, "Method")
    assert "Testbed check." in section(md, "Results") and "It is a check, not a proposed idea." in md
    assert "It would be refuted if val_loss is not lower than the baseline's." in section(md, "Method")


@pytest.mark.parametrize(("warmup", "dropout", "title"), [
    ("better", "worse", "warmup_steps = 300: a significant, replicated improvement in val_loss"),
    ("inconclusive", "worse", "A negative result on A small GPT trained on character-level Shakespeare: no tested change improved val_loss"),
    ("inconclusive", "inconclusive", "No change in val_loss was detected"),
])
def test_title_abstract_and_conclusion_tell_one_story(warmup, dropout, title):
    out, md, _ = asyncio.run(write(request(report(warmup, dropout), direction="Make the model learn faster.")))
    assert out.inconsistencies == [] and story.inconsistencies(md, report(warmup, dropout), "Make the model learn faster.") == []
    assert md.splitlines()[0].startswith("# " + title)
    assert "inconclusive study" not in md.splitlines()[0]
    if dropout == "worse":
        assert re.search(r"`dropout-0p2` made (it|val_loss) worse", section(md, "Abstract")) and "worse" in section(md, "Conclusion")


def test_withheld_conclusions_state_no_verdict():
    rep = report("better", "worse", conclusions_withheld=True,
                 flags=[AnalysisFlag(kind="no_separation", detail="the positive control did not differ (p = 0.6)")])
    out, md, tex = asyncio.run(write(request(rep)))
    assert out.inconsistencies == [] and md.splitlines()[0].startswith("# Conclusions withheld on")
    for part in ("title", "abstract", "results", "conclusion"):
        text = re.sub(r"(higher|lower) is better|better or worse|a positive value is better", "", story.sections(md)[part])
        assert not re.search(r"\bbetter\b|\bworse\b|: improved|significant at", text), part
    assert "Testbed cannot separate" in section(md, "Limitations")
    assert "| withheld |" in md and "| better |" not in md


def test_planted_contradictions_are_caught(paper):
    _, md, _ = paper  # dropout-0p2 worse, warmup inconclusive, no direction
    rep = report()
    assert story.inconsistencies(md, rep, "") == []
    first = md.splitlines()[0]
    inconclusive = md.replace(first, "# No significant change in val_loss: an inconclusive study")
    assert any("inconclusive" in p for p in story.inconsistencies(inconclusive, rep, ""))
    swapped = md.replace("`dropout-0p2` made it worse", "`dropout-0p2` improved it", 1)
    assert story.inconsistencies(swapped, rep, "")
    claimed = md.replace("No research direction was given, so the ideas", "Starting from the research direction given by the co-PI, the ideas")
    assert any("none was given" in p for p in story.inconsistencies(claimed, rep, ""))
    assert any("does not state it" in p for p in story.inconsistencies(md, rep, "Study regularisation."))
    better = report("better", "inconclusive")
    assert any("improvement" in p for p in story.inconsistencies(md.replace(first, "# Warmup: a significant improvement"), report(), ""))
    assert any("withholds" in p for p in story.inconsistencies(md, better.model_copy(update={"conclusions_withheld": True}), ""))


def test_a_contradicting_mind_fails_the_draft():
    class Liar:
        async def write(self, request):
            sections = Draft(request, random.Random(0)).sections()
            return sections.model_copy(update={"title": "Dropout helps: an inconclusive study", "abstract": "`dropout-0p2` is better."})

    async def go():
        store = MemoryStore()
        ctx = Context(project="p", role="writer", state=None, artifacts=store, mind=Liar())
        await ROLE().handle(Envelope(project="p", sender="pi", recipient="writer", body=request()), ctx)
        (out, _), = ctx.outputs
        return out, store.data[out.markdown].decode()

    out, md = asyncio.run(go())
    assert any(p.startswith("title:") for p in out.inconsistencies) and any(p.startswith("abstract:") for p in out.inconsistencies)


def test_every_flag_is_stated_in_words_and_qualifies_the_claim():
    flags = [AnalysisFlag(kind="not_converged", detail="val_loss still falling", idea_id="dropout-0p2", metric="val_loss"),
             AnalysisFlag(kind="unstable", detail="best at step 200", idea_id="warmup-steps-300", job_id="job-w", metric="val_loss"),
             AnalysisFlag(kind="wrong_control", detail="compared with the baseline", idea_id="dropout-0p2"),
             AnalysisFlag(kind="seeds_added", detail="2 seeds added", idea_id="warmup-steps-300", metric="val_loss"),
             AnalysisFlag(kind="hardware_metric", detail="arms ran on different nodes", metric="tokens_per_s")]
    rep = report(flags=flags, descriptive=[Descriptive(idea_id="baseline", metric="tokens_per_s", mean=5000.0, stderr=20.0, n=3,
                                                       reason="throughput depends on the machine's load")])
    out, md, _ = asyncio.run(write(request(rep)))
    limits = section(md, "Limitations")
    for words in ["Not converged:", "Unstable:", "Wrong control:", "Seeds added after a look:", "Hardware-dependent metric:"]:
        assert words in limits, words
    assert "after 400 steps, before convergence" in section(md, "Abstract")
    assert "after 400 steps, before convergence" in section(md, "Conclusion")
    assert "measured, not tested: throughput depends on the machine's load" in section(md, "Results")
    assert out.inconsistencies == []


def test_related_work_is_prose_relating_each_work():
    text = Draft(request(), random.Random(0)).related_work()
    assert not any(line.startswith("- ") for line in text.splitlines())
    assert "[@loshchilov2017sgdr]" in text and "[@srivastava2014dropout]" in text
    assert "`warmup_steps`, which `warmup-steps-300` changes" in text and "`dropout`, which `dropout-0p2` changes" in text


def test_one_figure_per_comparison_primary_metric_first():
    figs = comparison_figures(report(), "p/figs")
    assert [f.name for f, _ in figs] == ["p/figs/warmup-steps-300.png", "p/figs/dropout-0p2.png", "p/figs/positive-control.png"]
    dropout = figs[1][0].caption
    assert "for val_loss, train_loss, the primary metric first" in dropout and all(png.startswith(b"\x89PNG") for _, png in figs)


def test_identifiers_and_titles_render_in_tex():
    assert markup.inline_tex("Width `d-model-32` wins") == "Width \\texttt{d-model-32} wins"
    assert "``" not in markup.to_tex("a stray ` backtick and `d-model-32`", set())


def test_clip_cuts_at_a_word_boundary():
    text = "Novel: no paper found holds every change term together with the task terms"
    assert story.clip(text, 40) == "Novel: no paper found holds every…"
    assert story.clip("short", 40) == "short"
    for n in range(8, 70):
        kept = story.clip(text, n).rstrip("…")
        assert len(story.clip(text, n)) <= n and text.startswith(kept) and not text[len(kept)].isalnum(), n


def test_a_headline_on_unconverged_arms_is_qualified_in_title_and_abstract_and_the_check_catches_a_dropped_one():
    """README command 1's paper titled "a significant, replicated improvement" while the analysis flagged the compared arms
    not converged (the abstract's qualifier looked at the idea's own flag only, the title had none)."""
    from agents.reviewer.checks import convergence_findings, sections

    # The flag names the primary metric's curve, another metric (as grokking's val_acc for steps_to_val_99).
    flags = [AnalysisFlag(kind="not_converged", detail="train_loss still falling", idea_id="baseline", metric="train_loss")]
    rep = report("better", "inconclusive", flags=flags)
    out, md, _ = asyncio.run(write(request(rep)))
    title, abstract = md.splitlines()[0], section(md, "Abstract")
    assert "a significant, replicated improvement" in title and "after 400 steps, before convergence" in title
    assert "improved val_loss over the baseline (after 400 steps, before convergence)" in abstract
    assert out.inconsistencies == [] and convergence_findings(sections(md), rep) == []
    dropped = md.replace(title, title.replace(" (after 400 steps, before convergence)", "")).replace(" (after 400 steps, before convergence)", "")
    assert {f.target for f in convergence_findings(sections(dropped), rep)} >= {"title", "abstract"}
    # The idea's own flag touches the title too, which names the idea by its title ("warmup_steps = 300"), not its id.
    on_idea = rep.model_copy(update={"flags": [flags[0].model_copy(update={"idea_id": "warmup-steps-300"})]})
    assert "title" in {f.target for f in convergence_findings(sections(dropped), on_idea)}
    assert convergence_findings(sections(md), on_idea) == []
    # README command 1's round-1 paper: a gain that did not replicate, with the baseline unsettled, is qualified too.
    unreplicated = report("better", "inconclusive", flags=flags).model_copy(update={"comparisons": [
        c.model_copy(update={"replicated": False}) for c in rep.comparisons]})
    told = story.story(unreplicated, "the task", {})
    secs = {"title": told.title, "abstract": told.claim}
    assert told.kind == "unreplicated" and "before convergence" in told.title and convergence_findings(secs, unreplicated) == []
