"""What a co-PI note asks the PI to do, read from its words (whatever mind reads the note).

- ``knob=value``, "try lr 0.001", "the learning rate to 3e-4": a run with those values;
- "only vary the learning rate", "try the warmup": a run on that knob (its next untried
  declared value, the way the note asks: "a smaller lr" goes below the baseline);
- "raise runs to 18": a bigger run budget, within the project's hard limit.

Knobs are matched by name and description as for the direction (``agents.pi.direction``).
A note that rules a knob out ("do not touch lr") asks for no run. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agents.pi.direction import read as read_focus
from agents.pi.direction import value_after
from bus.schema import TemplateSpec

ONLY = re.compile(r"\b(only|just|exclusively|solely|restrict|focus)\b", re.I)
AVOID = re.compile(r"\b(don'?t|do not|never|avoid|no longer|without|not)\b", re.I)
_VARY = re.compile(r"\b(try|vary|varying|run|test|explore|sweep|change|compare|schedule)\b", re.I)
_RAISE = re.compile(r"\b(raise|increase|set|bump|extend|allow)\b[^.;]*?\bruns?\b[^.;\d]*?\b(?:to\s+)?(\d+)\b", re.I)


@dataclass
class Request:
    """What a note asks for besides constraints: a run (values, or knobs to vary) and a bigger run budget."""

    changes: dict[str, Any] = field(default_factory=dict)  # knob -> value the co-PI named
    knobs: list[str] = field(default_factory=list)  # knobs to vary with no value named (the PI picks the next one)
    smaller: set[str] = field(default_factory=set)
    larger: set[str] = field(default_factory=set)
    only: bool = False
    raise_runs: int | None = None

    @property
    def wants_run(self) -> bool:
        return bool(self.changes or self.knobs)

    @property
    def empty(self) -> bool:
        return not self.wants_run and self.raise_runs is None

    def describe(self) -> str:
        parts = []
        if self.raise_runs is not None:
            parts.append(f"raise the run budget to {self.raise_runs}")
        if self.changes:
            parts.append("a run with " + ", ".join(f"{k}={v!r}" for k, v in self.changes.items()))
        elif self.knobs:
            parts.append("a run varying " + ", ".join(self.knobs))
        return "; ".join(parts)


def read(text: str, spec: TemplateSpec) -> Request:
    """The run and the budget a note asks for (an empty Request when it asks neither)."""
    req = Request(only=bool(ONLY.search(text)))
    if m := _RAISE.search(text):
        req.raise_runs = int(m.group(2))
        text = text[: m.start()] + text[m.end():]  # "raise runs to 18" names no knob value
    if AVOID.search(text):
        return req
    focus = read_focus(text, spec)
    req.smaller, req.larger = focus.smaller, focus.larger
    for name in focus.knobs:
        value = value_after(text, spec.knobs[name], focus.spans.get(name, []))
        if value is not None:
            req.changes[name] = value
    if not req.changes and focus.knobs and (req.only or _VARY.search(text)):
        req.knobs = list(focus.knobs)[:1]
    return req
