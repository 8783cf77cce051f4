"""The offline literature mind: queries from the idea's words, novelty by a lexical rule.

The rule is meant to be read and argued with, not to be clever:

* the *change terms* are the words of the changed knobs' names (and of any
  string values, e.g. an optimizer name): ``weight_decay`` -> {weight, decay};
* the *task terms* are the remaining content words of the idea's title and
  hypothesis (direction words such as "increase" or "faster" removed);
* a found paper *already studies the change* when its title+abstract hold
  every change term and at least ``task_overlap`` (default 0.5) of the task
  terms. Any such paper makes the idea "not novel"; otherwise it is "novel",
  and the justification names the closest works by key with their overlaps.

A second, stricter-to-escape reading runs first when the template's topic is
known (its first keyword, e.g. "grokking" or "model merging"): the *method*
of a change is the string value when there is one (``merge_fn = ties`` ->
{ties}, since "merge_fn" is a slot, not a method) and the knob's words
otherwise (``weight_decay`` -> {weight, decay}); a paper whose title+abstract
hold every method term and every topic term, with one sentence holding the
method terms, studies that change on that task. That sentence is quoted as
the evidence. This is what makes ``merge_fn = ties`` not novel next to
TIES-Merging, and weight decay on grokking not novel next to Power et al.

A *code* idea (``Idea.code``: a new merge algorithm, a regulariser) changes
no knob, so it is read from its own words instead (``judge_code``): a
template-declared variant's name is a named method like a string value
(``dare_ties`` -> {dare, tie}) and goes through the same topic-and-sentence
reading; then its summary (for a declared variant, the variant's description)
is compared with each paper: one that holds the topic and at least
``code_overlap`` (default 0.6) of the summary's content words already
describes that change, and its sentence holding most of them is quoted.
Otherwise the verdict says how close the closest papers came, in counted
words, or that no paper was found at all: never "novel" on no comparison.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agents.lit.text import terms, words
from agents.minds.base import NoveltyJudgement
from bus.schema import Idea, Reference, Usage

DIRECTION_WORDS = frozenset(
    """increase increasing increased decrease decreasing decreased reduce reducing reduced raise raising lower
    higher larger smaller bigger improve improves improving improved faster slower better worse baseline
    value values default change changing changed setting hypothesis expect expected will would should""".split()
)
KEYWORDS_MARK = "\nKeywords:"
# Words of knob names that name a slot, not a method ("merge_fn", "num_layers").
SLOT_WORDS = frozenset({"fn", "num", "func", "function", "type", "kind", "mode", "use"})
# Words any code change's summary uses about itself, not about its method, and filler words.
CODE_WORDS = frozenset(
    """code function functions add adds added implement implements implemented experiment variant variants template
    replace replaces replaced instead baseline built python module edit edits switch switched
    each per et al them one many few most take takes followed""".split()
)


@dataclass(frozen=True)
class Overlap:
    ref: Reference
    change: set[str]  # change terms the paper holds
    task: set[str]  # task terms the paper holds

    def score(self, n_change: int, n_task: int) -> float:
        return len(self.change) / max(n_change, 1) + len(self.task) / max(n_task, 1)


def change_terms(idea: Idea) -> set[str]:
    out: set[str] = set()
    for knob, value in idea.changes.items():
        out |= terms(knob)
        if isinstance(value, str):
            out |= terms(value)
    return out


def method_terms(idea: Idea) -> set[str]:
    """What the change *is*: a named method (string value, a declared code variant's name) or else the knob's words, slot words removed."""
    out: set[str] = set()
    for knob, value in idea.changes.items():
        out |= terms(value) if isinstance(value, str) and terms(value) else terms(knob) - SLOT_WORDS
    if idea.code is not None and idea.code.variant:
        out |= terms(idea.code.variant) - SLOT_WORDS
    return out


def summary_terms(idea: Idea) -> set[str]:
    """A code idea's own description, as content words: what its method does (empty for a knob idea)."""
    if idea.code is None:
        return set()
    return terms(idea.code.summary) - DIRECTION_WORDS - CODE_WORDS


def best_sentence(ref: Reference, wanted: set[str]) -> tuple[str, int]:
    """The title's or abstract's sentence holding most of ``wanted``, and how many it holds."""
    best, hits = "", 0
    for text in [ref.title, *re.split(r"(?<=[.;!?])\s+", ref.abstract)]:
        n = len(wanted & terms(text))
        if text.strip() and n > hits:
            best, hits = text.strip(), n
    return best, hits


def topic_terms(task: str) -> set[str]:
    """The task's topic: the template's first keyword (what its papers call the task)."""
    _, _, keyword_text = task.partition(KEYWORDS_MARK)
    first = next((k.strip() for k in keyword_text.split(",") if k.strip()), "")
    return terms(first)


def holds_topic(topic: set[str], paper: set[str]) -> bool:
    """Every topic term, up to its inflection: "merging" is met by "merged" (the shared stem "merg")."""
    return all(any(w.startswith(t[: max(4, len(t) - 3)]) for w in paper) for t in topic)


def evidence_sentence(ref: Reference, method: set[str]) -> str | None:
    """The first sentence of the title or abstract that holds every method term, quoted as the evidence."""
    for text in [ref.title, *re.split(r"(?<=[.;!?])\s+", ref.abstract)]:
        if text.strip() and method <= terms(text):
            return text.strip()
    return None


def task_terms(idea: Idea) -> set[str]:
    return terms(f"{idea.title} {idea.hypothesis}") - change_terms(idea) - {t for t in DIRECTION_WORDS}


def _knob_phrase(idea: Idea) -> str:
    """What is changed, as query words: the knobs' names, a code idea's variant or the start of its summary."""
    phrase = " ".join(" ".join(words(k)) for k in idea.changes)
    if idea.code is not None:
        code = [w for w in words(idea.code.variant or idea.code.summary) if w not in CODE_WORDS and w not in SLOT_WORDS]
        phrase = " ".join([phrase, *code[:4]]).strip()
    return phrase


class OfflineLiteratureMind:
    def __init__(self, seed: int, config: dict[str, Any]) -> None:
        self.seed = seed
        self.task_overlap = float(config.get("task_overlap", 0.5))
        self.code_overlap = float(config.get("code_overlap", 0.6))
        self.per_round = int(config.get("queries_per_round", 3))
        self.usage = Usage()

    def _tie(self, term: str) -> str:
        # Equal-frequency terms are ordered by a seeded hash: deterministic for
        # a seed, while different seeds refine in different directions.
        return hashlib.sha256(f"{self.seed}:{term}".encode()).hexdigest()

    async def queries(self, idea: Idea, task: str, found: list[Reference], round: int) -> list[str]:
        task_text, _, keyword_text = task.partition(KEYWORDS_MARK)
        knob = _knob_phrase(idea)
        keywords = [k.strip() for k in keyword_text.split(",") if k.strip()]
        context = " ".join(keywords[:2]) or " ".join(words(task_text)[:5])
        if round == 0 and idea.code is not None:
            # A code idea's title and hypothesis are about switching code; its summary says what the code does.
            summary = [w for w in dict.fromkeys(words(idea.code.summary)) if w not in CODE_WORDS and w not in DIRECTION_WORDS]
            candidates = [f"{knob} {context}", " ".join(summary[:8]), idea.title]
        elif round == 0:
            hypothesis = " ".join(list(dict.fromkeys(words(idea.hypothesis)))[:8])
            candidates = [idea.title, f"{knob} {context}", hypothesis]
        else:
            seen = terms(f"{idea.title} {knob} {context}")
            counts = Counter(
                w for r in found for w in dict.fromkeys(words(r.title)) if w not in seen and w not in DIRECTION_WORDS
            )
            ranked = sorted(counts, key=lambda w: (-counts[w], self._tie(w)))
            offset = 2 * self.per_round * (round - 1)
            picks = ranked[offset : offset + 2 * self.per_round]
            candidates = [f"{knob} {' '.join(picks[i:i + 2])}" for i in range(0, len(picks), 2)]
            candidates += [f"{knob} {k}" for k in keywords[2:]][: max(0, self.per_round - len(candidates))]
        out = [" ".join(q.split()) for q in candidates if q.strip()]
        return list(dict.fromkeys(out))[: self.per_round]

    def overlaps(self, idea: Idea, found: list[Reference]) -> list[Overlap]:
        change, task = change_terms(idea), task_terms(idea)
        out = []
        for ref in found:
            paper = terms(f"{ref.title} {ref.abstract}")
            out.append(Overlap(ref, change & paper, task & paper))
        return sorted(out, key=lambda o: (-o.score(len(change), len(task)), o.ref.key))

    def prior_studies(self, idea: Idea, found: list[Reference], task: str) -> list[tuple[Reference, str]]:
        """Papers that study this method on this topic, each with the sentence that shows it."""
        method, topic = method_terms(idea), topic_terms(task)
        named = any(isinstance(v, str) for v in idea.changes.values()) or bool(idea.code and idea.code.variant)
        # One generic word ("layer" from num_layers) is met by any paper that merely
        # describes its model ("a one-layer transformer"); a knob's words are evidence
        # only as a phrase ("weight decay"), a named method (a string value) on its own.
        if not topic or not method or (not named and len(method) < 2):
            return []
        out = []
        for ref in found:
            paper = terms(f"{ref.title} {ref.abstract}")
            quote = evidence_sentence(ref, method) if method <= paper and holds_topic(topic, paper) else None
            if quote:
                out.append((ref, quote))
        return out

    async def judge_novelty(self, idea: Idea, found: list[Reference], task: str = "") -> NoveltyJudgement:
        prior = self.prior_studies(idea, found, task)
        if prior:
            ref, quote = prior[0]
            return NoveltyJudgement(
                novel=False,
                justification=f"Not novel: {ref.key} ('{ref.title}') already studies {', '.join(sorted(method_terms(idea)))} "
                f"on {' '.join(sorted(topic_terms(task)))}: \"{quote}\""
                + (f" Also: {', '.join(r.key for r, _ in prior[1:3])}." if len(prior) > 1 else ""),
                cited_keys=[r.key for r, _ in prior[:3]],
            )
        if idea.code is not None:
            return self.judge_code(idea, found, task)
        return self.lexical(idea, found)

    def judge_code(self, idea: Idea, found: list[Reference], task: str) -> NoveltyJudgement:
        """A code idea against the papers, by its summary's words (the module docstring's last rule)."""
        own = summary_terms(idea) | method_terms(idea)
        topic = topic_terms(task)
        what = f"the code change ({idea.code.variant or 'no declared variant'}: {', '.join(sorted(own)) or 'no content words'})" if idea.code else ""
        if not found:
            return NoveltyJudgement(
                novel=True,
                justification=f"No evidence either way: the search found no papers, so nothing shows {what} was studied; "
                "it is judged novel by default, which is weak evidence, and the sources should be widened.",
            )
        ranked = []
        for ref in found:
            paper = terms(f"{ref.title} {ref.abstract}")
            ranked.append((ref, own & paper, not topic or holds_topic(topic, paper)))
        ranked.sort(key=lambda x: (-len(x[1]), x[0].key))
        studied = [(ref, hits) for ref, hits, on_topic in ranked if on_topic and len(own) >= 3 and len(hits) / len(own) >= self.code_overlap]
        if studied:
            ref, hits = studied[0]
            quote, _ = best_sentence(ref, own)
            return NoveltyJudgement(
                novel=False,
                justification=f"Not novel: {ref.key} ('{ref.title}') already describes {what}: it holds {len(hits)}/{len(own)} of its "
                f"words ({', '.join(sorted(hits))}, at least {self.code_overlap:.0%})"
                + (f" on {' '.join(sorted(topic))}" if topic else "") + f": \"{quote}\""
                + (f" Also: {', '.join(r.key for r, _ in studied[1:3])}." if len(studied) > 1 else ""),
                cited_keys=[r.key for r, _ in studied[:3]],
            )
        closest = [(ref, hits) for ref, hits, _ in ranked if hits][:3]
        if not closest:
            return NoveltyJudgement(
                novel=True,
                justification=f"Novel: none of the {len(found)} papers found shares a word with {what}; "
                "nothing found bears on it either way.",
            )
        return NoveltyJudgement(
            novel=True,
            justification=f"Novel as far as the {len(found)} papers found show: none names its method "
            f"({', '.join(sorted(method_terms(idea))) or 'no declared name'}) in one sentence on the topic, nor holds "
            f"{self.code_overlap:.0%} of the words of {what}. Closest: "
            + "; ".join(f"{ref.key} ('{ref.title}', {len(hits)}/{len(own)}: {', '.join(sorted(hits))})" for ref, hits in closest) + ".",
            cited_keys=[ref.key for ref, _ in closest],
        )

    def lexical(self, idea: Idea, found: list[Reference]) -> NoveltyJudgement:
        """The term-overlap rule of the module docstring, over the idea's own words."""
        change, task = change_terms(idea), task_terms(idea)
        if not found:
            return NoveltyJudgement(
                novel=True,
                justification="Novel by default: the search found no papers at all, so nothing shows this change "
                "was studied; this is weak evidence and the sources should be widened.",
            )
        ranked = self.overlaps(idea, found)

        def describe(o: Overlap) -> str:
            return (
                f"{o.ref.key} ('{o.ref.title}', change terms {len(o.change)}/{len(change)}, "
                f"task terms {len(o.task)}/{len(task)}: {', '.join(sorted(o.task)) or 'none'})"
            )

        studied = [
            o for o in ranked
            if change and o.change == change and task and len(o.task) / len(task) >= self.task_overlap
        ]
        if studied:
            keys = [o.ref.key for o in studied[:3]]
            return NoveltyJudgement(
                novel=False,
                justification=f"Not novel: {describe(studied[0])} already studies the change "
                f"({', '.join(sorted(change))}) on this task: it holds every change term and at least "
                f"{self.task_overlap:.0%} of the task terms."
                + (f" Also: {', '.join(keys[1:])}." if len(keys) > 1 else ""),
                cited_keys=keys,
            )
        closest = [o for o in ranked if o.change or o.task][:3]
        if not closest:
            return NoveltyJudgement(
                novel=True,
                justification=f"Novel: none of the {len(found)} papers found shares a change term "
                f"({', '.join(sorted(change)) or 'none'}) or a task term with the idea.",
            )
        return NoveltyJudgement(
            novel=True,
            justification=f"Novel: no paper found holds every change term ({', '.join(sorted(change)) or 'none'}) "
            f"together with {self.task_overlap:.0%} of the task terms. Closest: "
            + "; ".join(describe(o) for o in closest) + ".",
            cited_keys=[o.ref.key for o in closest],
        )


def make(seed: int, config: dict[str, Any]) -> OfflineLiteratureMind:
    return OfflineLiteratureMind(seed, config)
