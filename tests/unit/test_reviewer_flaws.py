"""Planted flaws: drafts that read well and are untrue to their evidence, fed to the offline reviewer through its workflow.

The evidence is real schema objects: runs whose final_info.config records what ran (the
``fast`` profile's lr 0.003, not the default 0.001), an AnalysisReport with a replicated
gain, an inconclusive idea, a throughput metric the template declares ``hardware``. The
clean paper is written the way the offline writer writes (its effect sentences verbatim);
each test plants one flaw the issue "Papers that are true" names and checks that it is
caught, quoting the paper and the recorded value, and that the paper is not accepted.
"""

from __future__ import annotations

import json

from agents.base import Context
from agents.reviewer import checks
from agents.reviewer import offline as offline_reviewer
from agents.reviewer.workflow import ROLE as REVIEWER
from agents.writer.offline import effect_sentence
from bus.schema import (
    AnalysisFlag,
    AnalysisReport,
    Comparison,
    DraftReady,
    Envelope,
    FinalInfo,
    ItemResponse,
    MetricStat,
    Rebuttal,
    Reference,
    ReviewDone,
    ReviewRequest,
    RunRecord,
    TemplateSpec,
)
from bus.schema.analysis import Descriptive, SeedPlan
from tests.fakes import MemoryStore

SPEC = TemplateSpec.model_validate({
    "name": "toy", "title": "Toy Grokking", "task": "Learn modular addition with a small transformer.",
    "knobs": {"lr": {"type": "float", "default": 0.001, "min": 0.0001, "max": 0.1},
              "weight_decay": {"type": "float", "default": 0.1, "min": 0.0, "max": 2.0},
              "warmup_steps": {"type": "int", "default": 100, "min": 0, "max": 1000}},
    "metrics": {"val_acc": {"direction": "higher", "primary": True},
                "tokens_per_s": {"direction": "higher", "kind": "hardware"}},
    "profiles": {"fast": {"overrides": {"lr": 0.003}}},
})
IDEAS = {"baseline": {}, "wd-1": {"weight_decay": 1.0}, "warmup-300": {"warmup_steps": 300}}
ACC = {"baseline": [0.70, 0.72, 0.71, 0.73, 0.70], "wd-1": [0.90, 0.93, 0.91, 0.92, 0.90], "warmup-300": [0.71, 0.70, 0.74, 0.72, 0.71]}


def run(idea: str) -> RunRecord:
    config = {**SPEC.effective("fast"), **IDEAS[idea]}
    acc = ACC[idea]
    tps = [1500.0 + 100 * (idea == "warmup-300") + i for i in range(5)]
    fi = FinalInfo(seeds=[0, 1, 2, 3, 4], config=config,
                   metrics={"val_acc": MetricStat(mean=sum(acc) / 5, stderr=0.005, values=acc),
                            "tokens_per_s": MetricStat(mean=sum(tps) / 5, stderr=1.0, values=tps)})
    return RunRecord(job_id=f"j-{idea}", experiment_id=f"e-{idea}", idea_id=idea, overrides=IDEAS[idea], seeds=[0, 1, 2, 3, 4],
                     status="succeeded", final_info=fi)


def comparison(idea: str, better: bool, **kw) -> Comparison:
    base, arm = sum(ACC["baseline"]) / 5, sum(ACC[idea]) / 5
    values = dict(idea_id=idea, metric="val_acc", direction="higher", baseline_mean=base, baseline_stderr=0.005, idea_mean=arm,
                  idea_stderr=0.005, n_baseline=5, n_idea=5, diff=arm - base, improvement=arm - base,
                  ci_low=0.194 if better else -0.02, ci_high=0.206 if better else 0.03, p_value=3.74e-07 if better else 0.61,
                  effect_size=13.85 if better else 0.1, better=better, verdict="better" if better else "inconclusive", test="paired",
                  p_adjusted=7.49e-07 if better else 0.61, replicated=True if better else None)
    return Comparison(**{**values, **kw})


def report(flags=(), **kw) -> AnalysisReport:
    hw = AnalysisFlag(kind="hardware_metric", metric="tokens_per_s",
                      detail="tokens_per_s depends on the machine's load and the arms did not run interleaved on one node; reported per arm, untested")
    desc = [Descriptive(idea_id=i, metric="tokens_per_s", mean=1502.0 + 100 * (i == "warmup-300"), stderr=1.0, n=5,
                        reason="throughput depends on the machine's load") for i in IDEAS]
    return AnalysisReport(project="p", round=0, primary_metric="val_acc", comparisons=[comparison("wd-1", True), comparison("warmup-300", False)],
                          runs=[run(i) for i in IDEAS], flags=[hw, *flags], descriptive=desc,
                          confirmations=[comparison("wd-1", True, n_baseline=3, n_idea=3)], **kw)


REFS = [Reference(key=f"ref{i}", title=f"Paper number {i}", authors=["A Author"], year=2020 + i,
                  bibtex=f"@article{{ref{i}, title={{Paper number {i}}}}}") for i in range(1, 6)]


def paper(rep: AnalysisReport, **parts: str) -> str:
    """The clean paper for ``rep``, as the offline writer lays it out; ``parts`` replace whole parts by name."""
    wd, wu = rep.comparisons
    p = {
        "title": "Stronger weight decay: a significant, replicated gain in val_acc on Toy Grokking",
        "front": "*Kenkyu Lab (automated research agents) — Submitted version, round 0*",
        "abstract": f"We study Toy Grokking, comparing a baseline with 2 proposed changes to its knobs over 5 seeds per arm, using paired t-tests "
                    f"with Holm's correction, Hedges' g and bootstrap confidence intervals. The best supported result: {effect_sentence(wd, 0.05)} "
                    "It replicated on 3 fresh seeds per arm.",
        "related": " ".join(f"{r.title} [@{r.key}] studies regularisation on algorithmic tasks, which motivates testing weight decay here." for r in REFS),
        "method": "Each idea is a change to the template's declared knobs, evaluated against the unchanged baseline.\n\n"
                  "Stronger weight decay (`wd-1`). Hypothesis: More decay generalizes sooner. It changes `weight_decay` from 0.1 to 1.\n\n"
                  "Longer warmup (`warmup-300`). Hypothesis: A longer warmup stabilises training. It changes `warmup_steps` from 100 to 300.",
        "setup": "Task: Learn modular addition with a small transformer.\n\nKnobs:\n\n- `lr`: float, baseline 0.003, range [0.0001, 0.1]\n"
                 "- `weight_decay`: float, baseline 0.1, range [0, 2]\n- `warmup_steps`: int, baseline 100, range [0, 1000]\n\n"
                 "Metrics:\n\n- `val_acc`: higher is better (primary)\n- `tokens_per_s`: higher is better (hardware-dependent, reported descriptively)",
        "results": f"Primary metric. {effect_sentence(wd, 0.05)} {effect_sentence(wu, 0.05)}\n\n"
                   "Throughput (tokens_per_s) is hardware-dependent and reported descriptively, without a test: 1502 tokens/s for the baseline "
                   "and 1602 for `warmup-300`.",
        "limitations": "- Only one task (Toy Grokking) was studied; the results may not transfer to other tasks, datasets or scales.\n"
                       "- Five seeds per arm detect only large effects, so the inconclusive result of `warmup-300` may hide a small real effect.\n"
                       "- The analysis flagged: hardware-dependent metric: tokens_per_s depends on the machine's load; it is reported descriptively.",
        "conclusion": "The evidence supports one claim: Stronger weight decay (`wd-1`) improves val_acc over the baseline, significant after "
                      "correction and replicated on fresh seeds. Running more seeds and more tasks would tighten these conclusions.",
    }
    p.update(parts)
    refs = "\n".join(f"- [{r.key}] A Author. {r.title}. {r.year}." for r in REFS)
    return (f"# {p['title']}\n\n{p['front']}\n\n## Abstract\n\n{p['abstract']}\n\n## Introduction\n\nDoes weight decay help grokking?\n\n"
            f"## Related Work\n\n{p['related']}\n\n## Method\n\n{p['method']}\n\n## Experimental Setup\n\n{p['setup']}\n\n"
            f"## Results\n\n{p['results']}\n\n## Limitations\n\n{p['limitations']}\n\n## Conclusion\n\n{p['conclusion']}\n\n"
            f"{p.get('revisions', '')}## References\n\n{refs}\n\n## Appendix A: Runs\n\n- `j-baseline`: idea `baseline`, succeeded\n")


async def review(md: str, rep: AnalysisReport, round: int = 0, max_rounds: int = 3, ensemble: int = 3, store: MemoryStore | None = None,
                 inconsistencies: list[str] | None = None) -> ReviewDone:
    """The reviewer's workflow on a draft the writer stored (paper.md, paper.tex, analysis.json with the spec)."""
    store = store or MemoryStore()
    base = f"p/paper/round-{round}"
    await store.put(f"{base}/paper.md", md.encode())
    await store.put(f"{base}/paper.tex", md.replace("#", "").encode())
    await store.put(f"{base}/analysis.json", json.dumps({"spec": SPEC.model_dump(mode="json"), "not_novel": {}}).encode())
    draft = DraftReady(round=round, tex=f"{base}/paper.tex", markdown=f"{base}/paper.md", bib=f"{base}/references.bib", analysis=f"{base}/analysis.json",
                       inconsistencies=inconsistencies or [])
    ctx: Context = Context(project="p", role="reviewer", state=None, artifacts=store, mind=offline_reviewer.make(0, {}))
    body = ReviewRequest(round=round, draft=draft, report=rep, references=REFS, ensemble=ensemble, max_rounds=max_rounds)
    await REVIEWER().handle(Envelope(project="p", sender="pi", recipient="reviewer", body=body), ctx)
    (done, _), = ctx.outputs
    assert isinstance(done, ReviewDone)
    return done


def weaknesses(done: ReviewDone) -> list[str]:
    return [w for r in done.reviews for w in r.weaknesses]


def caught(done: ReviewDone, *words: str) -> str:
    """The one meta-review item that holds every word, asserting the paper is not accepted for it."""
    hits = [i.text for i in done.meta.revision_items if all(w in i.text for w in words)]
    assert hits, [i.text for i in done.meta.revision_items]
    assert done.meta.decision != "accept", done.meta.summary
    return hits[0]


async def test_the_clean_paper_is_accepted_with_no_evidence_finding():
    done = await review(paper(report()), report())
    assert done.meta.decision == "accept", (done.meta.summary, weaknesses(done))
    assert weaknesses(done) == []


async def test_a_setup_stating_a_value_that_never_ran_is_caught_with_both_values():
    rep = report()
    md = paper(rep, setup=paper_part("setup").replace("`lr`: float, baseline 0.003", "`lr`: float, baseline 0.001"))
    text = caught(await review(md, rep), "`lr`")
    assert "0.001" in text and "lr = 0.003" in text and "final_info.config" in text and "\"- `lr`: float, baseline 0.001" in text


async def test_an_idea_value_that_never_ran_is_caught_in_the_method():
    rep = report()
    md = paper(rep, method=paper_part("method").replace("from 0.1 to 1.", "from 0.1 to 0.5."))
    text = caught(await review(md, rep), "weight_decay")
    assert "`wd-1`" in text and "0.5" in text and "weight_decay = 1.0" in text


async def test_a_throughput_finding_is_caught_as_a_test_on_a_hardware_metric():
    rep = report()
    claim = "`warmup-300` raised tokens_per_s from 1502 to 1602 (Welch p = 0.001): a significant finding."
    done = await review(paper(rep, results=paper_part("results") + "\n\n" + claim), rep)
    text = caught(done, "tokens_per_s", "hardware")
    assert claim in text


async def test_a_title_saying_inconclusive_over_an_abstract_claiming_significance_is_caught():
    rep = report()
    done = await review(paper(rep, title="No significant change in val_acc on Toy Grokking: an inconclusive study"), rep)
    text = caught(done, "title")
    assert "an inconclusive study" in text and "significant at α = 0.05" in text


async def test_a_headline_on_a_model_far_from_converged_is_caught_when_the_flag_is_unmentioned():
    flag = AnalysisFlag(kind="not_converged", idea_id="wd-1", metric="val_acc", detail="val_acc of 'wd-1' was still rising over the last 20% of steps")
    rep = report([flag])
    done = await review(paper(rep), rep)
    stated = caught(done, "not converged: val_acc of 'wd-1' was still rising", "never states it")
    assert "not_converged" in stated
    qualify = caught(done, "for this training budget only", "The conclusion")
    assert "Stronger weight decay (`wd-1`) improves val_acc" in qualify
    # Stated and qualified: nothing left for this flag.
    fixed = paper(rep, conclusion="The evidence supports one claim for this training budget only, since `wd-1` had not converged: Stronger weight "
                  "decay (`wd-1`) improves val_acc over the baseline, significant after correction and replicated, within the budget.",
                  abstract=paper_part("abstract").replace(
                      "It replicated", "The runs of `wd-1` were not converged, so this holds for this budget only. It replicated"),
                  title="Stronger weight decay: a significant, replicated gain in val_acc on Toy Grokking within this training budget")
    assert not [w for w in weaknesses(await review(fixed, rep)) if "converged" in w]


async def test_a_collapsing_run_must_be_stated():
    flag = AnalysisFlag(kind="unstable", job_id="j-wd-1", idea_id="wd-1", metric="val_acc", detail="val_acc of 'wd-1' reached 0.95 then fell to 0.4")
    rep = report([flag])
    caught(await review(paper(rep), rep), "unstable: val_acc of 'wd-1' reached 0.95")


async def test_a_variant_judged_against_the_baseline_instead_of_its_control_is_caught():
    flag = AnalysisFlag(kind="wrong_control", idea_id="wd-1", detail="'wd-1' varies 'wd-0.5' and was compared with the baseline only")
    rep = report([flag])
    done = await review(paper(rep), rep)
    caught(done, "wrong control: 'wd-1' varies 'wd-0.5'")
    caught(done, "judges `wd-1` against the baseline")


async def test_no_verdict_when_conclusions_are_withheld():
    flag = AnalysisFlag(kind="no_separation", detail="the positive control did not differ from the baseline on val_acc")
    rep = report([flag], conclusions_withheld=True)
    done = await review(paper(rep), rep)
    text = caught(done, "withheld conclusions")
    assert "the positive control did not differ" in text


async def test_a_draft_for_review_line_does_not_block_acceptance():
    """Drafts under review say so; the PI has the writer build the final version after the accept (test_pi.py)."""
    rep = report()
    md = paper(rep, front="*Kenkyu Lab (automated research agents) — Draft for review, round 0*")
    done = await review(md, rep)
    assert done.meta.decision == "accept" and not [i for i in done.meta.revision_items if i.target == "front_matter"]


async def test_the_writers_own_inconsistency_report_blocks_acceptance():
    rep = report()
    done = await review(paper(rep), rep, inconsistencies=["the title says inconclusive; the report's headline is significant"])
    assert done.meta.decision == "revise"
    assert any("the title says inconclusive" in i.text for i in done.meta.revision_items)


async def test_a_verdict_or_a_number_quoted_wrongly_is_caught():
    rep = report()
    wrong = paper(rep, results=paper_part("results").replace("inconclusive, not significant", "better, significant"))
    caught(await review(wrong, rep), "`warmup-300`", "inconclusive")
    wrong = paper(rep, results=paper_part("results").replace("Hedges' g = 13.85", "Hedges' g = 1.385"))
    caught(await review(wrong, rep), "effect size 1.385", "13.85")


async def test_a_bare_list_of_references_asks_for_related_work_in_prose():
    rep = report()
    listed = "This study builds on the following work.\n\n" + "\n".join(f"- {r.title} (Author, {r.year})" for r in REFS)
    caught(await review(paper(rep, related=listed), rep), "bare list")


async def test_each_member_checks_its_own_evidence_and_duplicates_merge():
    rep = report()
    few = rep.model_copy(update={"comparisons": [c.model_copy(update={"n_baseline": 3, "n_idea": 3}) for c in rep.comparisons]})
    done = await review(paper(few), few)
    seed_weak = [r.reviewer for r in done.reviews for w in r.weaknesses if "more_seeds -> wd-1" in w]
    assert len(seed_weak) == 1, seed_weak  # one member checks the statistics; the others check setup, claims, literature
    assert {r.reviewer for r in done.reviews} == {"offline-1-statistics+literature", "offline-2-setup", "offline-3-claims"}
    wide = await review(paper(few), few, ensemble=5)  # members 1 and 5 both check the statistics
    assert len([w for r in wide.reviews for w in r.weaknesses if "more_seeds -> wd-1" in w]) == 2
    texts = [(i.kind, i.target, i.text) for i in wide.meta.revision_items]
    assert len(texts) == len(set(texts)) and sum(1 for k, t, _ in texts if (k, t) == ("more_seeds", "wd-1")) == 1


async def test_a_revision_that_changes_only_numbers_and_adds_a_revisions_section_leaves_the_item_open():
    rep = report()
    store = MemoryStore()
    flawed = paper(rep, title="No significant change in val_acc on Toy Grokking: an inconclusive study")
    first = await review(flawed, rep, round=0, store=store)
    item = next(i for i in first.meta.revision_items if i.target == "title")
    await REVIEWER().handle(Envelope(project="p", sender="pi", recipient="reviewer", body=Rebuttal(
        round=0, responses=[ItemResponse(item_id=i.id, action="act", text="rewritten") for i in first.meta.revision_items])),
        Context(project="p", role="reviewer", state=None, artifacts=store, mind=offline_reviewer.make(0, {})))
    # Numbers reprinted, a Revisions section claiming the fix: the title the item names is the same.
    lazy = flawed.replace("0.712", "0.713").replace("Running more seeds", "Running 7 more seeds")
    lazy = lazy.replace("## References", f"## Revisions\n\n- `{item.id}`: rewrote the title. **Response (act):** done.\n\n## References")
    second = await review(lazy, rep, round=1, store=store)
    assert second.meta.decision != "accept"
    still = [i for i in second.meta.revision_items if i.text.startswith(f"Still open from {item.id}")]
    assert still and "unchanged" in still[0].text or "still in the paper" in still[0].text
    assert any("[open: rewrite_section -> title]" in w for w in weaknesses(second))
    # The title really rewritten: the item is done and the paper is accepted.
    done = await review(paper(rep), rep, round=1, store=store)
    assert not [i for i in done.meta.revision_items if i.text.startswith("Still open")]
    assert done.meta.decision == "accept", done.meta.summary


def paper_part(name: str) -> str:
    """One part of the clean paper's text, to plant a flaw in."""
    marker = "\x00"
    md = paper(report(), **{name: marker})
    full = paper(report())
    start = md.index(marker)
    end_tail = md[start + 1:]
    return full[start: len(full) - len(end_tail)]


def test_stated_values_read_the_ways_a_setup_says_a_value():
    said = lambda text: [(v, r) for v, r, _ in checks.stated_values(text, "lr")]  # noqa: E731
    assert said("- `lr`: float, baseline 0.001, range [0.0001, 0.1]") == [("0.001", "is")]
    assert said("We train with lr = 3e-3 and a batch of 64.") == [("3e-3", "is")]
    assert said("The learning rate `lr` (0.003) is the fast profile's.") == [("0.003", "is")]
    assert said("It changes `lr` from 0.003 to 0.01.") == [("0.003", "from"), ("0.01", "to")]
    assert said("The lr schedule is cosine.") == []
    merge = [(v, r) for v, r, _ in checks.stated_values("It changes `merge_fn` from task_arithmetic to consensus_rescale.", "merge_fn")]
    assert merge == [("task_arithmetic", "from"), ("consensus_rescale", "to")]
    assert checks.same_value("3e-3", json.dumps(0.003)) and not checks.same_value("0.001", json.dumps(0.003))
    assert checks.same_value("1", json.dumps(1.0)) and checks.same_value("true", json.dumps(True))


async def test_the_positive_controls_own_setting_is_checked_against_its_own_runs():
    """The Setup's testbed check names the positive control's setting, not the baseline's: found in a real --fast paper."""
    control = run("baseline").model_copy(update={"idea_id": "positive-control", "job_id": "j-pc", "experiment_id": "e-pc"})
    control.final_info = control.final_info.model_copy(update={"config": {**control.final_info.config, "lr": 3e-05}})
    rep = report()
    rep = rep.model_copy(update={"runs": [*rep.runs, control]})
    said = "\n\nTestbed check: a positive control (`lr` = 3.00e-05), a setting known to change the result, is run like an idea."
    assert not [w for w in weaknesses(await review(paper(rep, setup=paper_part("setup") + said), rep)) if "`lr`" in w]
    wrong = said.replace("3.00e-05", "0.3")
    caught(await review(paper(rep, setup=paper_part("setup") + wrong), rep), "`lr` = 0.3", "positive-control")


async def test_a_seeds_added_statement_is_not_read_as_a_verdict():
    """After pooling, the verdict may be "worse" while the flag still says the earlier look was inconclusive."""
    rep = report()
    worse = rep.comparisons[1].model_copy(update={"verdict": "worse", "improvement": -0.05, "diff": -0.05, "ci_low": -0.08, "ci_high": -0.02,
                                                  "p_value": 0.001, "p_adjusted": 0.002})
    rep = rep.model_copy(update={"comparisons": [rep.comparisons[0], worse]})
    limitation = ("\n- Seeds added after a look: seeds were added to `warmup-300` after an inconclusive look at `val_acc`; "
                  "its alpha was spent over both looks.")
    done = await review(paper(rep, limitations=paper_part("limitations") + limitation), rep)
    assert not [w for w in weaknesses(done) if "calls `warmup-300`" in w and "inconclusive look" in w]


async def test_the_seeds_asked_for_in_the_first_round_are_the_seed_plans_not_a_smaller_number():
    """Found running `lab run --template grokking`: round 0 asked for "at least 5" seeds per arm, the PI ran 6, and the last round
    asked for the seed plan's 37 and rejected. The plan was there from round 0; its ask must be the one a reader sees first."""
    rep = report()
    few = rep.model_copy(update={
        "comparisons": [c.model_copy(update={"n_baseline": 3, "n_idea": 3}) for c in rep.comparisons],
        "seed_plan": SeedPlan(metric="val_acc", baseline_sd=0.013, min_detectable_effect=0.01, power=0.8, alpha=0.025, seeds=37),
    })
    done = await review(paper(few), few)
    asks = {i.target: i.text for i in done.meta.revision_items if i.kind == "more_seeds"}
    assert set(asks) == {"wd-1", "warmup-300", "baseline"}, asks
    assert all("the seed plan asks for 37 per arm" in t and "at least 5" not in t for t in asks.values()), asks
    # The number travels to the PI as a field, not only as words: it runs each arm up to it.
    assert {i.seeds for i in done.meta.revision_items if i.kind == "more_seeds"} == {37}
    # A plan that asks for fewer than the rubric's five leaves the rubric's ask.
    small = few.model_copy(update={"seed_plan": few.seed_plan.model_copy(update={"seeds": 4})})
    asks = {i.target: i.text for i in (await review(paper(small), small)).meta.revision_items if i.kind == "more_seeds"}
    assert asks and all("at least 5 in all" in t for t in asks.values()), asks
    assert {i.seeds for i in (await review(paper(small), small)).meta.revision_items if i.kind == "more_seeds"} == {5}


def test_a_template_that_runs_its_own_seeds_is_asked_for_a_limitation_not_for_seeds_it_cannot_run():
    """Found running an AI Scientist template end to end: the seed plan's "run up to 12 seeds" was a demand no revision could
    meet (its experiment.py runs its own seeds), so the paper was rejected for it whatever the rebuttal said."""
    few = report().model_copy(update={
        "comparisons": [c.model_copy(update={"n_baseline": 3, "n_idea": 3}) for c in report().comparisons],
        "seed_plan": SeedPlan(metric="val_acc", baseline_sd=0.013, min_detectable_effect=0.01, power=0.8, alpha=0.025, seeds=37),
    })
    fixed = SPEC.model_copy(update={"fixed_seeds": True})
    assert {f.kind for f in checks.seed_plan_findings(few, SPEC, {})} == {"more_seeds"}
    (finding,) = checks.seed_plan_findings(few, fixed, {"limitations": "Only one task."})
    assert finding.kind == "add_limitation" and finding.target == "limitations"
    assert "rests on 3 seeds per arm" in finding.text and "asks for 37" in finding.text and "fixed seeds" in finding.text
    said = {"limitations": "The template runs its own three seeds, so each comparison is underpowered against the seed plan."}
    assert checks.seed_plan_findings(few, fixed, said) == []
    # The rubric's own "at least 5 seeds" likewise.
    assert {f.kind for f in offline_reviewer.seed_findings(few)} == {"more_seeds"}
    (finding,) = offline_reviewer.seed_findings(few, fixed, {})
    assert finding.kind == "add_limitation" and "fewer than 5 per arm" in finding.text and "fixed seeds" in finding.text
    assert offline_reviewer.seed_findings(few, fixed, said) == []
