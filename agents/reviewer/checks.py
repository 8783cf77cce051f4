"""The reviewer's own checks of a draft against the evidence: what the runs recorded, what the analysis found.

Four areas, one per ensemble member (see ``AREAS``); each check returns
findings whose text quotes the paper's sentence and the recorded value or flag
it disagrees with, so an author can find both. The checks never trust the
writer's own consistency checks: they read the Markdown as printed.

- statistics: verdict words against the corrected verdicts, quoted effect sizes,
  intervals and p-values against the comparisons, no test or finding on a
  metric that is not an outcome (hardware, derived, fixed), seeds against the plan;
- setup: every knob value the Setup or Method states, against the runs' final_info.config;
- claims: every validity flag stated, headlines qualified when not converged, no verdict
  when conclusions are withheld, a wrong control named, title/abstract/conclusion agreeing,
  each metric's direction as the analysis has it;
- literature: related work cited in prose (not a bare list), ideas found not novel said to be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from bus.schema import BASELINE, AnalysisReport, Comparison, Reference, ReviewEvidence, RevisionItem, TemplateSpec

AREAS = ("statistics", "setup", "claims", "literature")
BLOCKING = {"more_seeds", "add_baseline", "add_limitation", "rewrite_section"}
NUM = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
SKIP_PARTS = ("references", "revisions")
# A citation as the writer renders it: [key], [@key], or (Author, 2021).
CITE = re.compile(r"\[@?[\w:.-]+\]|\([A-Z][^()]{0,80}?\b\d{4}[a-z]?\)")
# The seeds per arm a more_seeds finding asks for, in the two phrasings the checks write ("up to 10 seeds",
# "at least 5 in all"); the number travels to the PI as ``RevisionItem.seeds``.
SEEDS_ASKED = re.compile(r"\b(?:up to|at least) (\d+)(?: seeds\b| in all\b)")


@dataclass(frozen=True)
class Finding:
    kind: str  # a RevisionItem kind, or "fatal"
    target: str
    text: str
    area: str = "statistics"
    open_item: bool = False  # a previous round's item the revision did not do: blocks whatever its kind

    @property
    def blocking(self) -> bool:
        return self.kind in BLOCKING or self.kind == "fatal" or self.open_item

    def item(self, id: str) -> RevisionItem:
        """The revision item this finding asks for; a seeds ask carries its number of seeds per arm."""
        kind = self.kind if self.kind != "fatal" else "rewrite_section"
        m = SEEDS_ASKED.search(self.text) if kind == "more_seeds" else None
        return RevisionItem(id=id, kind=kind, text=self.text.strip(), target=self.target, seeds=int(m.group(1)) if m else None)

    def tagged(self) -> str:
        if self.kind == "fatal":
            return f"{self.text} [fatal]"
        word = "open" if self.open_item else "revision"
        return f"{self.text} [{word}: {self.kind} -> {self.target}]"


# ------------------------------------------------------------------ reading the paper


def sections(paper: str) -> dict[str, str]:
    """Markdown sections by lower-cased heading; the title under "title"."""
    out: dict[str, str] = {"title": next((ln[2:] for ln in paper.splitlines() if ln.startswith("# ")), "")}
    for m in re.finditer(r"^## +(.+?)\s*$(.*?)(?=^## |\Z)", paper, re.M | re.S):
        out[m.group(1).strip().lower()] = m.group(2).strip()
    return out


def body_parts(secs: dict[str, str]) -> dict[str, str]:
    """The parts a reader takes as the paper's claims: no references, no Revisions notes, no appendices."""
    return {k: v for k, v in secs.items() if k not in SKIP_PARTS and not k.startswith("appendix")}


def prose(text: str) -> str:
    """The text without table rows and image lines."""
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith(("|", "![")))


def sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n|\n(?=\s*[-*] )", prose(text)):
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z`(*\"'])", " ".join(para.split())) if s.strip()]
    return out


def quote(s: str, n: int = 400) -> str:
    s = " ".join(s.split())
    return f"\"{s if len(s) <= n else s[: n - 1] + '…'}\""


def names(text: str, name: str) -> bool:
    """Whether ``text`` names an id or metric as a whole word (backticked or not; - and _ alike)."""
    pat = "[-_]".join(re.escape(part) for part in re.split(r"[-_]", name))
    return re.search(rf"(?<![\w-]){pat}(?![\w-])", text, re.I) is not None


def mask_numbers(text: str) -> str:
    return re.sub(NUM, "#", " ".join(text.split()))


def close(printed: str, value: float) -> bool:
    """Whether a printed number is ``value`` as rounded to the digits it shows."""
    try:
        d = Decimal(printed)
    except InvalidOperation:
        return False
    exp = d.as_tuple().exponent
    tol = 0.5 * 10.0 ** exp if isinstance(exp, int) else 0.0
    return abs(float(d) - value) <= tol + 1e-12 * max(1.0, abs(value))


def spec_of(evidence: ReviewEvidence | None) -> TemplateSpec | None:
    return evidence.spec if evidence is not None else None


def metric_kinds(report: AnalysisReport, spec: TemplateSpec | None) -> dict[str, str]:
    """Metrics that carry no test, with why: the template's kind, the report's descriptive rows and flags."""
    out = {m: f"the template declares it a {v.kind} metric" for m, v in (spec.metrics.items() if spec else []) if v.kind != "outcome"}
    out.update({d.metric: out.get(d.metric) or f"the analysis reports it descriptively ({d.reason})" for d in report.descriptive})
    out.update({f.metric: out.get(f.metric) or f"the analysis flagged it ({f.text})" for f in report.flags if f.kind == "hardware_metric" and f.metric})
    return out


def where_of(secs: dict[str, str], sentence: str) -> str:
    for k, v in secs.items():
        if sentence[:60] in " ".join(prose(v).split()):
            return k.replace(" ", "_")
    return "results"


def idea_sentences(secs: dict[str, str], ids: Iterable[str]) -> Iterable[tuple[str, str, list[str]]]:
    """(part, sentence, ideas named) for every prose sentence of the body that names an idea."""
    ids = list(ids)
    for part, text in body_parts(secs).items():
        for s in sentences(text) if part != "title" else [text]:
            named = [i for i in ids if names(s, i)]
            if named:
                yield part, s, named


def primary(report: AnalysisReport) -> list[Comparison]:
    return [c for c in report.comparisons if c.metric == report.primary_metric]


# ------------------------------------------------------------------ statistics

NOT_SIG = re.compile(r"\binconclusive\b|\b(?:not|no|never)\s+(?:\w+\s+){0,2}significant|\bnon-?significant|\binsignificant", re.I)
SIG = re.compile(r"\bsignificant(?:ly)?\b", re.I)
WORSE = re.compile(r"\bworse\b|\bhurt|\bharm", re.I)
TESTED = re.compile(r"\bsignifican\w*|\bp\s*[=<]|p-value|\bfinding\b|\bt-test\b|\bverdict|\bbetter,", re.I)
UNTESTED = re.compile(r"not tested|without a test|descriptiv|no test|is not a finding|not a finding|hardware-dependent", re.I)


def claimed_verdict(sentence: str) -> str | None:
    if NOT_SIG.search(sentence):
        return "inconclusive"
    if SIG.search(sentence):
        return "worse" if WORSE.search(sentence) else "better"
    return None


def verdict_findings(secs: dict[str, str], report: AnalysisReport) -> list[Finding]:
    """Verdict words and quoted numbers of each sentence about one idea and one metric, against its comparison."""
    by = {(c.idea_id, c.metric): c for c in report.comparisons}
    metrics = sorted({c.metric for c in report.comparisons}, key=len, reverse=True)
    out = []
    for part, s, ideas in idea_sentences(secs, sorted({c.idea_id for c in report.comparisons}, key=len, reverse=True)):
        said = [m for m in metrics if names(s, m)]
        if len(ideas) != 1 or len(said) > 1 or part in ("experimental setup", "method"):
            continue
        c = by.get((ideas[0], said[0] if said else report.primary_metric))
        if c is None:
            continue
        # "seeds were added after an inconclusive look" describes the look, not the verdict
        claim = None if re.search(STATED["seeds_added"], s, re.I) else claimed_verdict(s)
        adj = f"corrected p = {c.p_adjusted:.4g}" if c.p_adjusted is not None else f"p = {c.p_value:.4g}"
        if claim is not None and claim != c.verdict:
            out.append(Finding("rewrite_section", part.replace(" ", "_"),
                f"The {part} calls `{c.idea_id}` on {c.metric} {claim}: {quote(s)}; the analysis's verdict is {c.verdict} "
                f"({adj}, {report.correction} correction, {c.family} family). State the verdict the analysis gives."))
        out += number_findings(part, s, c)
    return out


def number_findings(part: str, s: str, c: Comparison) -> list[Finding]:
    """Effect size, interval and p-values quoted in a sentence, against the comparison they describe."""
    wrong = []
    for m in re.finditer(rf"(?:Hedges'?\s*g|Cohen's\s*d_?z?|\bd_z|\bg)\s*=\s*({NUM})", s):
        if not close(m.group(1), c.effect_size):
            wrong.append(f"effect size {m.group(1)} (recorded {c.effect_size:.4g})")
    if c.effect_kind == "paired_d" and re.search(r"Hedges'?\s*g", s):
        wrong.append(f"the effect is named Hedges' g, but the paired test's effect is Cohen's d_z (effect_kind {c.effect_kind})")
    ci = re.search(rf"\bCI\s*\[\s*({NUM})\s*,\s*({NUM})\s*\]", s)
    if ci and not (close(ci.group(1), c.ci_low) and close(ci.group(2), c.ci_high)):
        wrong.append(f"interval [{ci.group(1)}, {ci.group(2)}] (recorded [{c.ci_low:.4g}, {c.ci_high:.4g}])")
    for m in re.finditer(rf"((?:adjusted|corrected)\s+)?\bp\s*=\s*({NUM})", s, re.I):
        value = c.p_adjusted if m.group(1) else c.p_value
        if value is not None and not close(m.group(2), value):
            wrong.append(f"{'corrected ' if m.group(1) else ''}p = {m.group(2)} (recorded {value:.4g})")
    if not wrong:
        return []
    return [Finding("rewrite_section", part.replace(" ", "_"),
                    f"The {part} quotes {'; '.join(wrong)} for `{c.idea_id}` on {c.metric}: {quote(s)}. Quote the analysis's values.")]


def hardware_findings(secs: dict[str, str], report: AnalysisReport, spec: TemplateSpec | None) -> list[Finding]:
    """A significance test or a finding claimed on a metric that is not an outcome of the method."""
    out, seen = [], set()
    for m, why in metric_kinds(report, spec).items():
        for part, text in body_parts(secs).items():
            for s in sentences(text) if part != "title" else [text]:
                if names(s, m) and TESTED.search(s) and not UNTESTED.search(s) and m not in seen:
                    seen.add(m)
                    out.append(Finding("rewrite_section", part.replace(" ", "_"),
                        f"The {part} treats {m} as a tested finding: {quote(s)}; but {why}, so it has no test and no verdict. "
                        "Report it descriptively, per arm, and claim nothing from it."))
    return out


UNDERPOWERED = re.compile(r"underpowered|\bpower\b|fixed seeds|own seeds|hard-coded seeds", re.I)


def fixed_seeds_limitation(secs: dict[str, str] | None, shortfall: str) -> list[Finding]:
    """For a template that runs its own seeds: not "run more seeds" (no revision can), but a limitation that says why
    the comparison rests on so few; none once the limitations speak of the seeds and of power (or of the fixed seeds)."""
    lim = (secs or {}).get("limitations", "")
    if "seed" in lim.lower() and UNDERPOWERED.search(lim):
        return []
    return [Finding("add_limitation", "limitations", f"{shortfall}; the template runs its own fixed seeds, so more cannot be run. "
                    "State in the limitations that the comparison is underpowered for that reason.")]


def seed_plan_findings(report: AnalysisReport, spec: TemplateSpec | None = None, secs: dict[str, str] | None = None) -> list[Finding]:
    """Arms run with fewer seeds than the plan made before looking asked for.

    A template that runs its own seeds (``fixed_seeds``: an AI Scientist template) cannot be run on more, so
    asking for them would be a demand no revision can meet: the finding asks instead for the limitations to
    say the comparison is underpowered, and is met once they speak of the seeds and of power (or of the fixed seeds).
    """
    plan = report.seed_plan
    if plan is None:
        return []
    if spec is not None and spec.fixed_seeds:
        short = [(c, n) for c in primary(report) for n in (c.n_idea, c.n_baseline) if n < plan.seeds]
        if not short:
            return []
        c, n = short[0]
        return fixed_seeds_limitation(secs, f"`{c.idea_id}` against the baseline on {c.metric} rests on {n} seeds per arm, but the seed "
                                      f"plan asks for {plan.seeds} (to detect {plan.min_detectable_effect:.4g} at power {plan.power:g}, "
                                      f"alpha {plan.alpha:g})")
    out, seen = [], set()
    for c in primary(report):
        for arm, n in ((c.idea_id, c.n_idea), (BASELINE, c.n_baseline)):
            if n < plan.seeds and arm not in seen:
                seen.add(arm)
                out.append(Finding("more_seeds", arm,
                    f"`{arm}` ran {n} seeds on {c.metric}, but the seed plan asks for {plan.seeds} per arm "
                    f"({'the budget’s cap of the ' + str(plan.needed) + ' needed ' if plan.needed else ''}to detect "
                    f"{plan.min_detectable_effect:.4g} at power {plan.power:g}, alpha {plan.alpha:g}, baseline SD {plan.baseline_sd:.4g}). "
                    f"Run `{arm}` up to {plan.seeds} seeds."))
    return out


# ------------------------------------------------------------------ setup against the recorded configs


def recorded(report: AnalysisReport) -> dict[str, dict[str, set[str]]]:
    """Arm -> knob -> the values its successful runs recorded in final_info.config, as printed keys."""
    out: dict[str, dict[str, set[str]]] = {}
    for r in report.runs:
        if r.status == "succeeded" and r.final_info is not None:
            for k, v in r.final_info.config.items():
                out.setdefault(r.idea_id, {}).setdefault(k, set()).add(json.dumps(v))
    return out


def same_value(printed: str, stored: str) -> bool:
    value: Any = json.loads(stored)
    if isinstance(value, bool):
        return printed.lower() in (str(value).lower(), "yes" if value else "no", "on" if value else "off")
    if isinstance(value, (int, float)):
        return close(printed, float(value))
    return printed.strip("`'\"").lower() == str(value).lower()


VALUE = rf"(?:{NUM}|true|false|`[^`]+`|[A-Za-z][\w-]*(?:\.[\w-]+)*)"  # a word value never takes the sentence's full stop
LEAD = (r"`?\s*(?:\(|:|=|\bis\b|\bof\b|\bset to\b|\bat\b|\bwas\b|\bequal to\b|\s)*\s*(?:(?:float|int|choice|bool)\s*,\s*)?"
        r"(?:(?:the\s+)?baseline(?:\s+value)?(?:\s+of)?\s*[:=]?\s*)?")


def stated_values(text: str, knob: str) -> list[tuple[str, str, str]]:
    """(value, role, sentence) for each statement of ``knob``'s value: role "from"/"to" for "from a to b", else "is"."""
    pat = "[-_]".join(re.escape(part) for part in re.split(r"[-_]", knob))
    out = []
    for s in sentences(text):
        for m in re.finditer(rf"(?<![\w-])`?{pat}(?![\w-])", s):
            rest = s[m.end():]
            ft = re.match(rf"`?\s*from\s+({VALUE})\s+to\s+({VALUE})", rest)
            if ft:
                out += [(ft.group(1), "from", s), (ft.group(2), "to", s)]
                continue
            v = re.match(rf"{LEAD}({NUM}|true|false)(?![\w.])", rest, re.I)
            if v:
                out.append((v.group(1), "is", s))
    return out


POSITIVE = re.compile(r"positive control|testbed check", re.I)
POSITIVE_CONTROL = "positive-control"


def setup_findings(secs: dict[str, str], report: AnalysisReport, spec: TemplateSpec | None) -> list[Finding]:
    """Every knob value the Setup or Method states, against what the runs recorded in final_info.config.

    A value stated in a paragraph that names an idea is that idea's ("from a to b": a the baseline's, b the idea's);
    elsewhere it is the baseline's. A knob no run recorded cannot be checked and is left alone.
    """
    rec = recorded(report)
    ideas = sorted((a for a in rec if a != BASELINE), key=len, reverse=True)
    knobs = sorted(set(spec.knobs) if spec else {k for arm in rec.values() for k in arm}, key=len, reverse=True)
    out, seen = [], set()
    for part in ("method", "experimental setup", "setup", "experiments"):
        for para in re.split(r"\n\s*\n", prose(secs.get(part, ""))):
            arm = next((i for i in ideas if names(para, i)), BASELINE)
            for knob in knobs:
                for printed, role, s in stated_values(para, knob):
                    who = BASELINE if role == "from" else arm
                    if POSITIVE.search(s):  # the testbed check's own setting, not the baseline's
                        who = POSITIVE_CONTROL
                    values = rec.get(who, {}).get(knob)
                    if not values or any(same_value(printed, v) for v in values) or (who, knob) in seen:
                        continue
                    seen.add((who, knob))
                    ran = " and ".join(sorted(v.strip('"') for v in values))
                    out.append(Finding("rewrite_section", part.replace(" ", "_"),
                        f"The {part} states `{knob}` = {printed} for `{who}`: {quote(s)}; the runs of `{who}` recorded "
                        f"{knob} = {ran} in final_info.config. State the values that ran."))
    return out


# ------------------------------------------------------------------ claims against curves and flags

# How a paper may state each validity flag in its own words (besides the flag's printed prefix).
STATED = {
    "not_converged": r"not (?:yet )?converged|did not converge|had not converged|far from converge|before (?:it )?converge|"
                     r"still (?:improving|moving|falling|rising|decreasing|increasing)",
    "unstable": r"unstable|instabilit|collaps|diverg",
    "no_separation": r"cannot separate|could not separate|no separation|positive control|conclusions? (?:are |were )?withheld",
    "wrong_control": r"wrong control|compared with the baseline (?:only|instead of)|its parent|parent idea",
    "hardware_metric": r"hardware[- ]dependent|depends on the machine|descriptiv|not tested",
    "seeds_added": r"seeds? (?:were |was )?added|added seeds|after (?:an? |the )?(?:inconclusive )?look|optional stopping",
}
QUALIFIED = re.compile(r"not (?:yet )?converged|did not converge|this (?:training )?budget|for this budget|before convergence|"
                       r"within the budget|at (?:the )?end of training|still (?:improving|moving)|far from converge", re.I)
VERDICT_WORDS = re.compile(r"\bsignificant(?:ly)?\b|\boutperform\w*|\bimprov(?:es|ed)\b|:\s*(?:better|worse)\b|\b(?:is|was|are) (?:better|worse)\b", re.I)
DIRECTION_PHRASE = re.compile(r"\b(?:higher|lower) is better\b", re.I)


def flag_findings(secs: dict[str, str], report: AnalysisReport) -> list[Finding]:
    """Each validity flag of the report must be stated in the paper's body (the appendix's list alone is not stating it)."""
    body = " ".join(" ".join(prose(v).split()) for v in body_parts(secs).values())
    out, seen = [], set()
    for f in report.flags:
        pattern = STATED.get(f.kind)
        if pattern is None or (f.kind, f.idea_id, f.metric) in seen:
            continue
        seen.add((f.kind, f.idea_id, f.metric))
        about = [x for x in (f.idea_id, f.metric) if x]
        spots = [s for part, text in body_parts(secs).items() for s in sentences(text)
                 if (re.search(pattern, s, re.I) or f.text.split(":")[0].lower() in s.lower()) and all(names(s, x) for x in about[:1])]
        if spots or (not about and re.search(pattern, body, re.I)):
            continue
        target = "limitations" if f.kind in ("hardware_metric", "seeds_added") else "results"
        out.append(Finding("rewrite_section", target,
            f"The analysis flagged \"{f.text}\" ({f.kind}{', idea ' + f.idea_id if f.idea_id else ''}), and the paper's body never states it. "
            f"Say it where the {target} discuss {('`' + f.idea_id + '`') if f.idea_id else 'the study'}, and qualify the claims it touches."))
    return out


def headline_sentences(secs: dict[str, str]) -> Iterable[tuple[str, str]]:
    for part in ("title", "abstract", "conclusion"):
        text = secs.get(part, "")
        for s in [text] if part == "title" else sentences(text):
            yield part, s


def convergence_findings(secs: dict[str, str], report: AnalysisReport) -> list[Finding]:
    """A headline claim about an idea (or the study) whose runs were still moving must say it holds for this budget only.

    The title states the headline comparison, naming its idea by title rather than id: a flag on either arm of a primary
    comparison touches it (README command 1's title claimed "a significant, replicated improvement" with both arms unsettled).
    """
    flagged = [f for f in report.flags if f.kind == "not_converged"]
    headline = {c.idea_id for c in primary(report)}
    out, seen = [], set()
    for f in flagged:
        for part, s in headline_sentences(secs):
            about = not f.idea_id or f.idea_id == BASELINE or names(s, f.idea_id) or (part == "title" and f.idea_id in headline)
            qualified = QUALIFIED.search(secs.get(part, ""))  # the part says, somewhere, that the claim holds for this budget
            if about and claimed_verdict(s) in ("better", "worse") and not qualified and part not in seen:
                seen.add(part)
                out.append(Finding("rewrite_section", part,
                    f"The {part} states a result as settled: {quote(s)}; but the analysis flagged \"{f.text}\". "
                    "Qualify it: the claim holds for this training budget only, the model was not converged."))
    return out


def withheld_findings(secs: dict[str, str], report: AnalysisReport) -> list[Finding]:
    """With conclusions withheld (the testbed could not separate a known difference), the paper states no verdict at all."""
    if not report.conclusions_withheld:
        return []
    out = []
    for part in ("title", "abstract", "results", "conclusion"):
        text = secs.get(part, "")
        rows = [ln for ln in text.splitlines() if ln.lstrip().startswith("|") and re.search(r"\|\s*(better|worse)\s*\|", ln)]
        hits = [s for s in ([text] if part == "title" else sentences(text))
                if VERDICT_WORDS.search(DIRECTION_PHRASE.sub("", s)) and not re.search(r"withheld|no verdict|cannot separate", s, re.I)]
        if hits or rows:
            why = next((f.text for f in report.flags if f.kind == "no_separation"), "conclusions_withheld is set")
            out.append(Finding("rewrite_section", part,
                f"The {part} states a verdict: {quote(hits[0] if hits else rows[0])}; but the analysis withheld conclusions (\"{why}\"). "
                "State no verdict: report the measurements and why no conclusion can be drawn."))
    return out


def control_findings(secs: dict[str, str], report: AnalysisReport) -> list[Finding]:
    """A variant of a parent idea is compared with its parent: a claim "over the baseline" for it names the wrong control."""
    controls = {c.idea_id: c.control for c in report.comparisons if c.control != BASELINE}
    controls.update({f.idea_id: controls.get(f.idea_id, "its parent") for f in report.flags if f.kind == "wrong_control" and f.idea_id})
    out = []
    for part, s, ideas in idea_sentences(secs, controls):
        if len(ideas) == 1 and re.search(r"(?:over|than|against|with|relative to) the baseline", s, re.I) and claimed_verdict(s) in ("better", "worse"):
            out.append(Finding("rewrite_section", part.replace(" ", "_"),
                f"The {part} judges `{ideas[0]}` against the baseline: {quote(s)}; its control is `{controls[ideas[0]]}` (the arm it varies). "
                "Compare it with its control, or say the comparison with the baseline does not isolate its change."))
    return out


def polarity(text: str) -> str:
    """"positive" when a sentence claims a significant gain, "none" when the text says there is none, else ""."""
    if re.search(r"inconclusive|no significant|\bno (?:\w+ ){0,2}gain|does not support|not support|negative result|claim none|none of", text, re.I):
        return "none"
    for s in sentences(text) or [text]:
        if claimed_verdict(s) == "better" and not re.search(r"\b(?:not|no|never|nor|without)\b|n't", s, re.I):
            return "positive"
    return ""


def consistency_findings(secs: dict[str, str], report: AnalysisReport, spec: TemplateSpec | None) -> list[Finding]:
    """Title, abstract and conclusion say the same thing; each metric's direction is the one the analysis used."""
    out = []
    title = secs.get("title", "")
    tp = polarity(title)
    for part in ("abstract", "conclusion"):
        text = secs.get(part, "")
        hedged = re.search(r"not claimed|not replicated|did not replicate|not reproduce", text, re.I)
        pos = next((s for s in sentences(text) if polarity(s) == "positive"), None)
        if tp == "none" and pos and not hedged:
            out.append(Finding("rewrite_section", "title",
                f"The title says there is no result ({quote(title)}), while the {part} claims one: {quote(pos)}. Make them agree with the analysis."))
            break
        if tp == "positive" and polarity(text) == "none":
            out.append(Finding("rewrite_section", "title",
                f"The title claims a result ({quote(title)}), while the {part} says there is none. Make them agree with the analysis."))
            break
    directions = {c.metric: c.direction for c in report.comparisons}
    directions.update({m: v.direction for m, v in (spec.metrics.items() if spec else [])})
    for m, d in directions.items():
        pat = "[-_]".join(re.escape(part) for part in re.split(r"[-_]", m))
        for part, text in body_parts(secs).items():
            hit = re.search(rf"(?<![\w-])`?{pat}`?[^.;\n]{{0,12}}?\b(higher|lower) is better", " ".join(text.split()), re.I)
            if hit and hit.group(1).lower() != d:
                out.append(Finding("rewrite_section", part.replace(" ", "_"),
                    f"The {part} says {hit.group(1).lower()} {m} is better (\"{hit.group(0)}\"); the analysis compared it as {d} is better."))
                break
    return out


# ------------------------------------------------------------------ literature


def literature_findings(secs: dict[str, str], references: list[Reference], not_novel: dict[str, str]) -> list[Finding]:
    """Related work cited in prose, related to the claim, not a bare list; ideas found not novel said to be."""
    related = secs.get("related work", "")
    keys = {r.key for r in references} | {r.title.lower() for r in references if r.title}

    def cites(text: str) -> bool:
        return CITE.search(text) is not None or any(k in text.lower() for k in keys)

    bullets = [ln for ln in related.splitlines() if re.match(r"\s*[-*] ", ln) and cites(ln) and len(ln.split()) < 25]
    in_prose = [s for s in sentences("\n".join(ln for ln in related.splitlines() if not re.match(r"\s*[-*] ", ln)))
                if cites(s) and len(s.split()) >= 8]
    out = []
    if len(bullets) >= 2 and len(in_prose) < max(1, len(bullets) // 2):
        out.append(Finding("rewrite_section", "related_work",
            f"The related work is a bare list ({len(bullets)} entries such as {quote(bullets[0].strip('- '), 120)}) with "
            f"{len(in_prose)} work(s) discussed in prose. Say for each cited work how it relates to this paper's claim.", area="literature"))
    body = " ".join(v for k, v in body_parts(secs).items())
    for idea, why in not_novel.items():
        claim = next((s for _, s in headline_sentences(secs) if names(s, idea) and re.search(r"\bnovel|\bnew\b|\bfirst\b", s, re.I)), None)
        if claim or not names(body, idea):
            out.append(Finding("rewrite_section", "related_work",
                f"The literature check found `{idea}` not novel ({why[:160]}), and the paper "
                + (f"presents it as new: {quote(claim)}." if claim else "does not say so.")
                + " State the literature's verdict where the idea is discussed.", area="literature"))
    return out


# ------------------------------------------------------------------ all areas


def audit(paper: str, report: AnalysisReport, references: list[Reference], evidence: ReviewEvidence | None) -> list[Finding]:
    """Every evidence check of every area, each finding tagged with its area."""
    secs, spec = sections(paper), spec_of(evidence)
    by_area = {
        "statistics": verdict_findings(secs, report) + hardware_findings(secs, report, spec) + seed_plan_findings(report, spec, secs),
        "setup": setup_findings(secs, report, spec),
        "claims": flag_findings(secs, report) + convergence_findings(secs, report) + withheld_findings(secs, report)
        + control_findings(secs, report) + consistency_findings(secs, report, spec),
        "literature": literature_findings(secs, references, evidence.not_novel if evidence else {}),
    }
    return [Finding(f.kind, f.target, f.text, area) for area, found in by_area.items() for f in found]


def areas_of(index: int, ensemble: int) -> list[str]:
    """The areas member ``index`` of an ensemble of ``ensemble`` checks: every area is someone's, whatever the size."""
    n = max(1, min(ensemble, len(AREAS)))
    return [a for j, a in enumerate(AREAS) if j % n == index % n]
