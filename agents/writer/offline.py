"""Offline writer mind: the paper's prose from the evidence and nothing else.

The title, abstract lead, results lead and conclusion come from one story
(``agents.writer.story``), decided by the verdicts: a significant improvement is
claimed only where the report says "better" (fair and replicated); otherwise
the paper reports an honest negative, null or withheld result. Configuration
sentences come from the runs' recorded configs (``agents.writer.configs``),
never from template defaults; every analysis flag is stated as a threat to
validity. Wording follows each metric's direction
("lowered the loss ... (better)"). Every number goes through ``fmt`` from a
value in the request. The seed only picks between equivalent phrasings.
"""

from __future__ import annotations

import random
from typing import Any

from agents.codeideas import describe
from agents.minds.base import PaperSections
from agents.writer import configs, prose
from agents.writer.numbers import fmt
from agents.writer.story import POSITIVE_CONTROL, budget, headline, qualifier, story
from bus.schema import Comparison, DraftRequest, Idea, Usage


def value(v: Any) -> str:
    return fmt(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def moved(c: Comparison) -> str:
    return "raised" if c.idea_mean > c.baseline_mean else "lowered" if c.idea_mean < c.baseline_mean else "left unchanged"


def test_name(c: Comparison) -> str:
    return "paired t-test" if c.test == "paired" else "Welch"


def adjusted(c: Comparison) -> str:
    return f", Holm-adjusted p = {fmt(c.p_adjusted)}" if c.p_adjusted is not None else ""


def correction_words(correction: str, n: int) -> str:
    """How the p-values were corrected: Holm's method within each family (the primary metric's; the secondary metrics')."""
    if correction == "holm":
        return (f"Holm's correction for multiple comparisons within each family of the {fmt(n)} comparisons reported here "
                "(the primary metric's, and the secondary metrics' apart)")
    return "no correction for multiple comparisons"


def ci_words(c: Comparison) -> str:
    """The interval's name: the test's own t-interval, at the level its corrected verdict was decided at."""
    return f"CI at level {fmt(c.ci_level)}" if c.ci_level else "CI"


def verdict_words(c: Comparison, alpha: float) -> str:
    after = " after correction" if c.p_adjusted is not None else ""
    if c.verdict == "better":
        return f"better, significant at α = {fmt(alpha)}{after}"
    if c.verdict == "worse":
        return f"worse, significant at α = {fmt(alpha)}{after}"
    return f"inconclusive, not significant at α = {fmt(alpha)}{after}"


def effect_name(c: Comparison) -> str:
    return "Cohen's d_z" if c.effect_kind == "paired_d" else "Hedges' g"


def effect_sentence(c: Comparison, alpha: float, withheld: bool = False, when: str = "") -> str:
    """One comparison in words; ``withheld`` states the measured difference and no verdict, ``when`` bounds it ("after N steps")."""
    control = "the baseline" if c.control == "baseline" else f"its parent `{c.control}`"
    verdict = "no verdict is stated, because conclusions are withheld" if withheld else verdict_words(c, alpha)
    return (
        f"`{c.idea_id}` {moved(c)} {c.metric} from {fmt(c.baseline_mean)} ({control}) to {fmt(c.idea_mean)}{when} "
        f"({c.direction} is better; improvement {fmt(c.improvement)}, {ci_words(c)} [{fmt(c.ci_low)}, {fmt(c.ci_high)}], "
        f"{test_name(c)} p = {fmt(c.p_value)}{adjusted(c)}, {effect_name(c)} = {fmt(c.effect_size)}, "
        f"{fmt(c.n_baseline)} control and {fmt(c.n_idea)} idea seeds): {verdict}."
    )


class OfflineWriterMind:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.usage = Usage()

    def describe(self) -> str:
        return "offline mind (rule-based prose from the analysis; no language model was used)"

    async def write(self, request: DraftRequest) -> PaperSections:
        return Draft(request, random.Random(self.seed)).sections()

    async def fix_latex(self, sections: PaperSections, failing: list[str], error: str) -> PaperSections | None:
        # Rule-based prose goes through the escaping markup and builds; a failure is not in the text, so no fix.
        return None


class Draft:
    """One paper's prose; a class only to share the request's lookups between sections."""

    def __init__(self, request: DraftRequest, rng: random.Random) -> None:
        self.r = request
        self.rng = rng
        self.spec = request.spec
        self.rep = request.report
        # The positive control is a check of the testbed, never a proposed idea.
        self.ideas = {i.id: i for i in request.ideas if i.id != POSITIVE_CONTROL}
        self.primary = headline(self.rep)
        self.control = [c for c in self.rep.comparisons if c.idea_id == POSITIVE_CONTROL and c.metric == self.rep.primary_metric]
        self.secondary = [c for c in self.rep.comparisons if c not in self.primary and c not in self.control]
        self.withheld = self.rep.conclusions_withheld or any(f.kind == "no_separation" for f in self.rep.flags)
        self.confirmations = {c.idea_id: c for c in self.rep.confirmations}
        self.study = self.spec.title or self.spec.name or "the template task"
        self.story = story(self.rep, self.study, {i: self.title_of(i) for i in self.ideas})
        self.ran = configs.baseline_ran(self.spec, self.rep, request.profile)
        # Code-level ideas change the wording only where they exist: a knob-only paper reads as before.
        self.code = [i for i in self.ideas.values() if i.code is not None]

    def title_of(self, idea_id: str) -> str:
        """A knob idea's name from the values its runs recorded (the idea's own title may quote template defaults)."""
        idea = self.ideas.get(idea_id)
        if idea is None:
            return idea_id
        if idea.code is None and idea.changes:
            return ", ".join(f"{k} = {value(configs.arm_value(self.rep, idea_id, k, v))}" for k, v in idea.changes.items())
        return idea.title

    def name(self, idea_id: str) -> str:
        return f"{self.title_of(idea_id)} (`{idea_id}`)" if idea_id in self.ideas else f"`{idea_id}`"

    def effect(self, c: Comparison) -> str:
        return effect_sentence(c, self.rep.alpha, self.withheld, qualifier(self.rep, c))

    def finding(self) -> str:
        """The story's claim, then the comparisons it rests on."""
        if self.withheld or not self.primary:
            return self.story.claim
        if self.story.kind == "improved":
            best = next(c for c in self.primary if f"`{c.idea_id}` improved" in self.story.claim)
            rest = [c for c in self.primary if c.verdict == "worse"]
            return " ".join([self.story.claim, "The best supported result: " + self.effect(best), self.replication(best),
                             *(self.effect(c) for c in rest)])
        said = [self.effect(c) + (f" {self.replication(c)}" if c.verdict == "better" else "") for c in self.primary]
        return " ".join([self.story.claim, *said])

    def replication(self, c: Comparison) -> str:
        again = self.confirmations.get(c.idea_id)
        if c.replicated is None or again is None:
            return "No confirmation run on fresh seeds was possible, so it is not replicated."
        word = "It replicated" if c.replicated else "It did not replicate"
        return (f"{word} on {fmt(again.n_idea)} fresh seeds per arm (improvement {fmt(again.improvement)}, "
                f"{test_name(again)} p = {fmt(again.p_value)}{adjusted(again)}: {again.verdict}).")

    def direction_words(self) -> str:
        if self.r.direction.strip():
            return "Following the co-PI's research direction (stated in the introduction), we"
        return "No research direction was given, so the ideas came from the template itself; we"

    def abstract(self) -> str:
        seeds = sorted({c.n_baseline for c in self.primary} | {c.n_idea for c in self.primary})
        seed_text = f" Arms ran with {', '.join(fmt(n) for n in seeds)} seeds." if seeds else ""
        b = budget(self.rep)
        budget_text = f" Each run trained for a fixed budget ({b.removeprefix('after ')})." if b else ""
        return (
            f"We study {self.study}. {self.direction_words()} compared a baseline with "
            f"{prose.count(len(self.ideas), 'proposed change')} to its {'knobs or code' if self.code else 'knobs'} over several seeds, "
            f"using t-tests (paired where arms share seeds) "
            f"with {correction_words(self.rep.correction, len(self.rep.comparisons))}, effect sizes and "
            f"confidence intervals that match each test, with the primary metric {self.rep.primary_metric}.{seed_text}{budget_text} {self.finding()}"
        )

    def introduction(self) -> str:
        opener = self.rng.choice([
            "Small, controlled changes to a training recipe are easy to propose and hard to evaluate honestly.",
            "Whether a change to a training recipe helps is a statistical question before it is a story.",
        ])
        given = self.r.direction.strip()
        direction = f"The co-PI's research direction was: {given}" if given else "No research direction was given by the co-PI."
        source = "to the template's knobs and code" if self.code else "drawn from the template's declared knobs"
        check = (" Before any idea is judged, a positive control (a setting known to change the result) checks that the "
                 "testbed can separate settings at all." if self.control or self.spec.positive_control else "")
        return (
            f"{opener} This paper asks whether changes {source} improve on the baseline of "
            f"{self.study}. {direction}{check}\n\n"
            "- We run the baseline and each idea over the same seeds and report every comparison with its direction, effect size and uncertainty.\n"
            "- We state what the evidence supports, including inconclusive and negative results.\n"
            "- We state every threat to validity the analysis flagged."
        )

    def related_work(self) -> str:
        if not self.r.references:
            text = "The literature search returned no references for this study, so we cannot place it among prior work."
        else:
            ideas = list(self.ideas.values())
            said = [prose.related_sentence(ref, ideas, self.r.not_novel, self.spec.task) for ref in self.r.references]
            text = ("The literature search found the following work; each is related here to the changes this study tests. "
                    + " ".join(said))
        if self.r.not_novel:
            dropped = [f"- `{i}`: {why}" for i, why in self.r.not_novel.items()]
            text += ("\n\nIdeas dropped before running because the literature already studies them "
                     "(not novel; not run, and not reframed as replications):\n\n" + "\n".join(dropped))
        return text

    def hypothesis(self, idea: Idea) -> str:
        """A knob idea's hypothesis restated from the recorded values; a code idea's as it was proposed."""
        if idea.code is not None or not idea.changes:
            return idea.hypothesis.strip()
        m = self.spec.metrics.get(self.rep.primary_metric)
        better = m.direction if m else "better"
        sets = "; ".join(f"setting `{k}` to {value(configs.arm_value(self.rep, idea.id, k, v))} instead of the baseline's "
                         f"{value(self.ran.baseline.get(k))}" for k, v in idea.changes.items())
        return f"{sets[0].upper() + sets[1:]} gives a {better} {self.rep.primary_metric} than the baseline, everything else held equal."

    def method(self) -> str:
        if not self.ideas:
            return "No ideas were proposed; only the baseline ran."
        parts = []
        for idea in self.ideas.values():
            changes = "; ".join(f"`{k}` from {value(self.ran.baseline.get(k))} to {value(configs.arm_value(self.rep, idea.id, k, v))}"
                                for k, v in idea.changes.items()) or "no knob"
            if idea.code is not None:
                also = f" It also changes {changes}." if idea.changes else " It changes no knob."
                what = (f"It changes the experiment's code: {describe(idea, self.spec)}{also} "
                        "The diff its run applied is listed in the appendix (Code changes).")
            else:
                what = f"It changes {changes}."
            parts.append(f"{self.name(idea.id)}. Hypothesis: {self.hypothesis(idea)} {what} {prose.refutation(idea.falsification)}")
        lead = ("Each idea is a change to the template's declared knobs, evaluated against the unchanged baseline; the values "
                "are those the runs recorded.")
        if self.code:
            lead = ("Each idea is a change to the template's declared knobs or to its code (implemented by guarded edits of the "
                    "experiment), evaluated against the unchanged baseline with the same seeds and budget.")
        return lead + "\n\n" + "\n\n".join(parts)

    def setup(self) -> str:
        knob_lines = []
        for k, v in self.spec.knobs.items():
            rng = f", range [{value(v.min)}, {value(v.max)}]" if v.min is not None and v.max is not None else ""
            fair = ", changes compute or data (fairness knob)" if v.fairness else ""
            src = " (not recorded by the runs: the template's value under this profile)" if k in self.ran.unrecorded else ""
            knob_lines.append(f"- `{k}`: {v.type}, baseline {value(self.ran.baseline.get(k))}{src}{rng}{fair}")
        metric_lines = [f"- `{m}`: {v.direction} is better, {self.metric_role(m, v.kind)}" for m, v in self.spec.metrics.items()]
        seeds = sorted({s for run in self.rep.runs for s in (run.final_info.seeds if run.final_info else run.seeds)})
        control = ""
        if self.spec.positive_control:
            moves = ", ".join(f"`{k}` = {value(v)}" for k, v in self.spec.positive_control.items())
            control = f"\n\nTestbed check: a positive control ({moves}), a setting known to change the result, is run like an idea."
        return (
            f"Task: {self.spec.task.strip() or 'not recorded'}\n\n{self.ran.profile_words(self.spec)} "
            "The baseline's values below are those its runs recorded.\n\n"
            "Knobs:\n\n" + "\n".join(knob_lines or ["- none declared"]) + "\n\n"
            "Metrics:\n\n" + "\n".join(metric_lines) + control + "\n\n"
            f"Seeds used across runs: {', '.join(fmt(s) for s in seeds) or 'none'}. "
            f"Runs of the same idea are pooled by seed. Each idea is compared with its control by a two-sided t-test, paired by seed "
            f"when both arms ran the same seeds and Welch's otherwise, at α = {fmt(self.rep.alpha)} with "
            f"{correction_words(self.rep.correction, len(self.rep.comparisons))}; a verdict uses the corrected p-value. "
            "We also report an effect size (Hedges' g, or Cohen's d_z when paired) and the test's own t-interval of the improvement "
            "(the difference signed so that a positive value is better whatever the metric's direction) at the level the corrected "
            "verdict was decided at, so that it excludes zero exactly when the corrected test rejects no difference."
            + self.seed_plan()
        )

    def metric_role(self, m: str, kind: str) -> str:
        if m == self.rep.primary_metric:
            return "primary (the headline family)"
        return {"hardware": "hardware-dependent (measured, not tested)", "derived": "derived from other metrics (not tested again)",
                "fixed": "fixed by construction (not tested)"}.get(kind, "secondary (a separate family, not the headline)")

    def seed_plan(self) -> str:
        p = self.rep.seed_plan
        if p is None:
            return ""
        if p.needed is not None:  # the budget cut the plan short: say so, and that the power falls short with it
            return (f" Seeds were planned at the first look, once: detecting a difference of {fmt(p.min_detectable_effect)} in "
                    f"{p.metric} with power {fmt(p.power)} at α = {fmt(p.alpha)}, from the baseline's standard deviation "
                    f"({fmt(p.baseline_sd)}), needs {fmt(p.needed)} seeds per arm; the budget allows {fmt(p.seeds)} per arm, "
                    "so the comparison has less power than planned for that difference.")
        return (f" Seeds were planned before looking: {fmt(p.seeds)} per arm, from the baseline's standard deviation of "
                f"{p.metric} ({fmt(p.baseline_sd)}), to detect a difference of {fmt(p.min_detectable_effect)} with power "
                f"{fmt(p.power)} at α = {fmt(p.alpha)}.")

    def results(self) -> str:
        if not self.rep.comparisons:
            return "There is no comparison to report: " + "; ".join(f.text for f in self.rep.flags if f.kind == "missing_baseline") + "."
        text = self.testbed()
        head = "Measured differences (no verdict)." if self.withheld else "Primary metric (the headline)."
        text += f"{head} {self.story.claim} " + " ".join(self.effect(c) for c in self.primary)
        if self.secondary:
            text += ("\n\nSecondary metrics (a separate family, corrected on its own; not part of the headline). "
                     + " ".join(self.effect(c) for c in self.secondary))
        if self.rep.descriptive:
            text += "\n\n" + self.descriptive()
        failed = [r for r in self.rep.runs if r.status == "failed"]
        if failed:
            text += "\n\nFailed runs, excluded from the comparisons: " + "; ".join(f"`{r.job_id}` ({r.reason or 'no reason recorded'})" for r in failed) + "."
        return text + ("\n\nThe tables list every comparison; the figures below show each idea against its control, "
                       "the primary metric first.")

    def testbed(self) -> str:
        if not self.control:
            return ""
        c = self.control[0]
        separated = "did not separate it from the baseline" if self.withheld else "separates it from the baseline"
        return (f"Testbed check. The positive control, a setting known to change the result, {moved(c)} {c.metric} from "
                f"{fmt(c.baseline_mean)} to {fmt(c.idea_mean)} ({test_name(c)} p = {fmt(c.p_value)}{adjusted(c)}): "
                f"the testbed {separated}. It is a check, not a proposed idea.\n\n")

    def descriptive(self) -> str:
        items = [f"- `{d.metric}` of `{d.idea_id}`: {fmt(d.mean)} ± {fmt(d.stderr)} over {prose.count(d.n, 'seed')} "
                 f"(measured, not tested: {d.reason.strip().rstrip('.') or 'depends on the machine and its load'})."
                 for d in self.rep.descriptive]
        return "Measured, not tested. These metrics are reported as measured, without a test:\n\n" + "\n".join(items)

    def limitations(self) -> str:
        items = []
        ns = [min(c.n_baseline, c.n_idea) for c in self.rep.comparisons]
        if ns:
            items.append(
                f"- Each comparison rests on few seeds (as few as {fmt(min(ns))} per arm), so only large effects can reach significance "
                "and inconclusive results may hide small real effects."
            )
        items.append(f"- Only one task ({self.study}) was studied; the results may not transfer to other tasks, datasets or scales.")
        if self.code:
            items.append("- Code-level ideas were tested only on this template; each diff is in the appendix, and a change "
                         "whose recorded compute differs from the baseline's is flagged below.")
        else:
            items.append("- The ideas were limited to the template's declared knobs, so no new architecture or algorithm was tested.")
        devices = {r.environment.device for r in self.rep.runs if r.environment is not None}
        if not devices:
            items.append("- The hardware of the runs was not recorded.")
        elif devices == {"cpu"}:
            items.append("- All runs used the CPU only, so models and data were kept small and runtimes short.")
        acted = {r.item_id for r in self.r.responses if r.action == "act"}
        items += [f"- Raised in review ({i.id}): {i.text}" for i in self.r.revision_items if i.kind == "add_limitation" and i.id in acted]
        text = "\n".join(items)
        if self.rep.flags:
            text += ("\n\nThreats to validity. The analysis flagged the following; each bounds the claims above.\n\n"
                     + "\n".join(f"- {prose.validity_sentence(f, self.rep)}" for f in self.rep.flags))
        return text

    def conclusion(self) -> str:
        b = budget(self.rep)
        bound = (f" These conclusions hold {b}, before convergence."
                 if b and any(f.kind == "not_converged" for f in self.rep.flags) and not self.withheld else "")
        return f"{self.story.conclusion}{bound} Running more seeds and more tasks would tighten these conclusions."

    def revision_notes(self) -> str:
        if not self.r.revision_items:
            return ""
        return (
            f"This revision answers {prose.count(len(self.r.revision_items), 'review item')}, listed below with what was done "
            "about each. The results above include any new runs."
        )

    def sections(self) -> PaperSections:
        return PaperSections(
            title=self.story.title, abstract=self.abstract(), introduction=self.introduction(), related_work=self.related_work(),
            method=self.method(), experimental_setup=self.setup(), results=self.results(), limitations=self.limitations(),
            conclusion=self.conclusion(), revision_notes=self.revision_notes(),
        )


def make(seed: int, config: dict[str, Any]) -> OfflineWriterMind:
    return OfflineWriterMind(seed)

