"""Small pieces of prose a person reads: counted nouns, refutation clauses, flags in words, related work in sentences."""

from __future__ import annotations

import re

from agents.lit.text import terms
from agents.writer.numbers import fmt
from agents.writer.story import budget, clip
from bus.schema import AnalysisFlag, AnalysisReport, Idea, Reference


def count(n: int, singular: str, plural: str | None = None) -> str:
    """"1 proposed change", "2 proposed changes": never "change(s)"."""
    return f"{fmt(n)} {singular if n == 1 else plural or singular + 's'}"


_LEAD = re.compile(r"^\s*(it\s+(would|will)\s+be\s+)?(refuted|rejected|falsified)\s+if\s*[:,]?\s*", re.I)


def refutation(text: str) -> str:
    """The idea's falsification as one clause: "It would be refuted if ...", whatever lead the idea's text already has."""
    rest = _LEAD.sub("", text.strip())
    if not rest:
        return "No refutation criterion was stated."
    rest = rest[0].lower() + rest[1:] if not rest[:2].isupper() else rest
    return f"It would be refuted if {rest}" + ("" if rest.endswith((".", "!", "?")) else ".")


def _arm(f: AnalysisFlag) -> str:
    return f"`{f.idea_id}`" if f.idea_id else "an arm"


def _metric(f: AnalysisFlag) -> str:
    return f"`{f.metric}`" if f.metric else "the metric"


def validity_sentence(f: AnalysisFlag, report: AnalysisReport) -> str:
    """A flag as a threat to validity a person can read, with the analyst's detail.

    Long because each validity kind has its own consequence for the claim, stated next to the others.
    """
    detail = f" ({f.detail.strip().rstrip('.')})" if f.detail.strip() else ""
    b = budget(report) or "within this training budget"
    if f.kind == "not_converged":
        return (f"Not converged: {_metric(f)} of {_arm(f)} was still changing at the end of training{detail}. "
                f"Every claim about it holds {b}, before convergence, and may differ at convergence.")
    if f.kind == "unstable":
        return (f"Unstable: a run of {_arm(f)}{' (' + f.job_id + ')' if f.job_id else ''} reached its best {_metric(f)} and then "
                f"collapsed{detail}; its final value understates what the setting reaches, and its comparison inherits that instability.")
    if f.kind == "no_separation":
        return (f"Testbed cannot separate: the positive control, a setting known to differ, did not differ from the baseline{detail}. "
                "The testbed cannot tell settings apart at this budget, so conclusions are withheld.")
    if f.kind == "wrong_control":
        return (f"Wrong control: {_arm(f)} is a variant of another idea but was compared with the baseline only{detail}; "
                "its effect over its parent is not tested.")
    if f.kind == "hardware_metric":
        return (f"Hardware-dependent metric: {_metric(f)} depends on the machine and its load, and the arms did not run "
                f"interleaved on one node{detail}; it is measured, not tested.")
    if f.kind == "seeds_added":
        return (f"Seeds added after a look: seeds were added to {_arm(f)} after an inconclusive look at {_metric(f)}{detail}; "
                "only a confirmation on fresh seeds counts as evidence for it.")
    text = f.text.strip()
    return (text[0].upper() + text[1:] if text else "An unnamed flag") + ("" if text.endswith(".") else ".")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _own_terms(idea: Idea) -> set[str]:
    """The words of what an idea changes: its knobs' names and named values, a code idea's summary."""
    out: set[str] = set()
    for knob, v in idea.changes.items():
        out |= terms(knob) | (terms(v) if isinstance(v, str) else set())
    return out | (terms(idea.code.summary) if idea.code is not None else set())


def _changed(idea: Idea, paper: set[str]) -> list[str]:
    """What of the idea a paper studies: the knobs whose every word it holds, or a code idea's summary words it holds."""
    knobs = [f"`{k}`" for k in idea.changes if terms(k) and terms(k) <= paper]
    return knobs or sorted(_own_terms(idea) & paper)[:4]


def related_sentence(ref: Reference, ideas: list[Idea], not_novel: dict[str, str], task: str) -> str:
    """How one cited work bears on this study's ideas, in a sentence, from the literature agent's relation (shared terms, verdicts)."""
    who = f"“{clip(ref.title, 120)}” [@{ref.key}]"
    paper = terms(f"{ref.title} {ref.abstract}")
    dropped = [i for i, why in not_novel.items() if ref.key in why]
    if dropped:
        return (f"{who} already studies the change of {_join([f'`{i}`' for i in dropped])} on this task, so the literature check "
                "judged it not novel and it was not run.")
    by_what: dict[str, list[str]] = {}
    for idea in ideas:
        what = _changed(idea, paper)
        if what:
            by_what.setdefault(", ".join(what), []).append(f"`{idea.id}`")
    if by_what:
        parts = [f"{what}, which {_join(ids)} {'changes' if len(ids) == 1 else 'change'}" for what, ids in list(by_what.items())[:3]]
        return (f"{who} studies {'; and '.join(parts)}: it bears on the hypothesis of that change, but it did not test it "
                "in the configuration run here, so our result neither reproduces nor refutes it directly.")
    on_task = sorted(terms(task) & paper)[:4]
    if on_task:
        return f"{who} works on the same task ({', '.join(on_task)}): it frames the task rather than any change tested here."
    return f"{who} was found by the literature search but shares no change or task term with this study: it is background only."
