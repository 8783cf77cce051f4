"""Offline reviewer mind: grades the paper against a rubric computed from the report, the runs and the text.

The rubric (``findings``) checks what a careful reviewer would: seeds per
arm, a baseline that is present and fair, effect sizes and uncertainty in the
text, a real limitations section, enough references, and claims that match
the verdicts; and, from ``agents.reviewer.checks``, the evidence itself:
statistics (verdict words, quoted numbers, no test on a hardware metric, the
seed plan), the Setup against the runs' recorded configs, the claims against
the validity flags, the related work. Each finding is a weakness tagged with
the revision it asks for, e.g. ``[revision: more_seeds -> wd-1]``, and quotes
its evidence, so the meta-review can turn the reviews into items the PI must answer.

Decision rule of the meta-review (stated in its summary too):

- reject when any review finds a fatal problem (a claimed improvement that the
  verdicts call worse);
- accept when no blocking finding remains (more_seeds, add_baseline,
  add_limitation, rewrite_section, or an item of the last round left undone),
  the mean overall score is >= 6 and the study is conclusive: some primary
  comparison is significant after the report's multiple-comparison correction
  (worse, or better and replicated on fresh seeds by a confirmation run);
- reject an inconclusive study once nothing blocking is left to fix: it is
  reported, but not accepted as a finding;
- reject when blocking findings remain and no revision round is left
  (round >= max_rounds, rounds counted from 0 as the PI does); otherwise
  revise, with one item per distinct finding (the same finding from several
  members is one item).

Ensemble members differ by index, never by chance: each checks its own areas
of evidence (``checks.areas_of``: statistics, setup, claims, literature; with
fewer than four members some check two), sees the fatal findings and the
undone items of the last round as everyone does, and has strictness
(0, +1, -1)[i % 3] added to its overall score.
"""

from __future__ import annotations

import re
from statistics import mean
from typing import Any

from agents.reviewer.checks import Finding, areas_of, audit, fixed_seeds_limitation, primary, sections
from bus.schema import (
    BASELINE,
    MIN_SEEDS,
    AnalysisReport,
    MetaReview,
    Reference,
    Review,
    ReviewEvidence,
    ReviewScores,
    TemplateSpec,
    Usage,
)

GOOD_SEEDS, MIN_REFERENCES, ACCEPT_AT = 5, 5, 6
STRICTNESS = (0, 1, -1)
TAG = re.compile(r"\s*\[(?:(revision|open): (\w+)(?: -> ([^\]]*))?|fatal)\]$")
CLAIM = re.compile(r"\b(improv\w*|outperform\w*|better than|beats?|surpass\w*|superior|gains?)\b", re.I)
NEGATION = re.compile(r"\b(not|no|never|none|neither|nor|fails?|failed|worse|inconclusive|cannot|without)\b|n't", re.I)


def conclusive(report: AnalysisReport) -> bool:
    """Whether the evidence settles anything: a primary comparison significant after correction, either way,
    and for a gain, replicated on fresh seeds (a harm needs no confirmation to be reported as one)."""
    return any(c.verdict == "worse" or (c.verdict == "better" and c.replicated) for c in primary(report))


def seed_findings(report: AnalysisReport, spec: TemplateSpec | None = None, secs: dict[str, str] | None = None) -> list[Finding]:
    """More seeds for each arm of a comparison on fewer than GOOD_SEEDS; for a template that runs its own seeds
    (``fixed_seeds``), which no run can add to, a limitation instead (:func:`checks.fixed_seeds_limitation`)."""
    if spec is not None and spec.fixed_seeds:
        few = [c for c in report.comparisons if min(c.n_baseline, c.n_idea) < GOOD_SEEDS]
        if not few:
            return []
        c = few[0]
        return fixed_seeds_limitation(secs, f"The comparison of `{c.idea_id}` on {c.metric} rests on {c.n_baseline} baseline and "
                                      f"{c.n_idea} idea seeds, fewer than {GOOD_SEEDS} per arm")
    out, seen = [], set()
    for c in report.comparisons:
        n = min(c.n_baseline, c.n_idea)
        if n >= GOOD_SEEDS:
            continue
        need = f"below the {MIN_SEEDS} required" if n < MIN_SEEDS else f"fewer than {GOOD_SEEDS} per arm"
        state = "is inconclusive" if c.verdict == "inconclusive" else f"is called {c.verdict}"
        for target, arm_n in ((c.idea_id, c.n_idea), (BASELINE, c.n_baseline)):
            if arm_n < GOOD_SEEDS and target not in seen:
                seen.add(target)
                out.append(Finding("more_seeds", target,
                    f"The comparison of `{c.idea_id}` on {c.metric} {state} and rests on {c.n_baseline} baseline and {c.n_idea} idea seeds, "
                    f"{need}. Run `{target}` with more seeds (at least {GOOD_SEEDS} in all) and pool them with the existing runs."))
    return out


def baseline_findings(report: AnalysisReport) -> list[Finding]:
    out = []
    for flag in report.flags:
        if flag.kind == "missing_baseline":
            out.append(Finding("add_baseline", BASELINE, f"No successful baseline run, so no claim can be checked ({flag.text}). Run the baseline."))
        elif flag.kind == "unfair_baseline":
            out.append(Finding("add_baseline", flag.idea_id,
                               f"The comparison is unfair ({flag.text}). Add a baseline with the same setting of that knob, or drop the claim."))
    return out


def text_findings(paper: str, secs: dict[str, str], report: AnalysisReport, references: list[Reference]) -> list[Finding]:
    out = []
    has_effect = re.search(r"hedges|effect size", paper, re.I)
    has_ci = re.search(r"confidence interval|\bCI\b", paper)
    has_p = re.search(r"\bp\s*[=<]|p-value", paper)
    if report.comparisons and not (has_effect and has_ci and has_p):
        out.append(Finding("rewrite_section", "results",
            "The results do not report effect sizes, confidence intervals and p-values for each comparison; add them from the analysis."))
    lim = secs.get("limitations", "")
    if len(lim) < 150 or len(re.findall(r"[.!?](\s|$)|^- ", lim, re.M)) < 2:
        out.append(Finding("add_limitation", "limitations",
            "The limitations section is missing or too thin; discuss seeds, the single task, the search space and the hardware."))
    elif any(min(c.n_baseline, c.n_idea) < GOOD_SEEDS for c in report.comparisons) and "seed" not in lim.lower():
        out.append(Finding("add_limitation", "limitations", "The limitations do not mention how few seeds each comparison rests on."))
    if any(f.kind == "unfair_baseline" for f in report.flags) and not re.search(r"fair", lim, re.I):
        out.append(Finding("add_limitation", "limitations", "The limitations do not discuss the unfair comparison the analysis flagged."))
    keys = {r.key for r in references}
    if len(keys) < MIN_REFERENCES:
        out.append(Finding("add_citation", "related_work",
            f"Only {len(keys)} reference(s); situate the work among at least {MIN_REFERENCES} relevant papers in the related work."))
    return out


def claim_findings(secs: dict[str, str], report: AnalysisReport) -> list[Finding]:
    verdicts = {c.idea_id: c.verdict for c in primary(report)}
    claims = [
        (where, s) for where in ("title", "abstract", "conclusion")
        for s in re.split(r"(?<=[.!?])\s+", secs.get(where, "")) if CLAIM.search(s) and not NEGATION.search(s)
    ]
    out, seen = [], set()
    for where, sentence in claims:
        named = [i for i in verdicts if re.search(rf"(?<![\w-]){re.escape(i)}(?![\w-])", sentence)]
        said = [verdicts[i] for i in named] or (["better"] if "better" in verdicts.values() else list(verdicts.values()) or ["inconclusive"])
        quote = sentence.strip()[:160]
        if "worse" in said and (named or "inconclusive" not in said):
            f = Finding("fatal", where, f"The {where} claims an improvement that the analysis calls worse: \"{quote}\".")
        elif "better" not in said or any(v != "better" for v in said if named):
            f = Finding(
                "rewrite_section", where,
                f"The {where} claims an improvement the analysis does not support (not significant): \"{quote}\". State the result as inconclusive.",
            )
        else:
            continue
        if (f.kind, f.target) not in seen:
            seen.add((f.kind, f.target))
            out.append(f)
    return out


def findings(paper: str, report: AnalysisReport, references: list[Reference], evidence: ReviewEvidence | None = None) -> list[Finding]:
    """Every finding of every area: the rubric's and the evidence checks', each once, with its area."""
    secs = sections(paper)
    rubric = [Finding(f.kind, f.target, f.text, "claims") for f in claim_findings(secs, report)]
    rubric += baseline_findings(report) + seed_findings(report, evidence.spec if evidence is not None else None, secs)
    rubric += [Finding(f.kind, f.target, f.text, RUBRIC_AREA.get(f.kind, "statistics")) for f in text_findings(paper, secs, report, references)]
    audited = audit(paper, report, references, evidence)
    # One seeds item per arm, and the one that asks for the most: the seed plan's, when it asks for at least the rubric's
    # GOOD_SEEDS, comes first. Asking for 5 now and for the plan's 37 only in the last round moves the goalposts.
    plan = report.seed_plan
    planned = [f for f in audited if f.kind == "more_seeds"] if plan is not None and plan.seeds >= GOOD_SEEDS else []
    out: list[Finding] = []
    for f in planned + rubric + audited:
        if f not in out and not (f.kind == "more_seeds" and any(o.kind == "more_seeds" and o.target == f.target for o in out)):
            out.append(f)
    return out


# The area each kind of the rubric's text findings belongs to (its effect-size check is statistics).
RUBRIC_AREA = {"add_limitation": "claims", "add_citation": "literature"}


def member_findings(found: list[Finding], evidence: ReviewEvidence | None, index: int) -> list[Finding]:
    """What member ``index`` reports: its areas' findings, every fatal one, and the last round's items left undone."""
    ensemble = evidence.ensemble if evidence is not None else 1
    mine = set(areas_of(index, ensemble))
    own = [f for f in found if f.area in mine or f.kind == "fatal"]
    undone = [Finding(i.kind, i.target, i.text, "claims", open_item=True) for i in (evidence.open_items if evidence else [])]
    return own + undone


def _clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


def scores(found: list[Finding], report: AnalysisReport, index: int, areas: list[str]) -> ReviewScores:
    strict = STRICTNESS[index % 3]

    def penalty(*area: str) -> int:
        return len({(f.kind, f.target) for f in found if f.area in area}) * (2 if set(area) & set(areas) else 1)

    fatal = any(f.kind == "fatal" for f in found)
    supported = any(c.verdict == "better" for c in primary(report))
    blocking = {(f.kind, f.target) for f in found if f.blocking and f.kind != "fatal"}
    overall = 2 if fatal else (7 if supported else 6) - 2 * min(len(blocking), 3) - (1 if blocking and areas[0] in {f.area for f in found} else 0)
    soundness = _clamp(4 - penalty("statistics", "setup") - 2 * fatal, 1, 4)
    presentation = _clamp(4 - penalty("claims") - (penalty("literature") > 0), 1, 4)
    return ReviewScores(
        originality=_clamp(2 - ("literature" in areas and penalty("literature") > 0), 1, 4),
        quality=soundness, clarity=presentation, significance=3 if supported else 2, soundness=soundness,
        presentation=presentation, contribution=3 if supported and not fatal else 2,
        overall=_clamp(overall + strict, 1, 10), confidence=4 if "statistics" in areas or "setup" in areas else 3,
    )


def questions(report: AnalysisReport, areas: list[str]) -> list[str]:
    plan = report.seed_plan
    qs = {
        "statistics": [
            f"With {c.n_baseline} and {c.n_idea} seeds, what is the smallest effect on {c.metric} that `{c.idea_id}` could have shown at alpha {report.alpha}"
            + (f", given the plan's {plan.seeds} seeds for {plan.min_detectable_effect:.4g} at power {plan.power:g}?" if plan else "?")
            for c in primary(report) if c.verdict == "inconclusive"
        ] or [f"Which comparisons are in the primary family and which in the secondary one, and does the paper say which each verdict belongs to "
              f"({report.correction} correction)?"],
        "setup": ["Does every knob value in the Setup come from the runs' recorded final_info.config, including the profile's overrides?"],
        "claims": ["Were the headline arm's training curves still moving at the end of the budget, and would a longer run change the claim?"],
        "literature": ["Which prior results on this task does the baseline reproduce, and how close are its numbers to them?"],
    }
    return [q for a in areas for q in qs[a]]


def strengths(paper: str, found: list[Finding], report: AnalysisReport) -> list[str]:
    kinds = {f.kind for f in found}
    areas = {f.area for f in found if f.kind == "rewrite_section"}
    out = ["The study compares each idea with a baseline over several seeds, with the metric's direction stated."]
    failed = [r.job_id for r in report.runs if r.status == "failed"]
    if failed and all(j in paper for j in failed):
        out.append("Failed runs are reported with their reasons instead of being hidden.")
    if "statistics" not in areas and report.comparisons:
        out.append("Every comparison comes with an effect size, a confidence interval and a p-value, quoted as the analysis has them.")
    if "fatal" not in kinds and "claims" not in areas:
        out.append("The claims match the statistical verdicts and the analysis's flags, including inconclusive and negative results.")
    if "setup" not in areas and any(r.final_info and r.final_info.config for r in report.runs):
        out.append("The stated setup matches the configurations the runs recorded.")
    if "add_limitation" not in kinds:
        out.append("The limitations are discussed concretely.")
    if "more_seeds" not in kinds and report.comparisons:
        out.append(f"Every arm has at least {GOOD_SEEDS} seeds.")
    if "Hardware and software" in paper and "not recorded" not in paper:
        out.append("Hardware and software versions are reported from the recorded run environments.")
    return out


class OfflineReviewerMind:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.usage = Usage()

    async def review(
        self, paper_markdown: str, report: AnalysisReport, references: list[Reference], index: int, evidence: ReviewEvidence | None = None,
    ) -> Review:
        found = member_findings(findings(paper_markdown, report, references, evidence), evidence, index)
        areas = areas_of(index, evidence.ensemble if evidence is not None else 1)
        s = scores(found, report, index, areas)
        title = sections(paper_markdown)["title"] or "untitled"
        verdicts = ", ".join(f"{c.idea_id}: {c.verdict}" for c in primary(report)) or "no comparison"
        blocking = [f for f in found if f.blocking]
        return Review(
            reviewer=f"offline-{index + 1}-{'+'.join(areas)}",
            summary=f"The paper \"{title}\" compares ideas with a baseline on {report.primary_metric} ({verdicts}). "
            f"This review checks {', '.join(areas)} against the evidence.",
            strengths=strengths(paper_markdown, found, report),
            weaknesses=[f.tagged() for f in found],
            questions=questions(report, areas),
            limitations="The authors discuss the limitations adequately." if not any(f.kind == "add_limitation" for f in found)
            else "The limitations section needs work (see weaknesses).",
            ethics="No ethical concerns found: the paper reports automated experiments within a declared template, with no human subjects named.",
            scores=s,
            decision="accept" if s.overall >= ACCEPT_AT and not blocking and conclusive(report) else "reject",
        )

    async def meta_review(self, reviews: list[Review], report: AnalysisReport, round: int, max_rounds: int) -> MetaReview:
        found = merged(reviews)
        overall = two_decimals(mean(r.scores.overall for r in reviews)) if reviews else 1.0
        fatal = [f for f in found if f.kind == "fatal"]
        blocking = [f for f in found if f.blocking]
        items = [f.item(f"r{round}-{n}") for n, f in enumerate((f for f in found if f.kind != "fatal"), 1)]
        rule = (f"Rule: reject on a fatal finding; accept when no blocking item remains, the mean overall is >= {ACCEPT_AT} "
                f"and a primary comparison is significant after correction; reject an inconclusive study with nothing left to fix; "
                f"otherwise revise while rounds are left (this is round {round}; revisions end at round {max_rounds}).")
        if fatal:
            return MetaReview(summary=f"Reject: {fatal[0].text} {rule}", overall=overall, decision="reject")
        if not blocking and not conclusive(report):
            return MetaReview(
                summary=f"Reject as a finding: no comparison on {report.primary_metric} is significant after "
                f"{report.correction} correction, so the study is inconclusive; it is reported, not accepted (mean overall {overall}). {rule}",
                overall=overall, decision="reject", revision_items=items)
        if not blocking and overall >= ACCEPT_AT:
            extra = f" Optional suggestions: {'; '.join(i.text for i in items)}" if items else ""
            return MetaReview(summary=f"Accept: the claims match the evidence and no blocking item remains (mean overall {overall}).{extra} {rule}",
                              overall=overall, decision="accept")
        if round >= max_rounds or not items:
            why = "the revision rounds are spent" if items else "the paper is below the bar with nothing concrete left to fix"
            return MetaReview(summary=f"Reject: {why}; {len(blocking)} blocking item(s) remain (mean overall {overall}). {rule}",
                              overall=overall, decision="reject", revision_items=items)
        return MetaReview(summary=f"Revise: {len(items)} item(s) to answer, {len(blocking)} of them blocking (mean overall {overall}). {rule}",
                          overall=overall, decision="revise", revision_items=items)


def merged(reviews: list[Review]) -> list[Finding]:
    """The members' tagged weaknesses as findings, each once: the same kind, target and words (numbers aside) are one finding."""
    found: dict[tuple[str, str, str], Finding] = {}
    for r in reviews:
        for w in r.weaknesses:
            m = TAG.search(w)
            if m:
                kind, target, text = m.group(2) or "fatal", m.group(3) or "", w[: m.start()]
                key = (kind, target, " ".join(re.sub(r"\d", "#", text).lower().split()))
                found.setdefault(key, Finding(kind, target, text, open_item=m.group(1) == "open"))
    return list(found.values())


def two_decimals(x: float) -> float:
    return float(f"{x:.2f}")


def make(seed: int, config: dict[str, Any]) -> OfflineReviewerMind:
    return OfflineReviewerMind(seed)
