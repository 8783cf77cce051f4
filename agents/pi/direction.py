"""What a research direction or a co-PI note names: the template's knobs, variants and metrics, by their words.

The text is tokenised (lower case, a plural's ``s`` dropped, numbers kept) and
matched against each lever's declared words:

- its **name**, split at ``_`` ("warmup_steps" is "warmup steps"; a part of three
  letters or more also matches a word it starts, so "val_loss" is "validation loss");
  all its parts in a row score 2, one part alone ``2 / parts``;
- a one-part name spelled by the **initials** of words in a row: "learning rate" is ``lr`` (2);
- its **description**'s first clause: two of its content words in a row in the
  text ("peak AdamW learning rate" has "learning rate") add the share of the
  clause's content words the text has.

A lever belongs to the focus when its score is over half the best score: the
most specific mention wins ("learning rate" names ``lr``, not every knob whose
description mentions a learning rate). Size words just before a knob's mention
("a smaller learning rate", "reduce the warmup") say which way to move it.
Pure: no I/O, deterministic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from agents.pi.scoring import declared_variants
from bus.schema import Idea, Knob, TemplateSpec

_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?|[a-z][a-z0-9]*")
STOP = frozenset(
    "a an the of to on in and or for with as at by do does did is are be it its per after before from this that "
    "than then into over under when what which how whether can could would should will my our we i you "
    "only just try vary run test use set please also new idea ideas".split()
)
SMALLER = frozenset("smaller lower less reduce reduced reducing decrease decreased decreasing fewer shorter lowering low small narrower".split())
LARGER = frozenset("larger higher more increase increased increasing bigger longer raise raising high large greater wider".split())
_SIZE_WINDOW = 3  # words before a mention that may say which way to move it


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def tokens(text: str) -> list[str]:
    """The text's words and numbers, lower case, a plural's ``s`` dropped ("learning-rate" is two words)."""
    return [_stem(w) for w in _TOKEN.findall(text.lower())]


@dataclass(frozen=True)
class Mention:
    """Where a lever is named in the text: tokens ``start`` to ``end`` (exclusive), and how strongly."""

    kind: str  # knob, variant or metric
    name: str
    start: int
    end: int
    score: float
    how: str = "name"  # name (its name or initials) or description


def _part_matches(part: str, word: str) -> bool:
    return word == part or (len(part) >= 3 and word.startswith(part))


def _name_mentions(kind: str, name: str, words: list[str]) -> list[Mention]:
    parts = [_stem(p) for p in name.lower().split("_") if p]
    out = []
    for i in range(len(words) - len(parts) + 1):
        if all(_part_matches(p, words[i + j]) for j, p in enumerate(parts)):
            out.append(Mention(kind, name, i, i + len(parts), 2.0))
    if len(parts) > 1:
        for i, w in enumerate(words):
            if any(len(p) >= 3 and _part_matches(p, w) for p in parts):
                out.append(Mention(kind, name, i, i + 1, 2.0 / len(parts)))
    if len(parts) == 1 and 2 <= len(parts[0]) <= 4 and parts[0].isalpha():
        content = [i for i, w in enumerate(words) if w not in STOP]
        k = len(parts[0])
        for j in range(len(content) - k + 1):
            run = content[j : j + k]
            if run[-1] - run[0] == k - 1 and "".join(words[i][0] for i in run) == parts[0]:
                out.append(Mention(kind, name, run[0], run[-1] + 1, 2.0))
    return out


def _description_mentions(kind: str, name: str, description: str, words: list[str]) -> list[Mention]:
    clause = re.split(r"[,;(:]", description, maxsplit=1)[0]
    mine = [w for w in tokens(clause) if w not in STOP and not w[0].isdigit()]
    if len(mine) < 2:
        return []
    pairs = {(a, b) for a, b in zip(mine, mine[1:], strict=False)}
    content = [i for i, w in enumerate(words) if w not in STOP]
    hits = [(a, b) for a, b in zip(content, content[1:], strict=False) if (words[a], words[b]) in pairs]
    if not hits:
        return []
    share = len({words[i] for pair in hits for i in pair}) / len(set(mine))
    return [Mention(kind, name, a, b + 1, share, "description") for a, b in hits]


def mentions(text: str, spec: TemplateSpec) -> list[Mention]:
    """Every mention of a knob, variant or metric in the text, a mention inside a longer one's span dropped
    ("min_lr_ratio" does not also mention ``lr``)."""
    words = tokens(text)
    found: list[Mention] = []
    levers: list[tuple[str, str, str]] = [("knob", n, k.description) for n, k in spec.knobs.items()]
    levers += [("variant", n, summary) for n, summary in declared_variants(spec)]
    levers += [("metric", n, m.description) for n, m in spec.metrics.items()]
    for kind, name, description in levers:
        found += _name_mentions(kind, name, words) + _description_mentions(kind, name, description, words)

    def inside(m: Mention) -> bool:
        return any(o.start <= m.start and m.end <= o.end and (o.end - o.start) > (m.end - m.start) and o.name != m.name for o in found)

    return [m for m in found if not inside(m)]


def _focus(found: list[Mention], kinds: tuple[str, ...]) -> dict[str, float]:
    """Lever -> score (its best name mention plus its best description share), kept over half the best score."""
    name_part: dict[str, float] = {}
    desc_part: dict[str, float] = {}
    for m in found:
        if m.kind not in kinds:
            continue
        key = f"{m.kind}:{m.name}"
        bucket = desc_part if m.how == "description" else name_part
        bucket[key] = max(bucket.get(key, 0.0), m.score)
    scores = {k: name_part.get(k, 0.0) + desc_part.get(k, 0.0) for k in {*name_part, *desc_part}}
    top = max(scores.values(), default=0.0)
    return {k: s for k, s in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])) if s > top / 2}


@dataclass
class Focus:
    """What a text names, best first, and which way it asks each knob to move."""

    knobs: dict[str, float] = field(default_factory=dict)
    variants: dict[str, float] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    smaller: set[str] = field(default_factory=set)
    larger: set[str] = field(default_factory=set)
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # knob -> where the text names it

    @property
    def named(self) -> bool:
        """Whether the text names a knob or a variant (then ideas on anything else come only after them)."""
        return bool(self.knobs or self.variants)

    def score(self, idea: Idea) -> float:
        """How far inside the focus an idea is: its best-named knob or variant's score; 0 outside."""
        scores = [self.knobs.get(k, 0.0) for k in idea.changes]
        if idea.code is not None and idea.code.variant:
            scores.append(self.variants.get(idea.code.variant, 0.0))
        elif idea.code is not None:  # code written from a summary: inside when the summary names a focus lever
            words = set(tokens(idea.code.summary))
            scores += [s for n, s in {**self.knobs, **self.variants}.items() if set(tokens(n.replace("_", " "))) <= words]
        return max(scores, default=0.0)

    def wrong_way(self, idea: Idea, baseline: dict[str, Any]) -> int:
        """How many of the idea's changes go against the way the text asks (0: all go its way, or it asks none)."""
        n = 0
        for k, v in idea.changes.items():
            base = baseline.get(k)
            if not isinstance(v, (int, float)) or not isinstance(base, (int, float)) or isinstance(v, bool):
                continue
            if (k in self.smaller and v > base) or (k in self.larger and v < base):
                n += 1
        return n

    def order(self, ideas: list[Idea], baseline: dict[str, Any]) -> list[Idea]:
        """Ideas on the named levers first (best-named first, those moving the asked way first), then the rest;
        stable, so the caller's order (its priority) breaks ties."""
        return sorted(ideas, key=lambda i: (-self.score(i), self.wrong_way(i, baseline)))

    def describe(self) -> str:
        parts = []
        if self.knobs:
            ways = {k: " (smaller)" if k in self.smaller else " (larger)" if k in self.larger else "" for k in self.knobs}
            parts.append("knobs " + ", ".join(f"{k}{ways[k]}" for k in self.knobs))
        if self.variants:
            parts.append("variants " + ", ".join(self.variants))
        if self.metrics:
            parts.append("metrics " + ", ".join(self.metrics))
        return "; ".join(parts) or "nothing the template declares"


def read(text: str, spec: TemplateSpec) -> Focus:
    """The knobs, variants and metrics a direction or a note names, and the way it asks each knob to move."""
    found = mentions(text, spec)
    levers = _focus(found, ("knob", "variant"))
    metrics = _focus(found, ("metric",))
    focus = Focus(
        knobs={k.split(":", 1)[1]: s for k, s in levers.items() if k.startswith("knob:")},
        variants={k.split(":", 1)[1]: s for k, s in levers.items() if k.startswith("variant:")},
        metrics=[k.split(":", 1)[1] for k in metrics],
    )
    words = tokens(text)
    for m in found:
        if m.kind != "knob" or m.name not in focus.knobs:
            continue
        focus.spans.setdefault(m.name, []).append((m.start, m.end))
        before = set(words[max(0, m.start - _SIZE_WINDOW) : m.start])
        if before & SMALLER:
            focus.smaller.add(m.name)
        elif before & LARGER:
            focus.larger.add(m.name)
    return focus


def value_after(text: str, knob: Knob, spans: list[tuple[int, int]]) -> Any:
    """The first value the knob accepts written just after one of its mentions ("lr 0.001", "lr=1e-3",
    "the learning rate to 0.0003", "lr_schedule linear"), or None."""
    words = tokens(text)
    for _, end in spans:
        for w in words[end : end + 3]:
            value = _as_value(w, knob)
            if value is not None:
                return value
    return None


def _as_value(word: str, knob: Knob) -> Any:
    candidates: list[Any] = []
    if knob.type in ("float", "int") and word[0].isdigit():
        x = float(word)
        candidates = [int(x)] if knob.type == "int" and x == int(x) else [x]
    elif knob.type == "bool" and word in ("true", "false", "on", "off", "yes", "no"):
        candidates = [word in ("true", "on", "yes")]
    elif knob.type == "choice" or knob.choices:
        candidates = [c for c in knob.choices or [] if str(c).lower() == word]
    for c in candidates:
        try:
            return knob.validate_value(c)
        except ValueError:
            continue
    return None


def toward(knob: Knob, values: list[Any], base: Any, smaller: bool, larger: bool) -> list[Any]:
    """``values`` with those the text asks for first (below the baseline for "smaller", nearest first)."""
    if not (smaller or larger) or not isinstance(base, (int, float)) or isinstance(base, bool):
        return values

    def distance(v: Any) -> float:
        if knob.log and v > 0 and base > 0:
            return abs(math.log(v) - math.log(base))
        return abs(float(v) - float(base))

    asked = [v for v in values if (v < base if smaller else v > base)]
    return sorted(asked, key=distance) + [v for v in values if v not in asked]
