"""Offline writer mind: the paper's prose from the evidence and nothing else.

The headline follows the verdicts: a significant improvement is claimed only
where the report says "better"; otherwise the paper reports an honest
negative or inconclusive result. Wording follows each metric's direction
("lowered the loss ... (better)"). Every number goes through ``fmt`` from a
value in the request. The seed only picks between equivalent phrasings.
"""

from __future__ import annotations

import random
from typing import Any

from agents.codeideas import describe
from agents.minds.base import PaperSections
from agents.writer.numbers import fmt
from bus.schema import Comparison, DraftRequest, Usage


def value(v: Any) -> str:
    return fmt(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def moved(c: Comparison) -> str:
    return "raised" if c.idea_mean > c.baseline_mean else "lowered" if c.idea_mean < c.baseline_mean else "left unchanged"


def test_name(c: Comparison) -> str:
    return "paired t-test" if c.test == "paired" else "Welch"


def adjusted(c: Comparison) -> str:
    return f", Holm-adjusted p = {fmt(c.p_adjusted)}" if c.p_adjusted is not None else ""


def correction_words(correction: str, n: int) -> str:
    if correction == "holm":
        return f"Holm's correction for multiple comparisons over all {fmt(n)} comparisons reported here"
    return "no correction for multiple comparisons"


def verdict_words(c: Comparison, alpha: float) -> str:
    after = " after correction" if c.p_adjusted is not None else ""
    if c.verdict == "better":
        return f"better, significant at α = {fmt(alpha)}{after}"
    if c.verdict == "worse":
        return f"worse, significant at α = {fmt(alpha)}{after}"
    return f"inconclusive, not significant at α = {fmt(alpha)}{after}"


def effect_sentence(c: Comparison, alpha: float) -> str:
    return (
        f"`{c.idea_id}` {moved(c)} {c.metric} from {fmt(c.baseline_mean)} to {fmt(c.idea_mean)} "
        f"({c.direction} is better; improvement {fmt(c.improvement)}, bootstrap CI [{fmt(c.ci_low)}, {fmt(c.ci_high)}], "
        f"{test_name(c)} p = {fmt(c.p_value)}{adjusted(c)}, Hedges' g = {fmt(c.effect_size)}, "
        f"{fmt(c.n_baseline)} baseline and {fmt(c.n_idea)} idea seeds): {verdict_words(c, alpha)}."
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
        self.ideas = {i.id: i for i in request.ideas}
        self.primary = [c for c in self.rep.comparisons if c.metric == self.rep.primary_metric]
        # An idea that changed a fairness knob won against a different setup, not the baseline: no headline for it.
        self.unfair = {f.idea_id for f in self.rep.flags if f.kind == "unfair_baseline"}
        # A headline needs a gain that survives the correction, compares fairly and replicated on fresh seeds.
        fair_gains = [c for c in self.primary if c.verdict == "better" and c.idea_id not in self.unfair]
        self.better = sorted((c for c in fair_gains if c.replicated), key=lambda c: -c.effect_size)
        self.unreplicated = [c for c in fair_gains if not c.replicated]
        self.confirmations = {c.idea_id: c for c in self.rep.confirmations}
        self.worse = [c for c in self.primary if c.verdict == "worse"]
        self.study = self.spec.title or self.spec.name or "the template task"
        # Code-level ideas change the wording only where they exist: a knob-only paper reads as before.
        self.code = [i for i in request.ideas if i.code is not None]

    def name(self, idea_id: str) -> str:
        idea = self.ideas.get(idea_id)
        return f"{idea.title} (`{idea_id}`)" if idea else f"`{idea_id}`"

    def headline(self) -> tuple[str, str]:
        m = self.rep.primary_metric
        if not self.rep.comparisons:
            return (f"An incomplete study on {self.study}: no baseline comparison was possible",
                    "No idea could be compared with the baseline, so this paper reports no effect.")
        if self.better:
            c = self.better[0]
            return (f"{self.ideas[c.idea_id].title if c.idea_id in self.ideas else c.idea_id}: a significant, replicated gain in {m} on {self.study}",
                    f"The best supported result: {effect_sentence(c, self.rep.alpha)} {self.replication(c)}")
        if self.unreplicated:
            return (f"No replicated gain in {m} on {self.study}: significant gains did not hold on fresh seeds",
                    "Gains that were significant after correction in the exploratory runs are not claimed, because a confirmation "
                    "on fresh seeds did not reproduce them or could not be run: "
                    + " ".join(f"{effect_sentence(c, self.rep.alpha)} {self.replication(c)}" for c in self.unreplicated))
        if self.worse and len(self.worse) == len(self.primary):
            return (f"A negative result on {self.study}: none of the tested changes helped {m}",
                    "Every tested change made the primary metric worse: " + " ".join(effect_sentence(c, self.rep.alpha) for c in self.worse))
        if any(c.verdict == "better" for c in self.primary):
            return (f"No fair gain in {m} on {self.study}: the only significant gains changed the compute or data",
                    "The only significant gains came from ideas that changed a fairness knob, so they are not compared with a matching baseline: "
                    + " ".join(effect_sentence(c, self.rep.alpha) for c in self.primary if c.idea_id in self.unfair))
        return (f"No significant change in {m} on {self.study}: an inconclusive study",
                "No tested change differed significantly from the baseline in the direction that helps: "
                + " ".join(effect_sentence(c, self.rep.alpha) for c in self.primary))

    def replication(self, c: Comparison) -> str:
        again = self.confirmations.get(c.idea_id)
        if c.replicated is None or again is None:
            return "No confirmation run on fresh seeds was possible, so it is not replicated."
        word = "It replicated" if c.replicated else "It did not replicate"
        return (f"{word} on {fmt(again.n_idea)} fresh seeds per arm (improvement {fmt(again.improvement)}, "
                f"{test_name(again)} p = {fmt(again.p_value)}{adjusted(again)}: {again.verdict}).")

    def abstract(self, finding: str) -> str:
        seeds = sorted({c.n_baseline for c in self.primary} | {c.n_idea for c in self.primary})
        seed_text = f" Arms ran with {', '.join(fmt(n) for n in seeds)} seeds." if seeds else ""
        return (
            f"We study {self.study}. "
            f"Starting from the research direction given by the co-PI, we compared a baseline with "
            f"{fmt(len(self.r.ideas))} proposed change(s) to its {'knobs or code' if self.code else 'knobs'} over several seeds, "
            f"using t-tests (paired where arms share seeds) "
            f"with {correction_words(self.rep.correction, len(self.rep.comparisons))}, Hedges' g and bootstrap "
            f"confidence intervals, with the primary metric {self.rep.primary_metric}.{seed_text} {finding}"
        )

    def introduction(self) -> str:
        opener = self.rng.choice([
            "Small, controlled changes to a training recipe are easy to propose and hard to evaluate honestly.",
            "Whether a change to a training recipe helps is a statistical question before it is a story.",
        ])
        direction = self.r.direction.strip() or "no specific direction was given"
        source = "to the template's knobs and code" if self.code else "drawn from the template's declared knobs"
        return (
            f"{opener} This paper asks whether changes {source} improve on the baseline of "
            f"{self.study}. The research direction was: {direction}\n\n"
            "- We run the baseline and each idea over the same seeds and report every comparison with its direction, effect size and uncertainty.\n"
            "- We state what the evidence supports, including inconclusive and negative results.\n"
            "- We list the limitations the analysis flagged."
        )

    def related_work(self) -> str:
        if not self.r.references:
            text = "The literature search returned no references for this study, so we cannot place it among prior work."
        else:
            items = [f"- {ref.title} [@{ref.key}]" for ref in self.r.references]
            text = "This study builds on the following work found by the literature search.\n\n" + "\n".join(items)
        if self.r.not_novel:
            dropped = [f"- `{i}`: {why}" for i, why in self.r.not_novel.items()]
            text += ("\n\nIdeas dropped before running because the literature already studies them "
                     "(not novel; not run, and not reframed as replications):\n\n" + "\n".join(dropped))
        return text

    def knob_default(self, knob: str) -> Any:
        declared = self.spec.knobs.get(knob)
        return self.spec.baseline.get(knob, declared.default if declared else None)

    def method(self) -> str:
        if not self.r.ideas:
            return "No ideas were proposed; only the baseline ran."
        parts = []
        for idea in self.r.ideas:
            changes = "; ".join(f"`{k}` from {value(self.knob_default(k))} to {value(v)}" for k, v in idea.changes.items()) or "no knob"
            if idea.code is not None:
                also = f" It also changes {changes}." if idea.changes else " It changes no knob."
                what = (f"It changes the experiment's code: {describe(idea, self.spec)}{also} "
                        "The diff its run applied is listed in the appendix (Code changes).")
            else:
                what = f"It changes {changes}."
            parts.append(
                f"{self.name(idea.id)}. Hypothesis: {idea.hypothesis.strip()} {what} "
                f"It would be refuted if: {idea.falsification.strip()}"
            )
        lead = "Each idea is a change to the template's declared knobs, evaluated against the unchanged baseline."
        if self.code:
            lead = ("Each idea is a change to the template's declared knobs or to its code (implemented by guarded edits of the "
                    "experiment), evaluated against the unchanged baseline with the same seeds and budget.")
        return lead + "\n\n" + "\n\n".join(parts)

    def setup(self) -> str:
        knob_lines = []
        for k, v in self.spec.knobs.items():
            rng = f", range [{value(v.min)}, {value(v.max)}]" if v.min is not None and v.max is not None else ""
            fair = ", changes compute or data (fairness knob)" if v.fairness else ""
            knob_lines.append(f"- `{k}`: {v.type}, baseline {value(self.knob_default(k))}{rng}{fair}")
        metric_lines = [
            f"- `{m}`: {v.direction} is better{' (primary)' if m == self.rep.primary_metric else ''}"
            for m, v in self.spec.metrics.items()
        ]
        seeds = sorted({s for run in self.rep.runs for s in (run.final_info.seeds if run.final_info else run.seeds)})
        return (
            f"Task: {self.spec.task.strip() or 'not recorded'}\n\n"
            "Knobs:\n\n" + "\n".join(knob_lines or ["- none declared"]) + "\n\n"
            "Metrics:\n\n" + "\n".join(metric_lines) + "\n\n"
            f"Seeds used across runs: {', '.join(fmt(s) for s in seeds) or 'none'}. "
            f"Runs of the same idea are pooled by seed. Each idea is compared with the baseline by a two-sided t-test, paired by seed "
            f"when both arms ran the same seeds and Welch's otherwise, at α = {fmt(self.rep.alpha)} with "
            f"{correction_words(self.rep.correction, len(self.rep.comparisons))}; a verdict uses the corrected p-value. "
            "We also report Hedges' g and a percentile bootstrap confidence interval of the improvement, which is "
            "the difference signed so that a positive value is better whatever the metric's direction."
        )

    def results(self) -> str:
        if not self.rep.comparisons:
            return "There is no comparison to report: " + "; ".join(f.text for f in self.rep.flags if f.kind == "missing_baseline") + "."
        other = [c for c in self.rep.comparisons if c.metric != self.rep.primary_metric]
        text = "Primary metric. " + " ".join(effect_sentence(c, self.rep.alpha) for c in self.primary)
        if other:
            text += "\n\nOther metrics. " + " ".join(effect_sentence(c, self.rep.alpha) for c in other)
        failed = [r for r in self.rep.runs if r.status == "failed"]
        if failed:
            text += "\n\nFailed runs, excluded from the comparisons: " + "; ".join(f"`{r.job_id}` ({r.reason or 'no reason recorded'})" for r in failed) + "."
        return text + "\n\nThe results table lists every comparison and the figures show the means per arm."

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
        items += [f"- The analysis flagged: {f.text}" for f in self.rep.flags]
        acted = {r.item_id for r in self.r.responses if r.action == "act"}
        items += [f"- Raised in review ({i.id}): {i.text}" for i in self.r.revision_items if i.kind == "add_limitation" and i.id in acted]
        return "\n".join(items)

    def conclusion(self) -> str:
        if self.better:
            lead = (f"The evidence supports one claim: {self.name(self.better[0].idea_id)} improves {self.rep.primary_metric} over the baseline, "
                    "significant after correction and replicated on fresh seeds.")
        elif self.unreplicated:
            lead = f"No gain in {self.rep.primary_metric} both survived the correction and replicated on fresh seeds, so we claim none."
        elif self.rep.comparisons:
            lead = f"The evidence does not support a significant improvement in {self.rep.primary_metric} from any tested change."
        else:
            lead = "Without a baseline, this study cannot support any claim."
        return f"{lead} Running more seeds and more tasks would tighten these conclusions."

    def revision_notes(self) -> str:
        if not self.r.revision_items:
            return ""
        return (
            f"This revision answers {fmt(len(self.r.revision_items))} review item(s), listed below with what was done about each. "
            "The results above include any new runs."
        )

    def sections(self) -> PaperSections:
        title, finding = self.headline()
        return PaperSections(
            title=title, abstract=self.abstract(finding), introduction=self.introduction(), related_work=self.related_work(),
            method=self.method(), experimental_setup=self.setup(), results=self.results(), limitations=self.limitations(),
            conclusion=self.conclusion(), revision_notes=self.revision_notes(),
        )


def make(seed: int, config: dict[str, Any]) -> OfflineWriterMind:
    return OfflineWriterMind(seed)

