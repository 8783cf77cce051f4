"""Offline reviewer mind: grades the paper against a rubric computed from the report and the text.

The rubric (``findings``) checks what a careful reviewer would: seeds per
arm, a baseline that is present and fair, effect sizes and uncertainty in the
text, a real limitations section, enough references, and claims that match
the verdicts. Each finding is a weakness tagged with the revision it asks for,
e.g. ``[revision: more_seeds -> wd-1]``, so the meta-review can turn the
reviews into items the PI must answer.

Decision rule of the meta-review (stated in its summary too):

- reject when any review finds a fatal problem (a claimed improvement that the
  verdicts call worse);
- accept when no blocking finding remains (more_seeds, add_baseline,
  add_limitation, rewrite_section), the mean overall score is >= 6 and the
  study is conclusive: some primary comparison is significant after the
  report's multiple-comparison correction (worse, or better and replicated on
  fresh seeds by a confirmation run);
- reject an inconclusive study once nothing blocking is left to fix: it is
  reported, but not accepted as a finding;
- reject when blocking findings remain and no revision round is left
  (round >= max_rounds, rounds counted from 0 as the PI does); otherwise
  revise, with one item per finding.

Ensemble members differ by index, never by chance: member i has strictness
(0, +1, -1)[i % 3] added to its overall score and emphasis
("statistics", "literature", "presentation")[i % 3], which doubles the score
penalty of findings in its area and shapes its questions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from statistics import mean
from typing import Any

from bus.schema import BASELINE, MIN_SEEDS, AnalysisReport, Comparison, MetaReview, Reference, Review, ReviewScores, RevisionItem, Usage

GOOD_SEEDS, MIN_REFERENCES, ACCEPT_AT = 5, 5, 6
BLOCKING = {"more_seeds", "add_baseline", "add_limitation", "rewrite_section"}
AREA = {"more_seeds": "statistics", "add_baseline": "statistics", "rewrite_section": "presentation",
        "add_limitation": "presentation", "add_citation": "literature", "fatal": "statistics"}
STRICTNESS = (0, 1, -1)
EMPHASIS = ("statistics", "literature", "presentation")
TAG = re.compile(r"\s*\[(?:revision: (\w+)(?: -> ([^\]]*))?|fatal)\]$")
CLAIM = re.compile(r"\b(improv\w*|outperform\w*|better than|beats?|surpass\w*|superior|gains?)\b", re.I)
NEGATION = re.compile(r"\b(not|no|never|none|neither|nor|fails?|failed|worse|inconclusive|cannot|without)\b|n't", re.I)


@dataclass(frozen=True)
class Finding:
    kind: str  # a RevisionItem kind, or "fatal"
    target: str
    text: str

    @property
    def blocking(self) -> bool:
        return self.kind in BLOCKING or self.kind == "fatal"

    def tagged(self) -> str:
        tag = "[fatal]" if self.kind == "fatal" else f"[revision: {self.kind} -> {self.target}]"
        return f"{self.text} {tag}"


def sections(paper: str) -> dict[str, str]:
    """Markdown sections by heading; the title under "title"."""
    out: dict[str, str] = {"title": next((ln[2:] for ln in paper.splitlines() if ln.startswith("# ")), "")}
    for m in re.finditer(r"^## +(.+?)\s*$(.*?)(?=^## |\Z)", paper, re.M | re.S):
        out[m.group(1).strip().lower()] = m.group(2).strip()
    return out


def primary(report: AnalysisReport) -> list[Comparison]:
    return [c for c in report.comparisons if c.metric == report.primary_metric]


def conclusive(report: AnalysisReport) -> bool:
    """Whether the evidence settles anything: a primary comparison significant after correction, either way,
    and for a gain, replicated on fresh seeds (a harm needs no confirmation to be reported as one)."""
    return any(c.verdict == "worse" or (c.verdict == "better" and c.replicated) for c in primary(report))


def seed_findings(report: AnalysisReport) -> list[Finding]:
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


def findings(paper: str, report: AnalysisReport, references: list[Reference]) -> list[Finding]:
    secs = sections(paper)
    return claim_findings(secs, report) + baseline_findings(report) + seed_findings(report) + text_findings(paper, secs, report, references)


def _clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


def scores(found: list[Finding], report: AnalysisReport, index: int) -> ReviewScores:
    emphasis, strict = EMPHASIS[index % 3], STRICTNESS[index % 3]

    def penalty(area: str) -> int:
        kinds = {f.kind for f in found if AREA.get(f.kind) == area}
        return len(kinds) * (2 if area == emphasis else 1)

    fatal = any(f.kind == "fatal" for f in found)
    supported = any(c.verdict == "better" for c in primary(report))
    blocking_kinds = {f.kind for f in found if f.blocking and f.kind != "fatal"}
    overall = 2 if fatal else (7 if supported else 6) - 2 * len(blocking_kinds) - sum(1 for k in blocking_kinds if AREA[k] == emphasis)
    soundness = _clamp(4 - penalty("statistics") - 2 * fatal, 1, 4)
    presentation = _clamp(4 - penalty("presentation") - (penalty("literature") > 0), 1, 4)
    return ReviewScores(
        originality=_clamp(2 - (emphasis == "literature" and penalty("literature") > 0), 1, 4),
        quality=soundness, clarity=presentation, significance=3 if supported else 2, soundness=soundness,
        presentation=presentation, contribution=3 if supported and not fatal else 2,
        overall=_clamp(overall + strict, 1, 10), confidence=4 if emphasis == "statistics" else 3,
    )


def questions(report: AnalysisReport, emphasis: str) -> list[str]:
    qs = [
        f"With {c.n_baseline} and {c.n_idea} seeds, what is the smallest effect on {c.metric} that `{c.idea_id}` could have shown at alpha {report.alpha}?"
        for c in primary(report) if c.verdict == "inconclusive"
    ]
    qs += {
        "statistics": ["Are the seeds of the baseline and the ideas paired (same data splits), and would a paired test change any verdict?"],
        "literature": ["Which prior results on this task does the baseline reproduce, and how close are its numbers to them?"],
        "presentation": ["Could the results table mark the primary metric and its direction more prominently?"],
    }[emphasis]
    return qs


def strengths(paper: str, found: list[Finding], report: AnalysisReport) -> list[str]:
    kinds = {f.kind for f in found}
    out = ["The study compares each idea with a baseline over several seeds, with the metric's direction stated."]
    failed = [r.job_id for r in report.runs if r.status == "failed"]
    if failed and all(j in paper for j in failed):
        out.append("Failed runs are reported with their reasons instead of being hidden.")
    if "rewrite_section" not in kinds and report.comparisons:
        out.append("Every comparison comes with an effect size, a confidence interval and a p-value.")
    if not kinds & {"fatal", "rewrite_section"}:
        out.append("The claims match the statistical verdicts, including inconclusive and negative results.")
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

    async def review(self, paper_markdown: str, report: AnalysisReport, references: list[Reference], index: int) -> Review:
        found = findings(paper_markdown, report, references)
        emphasis = EMPHASIS[index % 3]
        s = scores(found, report, index)
        title = sections(paper_markdown)["title"] or "untitled"
        verdicts = ", ".join(f"{c.idea_id}: {c.verdict}" for c in primary(report)) or "no comparison"
        blocking = [f for f in found if f.blocking]
        return Review(
            reviewer=f"offline-{index + 1}-{emphasis}",
            summary=f"The paper \"{title}\" compares ideas with a baseline on {report.primary_metric} ({verdicts}).",
            strengths=strengths(paper_markdown, found, report),
            weaknesses=[f.tagged() for f in found],
            questions=questions(report, emphasis),
            limitations="The authors discuss the limitations adequately." if not any(f.kind == "add_limitation" for f in found)
            else "The limitations section needs work (see weaknesses).",
            ethics="No ethical concerns found: the paper reports automated experiments within a declared template, with no human subjects named.",
            scores=s,
            decision="accept" if s.overall >= ACCEPT_AT and not blocking and conclusive(report) else "reject",
        )

    async def meta_review(self, reviews: list[Review], report: AnalysisReport, round: int, max_rounds: int) -> MetaReview:
        found: dict[tuple[str, str], Finding] = {}
        for r in reviews:
            for w in r.weaknesses:
                m = TAG.search(w)
                if m:
                    kind = m.group(1) or "fatal"
                    found.setdefault((kind, m.group(2) or ""), Finding(kind, m.group(2) or "", w[: m.start()]))
        overall = two_decimals(mean(r.scores.overall for r in reviews)) if reviews else 1.0
        fatal = [f for f in found.values() if f.kind == "fatal"]
        blocking = [f for f in found.values() if f.blocking]
        items = [RevisionItem(id=f"r{round}-{n}", kind=f.kind, text=f.text, target=f.target)
                 for n, f in enumerate((f for f in found.values() if f.kind != "fatal"), 1)]
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


def two_decimals(x: float) -> float:
    return float(f"{x:.2f}")


def make(seed: int, config: dict[str, Any]) -> OfflineReviewerMind:
    return OfflineReviewerMind(seed)
