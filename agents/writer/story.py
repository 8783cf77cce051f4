"""One story per paper: the title, abstract, results and conclusion say what the same verdicts say.

``story`` decides, from the analyst's report alone, what the paper claims
("X improved M", "no change was detected", "conclusions withheld: ..."); the
offline mind writes its title, abstract lead and conclusion from it.
``inconsistencies`` reads a rendered paper.md back against the report and
the co-PI's direction and names every place that disagrees; the writer runs
it before publishing a draft, and the reviewer may import it. ``slips`` finds
the mechanical slips a person notices ("change(s)", "if: Rejected if").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bus.schema import AnalysisReport, Comparison

POSITIVE_CONTROL = "positive-control"  # a check of the testbed, never a proposed idea

StoryKind = Literal["improved", "unreplicated", "unfair", "worse", "no_change", "withheld", "no_comparison"]


@dataclass(frozen=True)
class Story:
    kind: StoryKind
    title: str
    claim: str  # the finding in one or two sentences: the abstract's and the results' lead
    conclusion: str  # the conclusion's lead


def headline(report: AnalysisReport) -> list[Comparison]:
    """The comparisons a claim may rest on: the primary family on the primary metric, ideas only."""
    return [c for c in report.comparisons
            if c.metric == report.primary_metric and c.family == "primary" and c.idea_id != POSITIVE_CONTROL]


def budget(report: AnalysisReport) -> str:
    """The training budget the baseline's runs recorded, as words ("after 400 steps"), or "" when none was."""
    for run in report.runs:
        if run.idea_id == "baseline" and run.final_info is not None:
            cfg, compute = run.final_info.config, run.final_info.compute
            for key in ("max_steps", "steps", "num_steps", "train_steps", "epochs"):
                v = cfg.get(key, compute.get(key))
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    unit = "epochs" if key == "epochs" else "steps"
                    return f"after {int(v) if float(v).is_integer() else v} {unit}"
    return ""


def unconverged(report: AnalysisReport, idea_id: str, metric: str) -> bool:
    """Whether either arm of ``idea_id``'s comparison (the idea or its baseline) was still moving on ``metric``.

    The analyst flags the primary metric's curve, which may be another metric (grokking: val_acc for steps_to_val_99),
    so a flag on any metric bounds the claims on the primary metric (README command 1 printed them unqualified).
    """
    return any(f.kind == "not_converged" and f.idea_id in ("", idea_id, "baseline")
               and (f.metric in ("", metric) or metric == report.primary_metric) for f in report.flags)


def qualifier(report: AnalysisReport, c: Comparison) -> str:
    """How a claim about ``c`` is bounded by training that had not converged ("" when it had)."""
    if not unconverged(report, c.idea_id, c.metric):
        return ""
    b = budget(report)
    return f" ({b}, before convergence)" if b else " (within this training budget, before convergence)"


def _ids(cs: list[Comparison]) -> str:
    names = [f"`{c.idea_id}`" for c in cs]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def story(report: AnalysisReport, study: str, titles: dict[str, str] | None = None) -> Story:
    """Long because each story kind is one case with its title, claim and conclusion side by side."""
    m, titles = report.primary_metric, titles or {}
    cs = headline(report)
    if report.conclusions_withheld or any(f.kind == "no_separation" for f in report.flags):
        why = "the testbed did not separate a known-different setting (the positive control)"
        return Story("withheld", f"Conclusions withheld on {study}: the testbed did not separate a known-different setting",
                     f"Conclusions withheld: {why}, so no tested change is called better or worse.",
                     f"Conclusions withheld: {why}; the differences measured are reported, and none is claimed.")
    if not cs:
        return Story("no_comparison", f"An incomplete study on {study}: no baseline comparison was possible",
                     "No idea could be compared with the baseline, so this paper reports no effect.",
                     "Without a baseline comparison, this study cannot support any claim.")
    unfair = {f.idea_id for f in report.flags if f.kind == "unfair_baseline"}
    fair = [c for c in cs if c.verdict == "better" and c.idea_id not in unfair]
    best = sorted((c for c in fair if c.replicated), key=lambda c: -c.effect_size)
    worse = [c for c in cs if c.verdict == "worse"]
    also = f" {_ids(worse)} made {m} worse, significant after correction." if worse else ""
    if best:
        c = best[0]
        name = titles.get(c.idea_id, c.idea_id)
        said = f"`{c.idea_id}` improved {m} over the baseline{qualifier(report, c)}, significant after correction and replicated on fresh seeds."
        return Story("improved", f"{name}: a significant, replicated improvement in {m} on {study}{qualifier(report, c)}", said + also,
                     f"The evidence supports one improvement: {said}{also}")
    if fair:
        q = qualifier(report, fair[0])
        return Story("unreplicated", f"No replicated improvement in {m} on {study}: significant gains did not hold on fresh seeds{q}",
                     f"No change improved {m} in a way that replicated: {_ids(fair)} improved it in the exploratory runs{q}, "
                     "significant after correction, but a confirmation on fresh seeds did not reproduce it or could not be run." + also,
                     f"No improvement in {m} both survived the correction and replicated on fresh seeds, so we claim none.{also}")
    if any(c.verdict == "better" for c in cs):
        gains = [c for c in cs if c.verdict == "better"]
        return Story("unfair", f"No fair improvement in {m} on {study}: the only significant gains changed the compute or data",
                     f"No change improved {m} against a matching baseline: the significant gains of {_ids(gains)} came from "
                     "changing a fairness knob (the compute or data), so they are not claimed." + also,
                     f"No tested change improved {m} against a matching baseline.{also}")
    if worse:
        n = f"{len(worse)} of the {len(cs)} tested changes" if len(cs) > 1 else "the tested change"
        return Story("worse", f"A negative result on {study}: no tested change improved {m}, and {n} made it worse"
                     f"{qualifier(report, worse[0])}",
                     f"No tested change improved {m}; {_ids(worse)} made it worse, significant after correction"
                     f"{qualifier(report, worse[0])}.",
                     f"No tested change improved {m};{also}")
    return Story("no_change", f"No change in {m} was detected on {study}",
                 f"No change in {m} was detected: no tested change differed significantly from the baseline after correction"
                 f"{qualifier(report, cs[0])}.",
                 f"No change in {m} was detected: the evidence does not support an improvement or a loss from any tested change.")


# ---- reading a paper back ----

_IS_BETTER = re.compile(r"\b(higher|lower) is better\b|\ba positive value is better\b", re.I)
_NEGATION = re.compile(r"\b(no|not|none|neither|nor|without|cannot|did not|does not)\b", re.I)
_GAIN = re.compile(r"\b(improved|improves|improve|(an?|significant,?|replicated) improvement|improvement in|gains? in|better)\b", re.I)
_LOSS = re.compile(r"\b(worse|negative result|hurt|hurts|degraded)\b", re.I)
_NULL = re.compile(r"\b(inconclusive|no significant|not significant|no change)\b", re.I)
_SIGNIFICANT = re.compile(r"(?<!not )\bsignificant\b", re.I)
_CLAIMED_DIRECTION = re.compile(r"direction (was )?given by|from the (research )?direction given|co-PI'?s (research )?direction", re.I)
_NO_DIRECTION = re.compile(r"no (specific |research )?direction was given", re.I)


def sections(md: str) -> dict[str, str]:
    """paper.md's parts by heading: "title", then each "## " section's name, lower case."""
    out: dict[str, str] = {}
    name = ""
    for line in md.splitlines():
        if line.startswith("# ") and "title" not in out:
            out["title"] = line[2:].strip()
        elif line.startswith("## "):
            name = line[3:].strip().lower()
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return out


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+|\n\s*\n", _IS_BETTER.sub("", text)) if s.strip()]


def claims(text: str) -> set[str]:
    """What a text claims: "gain", "loss", "null", "withheld"; a negated gain ("no change improved") is not one."""
    out: set[str] = set()
    for s in (clause for sentence in sentences(text) for clause in re.split(r":\s|;\s", sentence)):
        if re.search(r"\bwithheld\b", s, re.I):
            out.add("withheld")
            continue
        negated = bool(_NEGATION.search(s))
        if _GAIN.search(s) and not negated:
            out.add("gain")
        if _LOSS.search(s) and not re.search(r"\b(better or worse|not worse|no worse)\b", s, re.I):
            out.add("loss")
        if _NULL.search(s) or (negated and _GAIN.search(s)):
            out.add("null")
    return out


def _mentions(sentence: str, idea_id: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(idea_id)}(?![\w-])", sentence) is not None


def _verdict_problems(part: str, text: str, report: AnalysisReport) -> list[str]:
    """Each sentence naming one idea must carry that idea's verdict, if it carries one."""
    out = []
    cs = {c.idea_id: c for c in headline(report)}
    for s in sentences(text):
        named = [c for i, c in cs.items() if _mentions(s, i)]
        metrics = {c.metric for c in report.comparisons if _mentions(s, c.metric)}
        if len(named) != 1 or metrics and report.primary_metric not in metrics:
            continue
        c, said = named[0], claims(s)
        wrong = {"better": said & {"loss"}, "worse": said & {"gain"}, "inconclusive": said & {"gain", "loss"}}[c.verdict]
        if c.verdict == "inconclusive" and _SIGNIFICANT.search(s) and not re.search(r"not significant", s, re.I):
            wrong = wrong | {"significant"}
        if wrong:
            out.append(f"{part}: says {'/'.join(sorted(wrong))} of `{c.idea_id}`, whose verdict on {c.metric} is {c.verdict}")
    return out


def _own_verdicts(text: str, report: AnalysisReport) -> str:
    """The text without the sentences that state one idea's own "better" verdict (checked against it by _verdict_problems)."""
    better = [c.idea_id for c in headline(report) if c.verdict == "better"]
    return " ".join(s for s in sentences(text) if sum(_mentions(s, i) for i in better) != 1 or re.search(r"\bwithheld\b", s, re.I))


def _claim_problems(part: str, text: str, report: AnalysisReport, kind: StoryKind) -> list[str]:
    said = claims(text if kind in ("improved", "withheld") else _own_verdicts(text, report))
    significant = any(c.verdict != "inconclusive" for c in headline(report))
    out = []
    if kind == "withheld":
        if said & {"gain", "loss"} or re.search(r"\bsignificant at\b", text, re.I) and not re.search(r"withheld", text, re.I):
            out.append(f"{part}: states a better/worse claim, but the report withholds conclusions")
        return out
    if "withheld" in said:
        out.append(f"{part}: says conclusions are withheld, but the report draws them")
    if "gain" in said and kind != "improved":
        out.append(f"{part}: claims an improvement, but no fair, replicated improvement is in the report")
    if kind == "improved" and "gain" not in said:
        out.append(f"{part}: does not state the improvement the report supports")
    general = " ".join(s for s in sentences(text) if not any(_mentions(s, c.idea_id) for c in headline(report)))
    if significant and re.search(r"\binconclusive\b", general, re.I):
        out.append(f"{part}: calls the study inconclusive, but a verdict on {report.primary_metric} is significant")
    if kind == "worse" and "loss" not in said:
        out.append(f"{part}: does not state that a change made {report.primary_metric} worse")
    return out


def _direction_problems(md: str, direction: str | None) -> list[str]:
    given = (direction or "").strip()
    flat = " ".join(md.split())
    if not given:
        if _CLAIMED_DIRECTION.search(" ".join(s for s in sentences(flat) if not _NO_DIRECTION.search(s))):
            return ["the paper claims a research direction from the co-PI, but none was given"]
        return []
    want = " ".join(given.split())[:80]
    if want not in flat:
        return ["the co-PI gave a research direction, but the paper does not state it"]
    if _NO_DIRECTION.search(flat):
        return ["the paper says no direction was given, but the co-PI gave one"]
    return []


def inconsistencies(paper_md: str, report: AnalysisReport, direction: str | None) -> list[str]:
    """Every disagreement between the paper's title, abstract, results and conclusion, the report, and the direction.

    [] when the paper tells the report's story; each entry names the part and what it gets wrong.
    """
    parts = sections(paper_md)
    kind = story(report, "").kind
    out: list[str] = []
    for part in ("title", "abstract", "conclusion"):
        out += _claim_problems(part, parts.get(part, ""), report, kind)
    for part in ("abstract", "results", "conclusion"):
        out += [] if kind == "withheld" else _verdict_problems(part, parts.get(part, ""), report)
    if kind == "withheld":
        out += _claim_problems("results", parts.get("results", ""), report, kind)
    out += _direction_problems(paper_md, direction)
    return list(dict.fromkeys(out))


_SLIPS = (
    (re.compile(r"[A-Za-z]\(s\)"), "a '(s)' plural"),
    (re.compile(r"\b(refuted|rejected|falsified|supported) if:?\s+(it would be )?(refuted|rejected|falsified) if\b", re.I), "a doubled phrase"),
    (re.compile(r"\b([A-Za-z]{3,}) \1\b"), "a doubled word"),
)


def slips(text: str) -> list[str]:
    """The mechanical slips in a text, each with the words it found."""
    return [f"{what}: {m.group(0)!r}" for pattern, what in _SLIPS for m in pattern.finditer(text)]


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut at a word boundary with an ellipsis, never mid-word."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: max(1, limit - 1)]
    if not text[len(cut)].isspace() and " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:(") + "…"
