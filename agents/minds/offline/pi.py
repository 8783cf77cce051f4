"""The offline PI: ideas drawn from the template's declared knob space (autonomy level 1).

Each idea changes one knob to one of its candidate values and states a
hypothesis and how it would be falsified. Knobs marked ``fairness`` (compute,
data) are never proposed: changing them would make the baseline unfair. Co-PI
notes restrict the space ("only vary weight decay", "do not touch lr").
Deterministic for a seed.
"""

from __future__ import annotations

import random
import re
from typing import Any

from agents.minds.base import IdeaContext, NoteReading, ReviewContext
from bus.schema import BASELINE, CoPINote, Idea, ItemResponse, Knob, TemplateSpec, Usage

_ONLY = re.compile(r"\b(only|just|exclusively|solely|restrict|focus)\b", re.I)
_STOP = re.compile(r"\b(stop|cancel|abort|halt|end)\b.*\b(project|run|everything|now|it)\b|^\s*(stop|cancel|abort)\s*[.!]?\s*$", re.I)
_AVOID = re.compile(r"\b(don'?t|do not|never|avoid|stop|no longer|without|not)\b", re.I)


def candidate_values(knob: Knob) -> list[Any]:
    """The values a template declares worth trying: its candidates, else a choice knob's choices.

    A bare range is not enough: a value picked from it may be invalid for the
    code (4 heads must divide the width) or meaningless (evaluation cadence),
    and only the template's author knows which.
    """
    if knob.candidates:
        values = list(knob.candidates)
    elif knob.type == "choice":
        values = list(knob.choices or [])
    elif knob.type == "bool":
        values = [not knob.default]
    else:
        values = []
    out = []
    for v in values:
        v = knob.validate_value(v)
        if v != knob.default and v not in out:
            out.append(v)
    return out


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", str(value).replace(".", "p").replace("-", "m"))[:12] or "v"


def held_equal(name: str, knob: Knob) -> str:
    """What the hypothesis may claim stays fixed: never "the compute" when the knob itself changes it."""
    if knob.changes_compute:
        return f"all other settings held equal; {name} changes the compute per run, so any gain is not at equal compute"
    return "all other settings and the compute budget held equal"


def knob_mentions(text: str, knobs: list[str]) -> list[str]:
    low = text.lower()
    return [k for k in knobs if k.lower() in low or k.replace("_", " ").lower() in low]


class OfflinePIMind:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self.usage = Usage()

    async def propose_ideas(self, ctx: IdeaContext) -> list[Idea]:
        spec = ctx.spec
        allowed = ctx.constraints.get("allowed_knobs")
        forbidden = set(ctx.constraints.get("forbidden_knobs", []))
        tried = {(k, repr(v)) for idea in ctx.previous for k, v in idea.changes.items()}
        metric = spec.primary_metric
        direction = spec.metrics[metric].direction
        per_knob: dict[str, list[Any]] = {}
        for name, knob in spec.knobs.items():
            if knob.fairness or name in forbidden or (allowed is not None and name not in allowed):
                continue
            base = spec.baseline.get(name, knob.default)
            values = [v for v in candidate_values(knob) if v != base and (name, repr(v)) not in tried]
            if values:
                per_knob[name] = values
        rng = random.Random(ctx.seed * 7919 + self.seed)
        order = sorted(per_knob)
        rng.shuffle(order)
        for name in order:
            rng.shuffle(per_knob[name])
        # Round-robin over knobs, so a wave explores different levers.
        picks: list[tuple[str, Any]] = []
        while len(picks) < ctx.n and any(per_knob.values()):
            for name in order:
                if per_knob[name] and len(picks) < ctx.n:
                    picks.append((name, per_knob[name].pop(0)))
        return [self._idea(spec, name, value, metric, direction, ctx.direction) for name, value in picks]

    def _idea(self, spec: TemplateSpec, name: str, value: Any, metric: str, direction: str, research_direction: str) -> Idea:
        knob = spec.knobs[name]
        base = spec.baseline.get(name, knob.default)
        better = "higher" if direction == "higher" else "lower"
        what = knob.description or name.replace("_", " ")
        return Idea(
            id=f"{name.replace('_', '-')}-{_slug(value)}"[:48],
            title=f"{name} = {value} (baseline {base})",
            hypothesis=(
                f"Setting {name} to {value} instead of {base} gives a {better} {metric} than the baseline "
                f"on {spec.name}, {held_equal(name, knob)}."
            ),
            falsification=(
                f"Rejected if, over at least {spec.seeds} seeds per arm, the mean {metric} is not {better} than the "
                f"baseline's with p < 0.05 after Holm's correction over every comparison of the paper "
                f"(a paired t-test when both arms run the same seeds)."
            ),
            changes={name: value},
            rationale=(
                f"{name} is a declared lever of this template; {research_direction.strip() or 'the direction leaves the choice open'}."
            ),
            interestingness=6,
            feasibility=9,
            novelty=4,
        )

    async def read_note(self, note: CoPINote, spec: TemplateSpec) -> NoteReading:
        knobs = list(spec.knobs)
        named = knob_mentions(note.text, knobs)
        if not named and _STOP.search(note.text):
            return NoteReading(understood="stopping the project now: running jobs are cancelled and no paper is written", constraints={"stop": True})
        if named and _ONLY.search(note.text):
            return NoteReading(understood=f"from now on, new ideas vary only {', '.join(named)}", constraints={"allowed_knobs": named})
        if named and _AVOID.search(note.text):
            return NoteReading(understood=f"from now on, new ideas leave {', '.join(named)} alone", constraints={"forbidden_knobs": named})
        return NoteReading(
            understood="not understood: the offline PI recognises only 'only vary <knob>', 'do not touch <knob>' and 'stop'; "
            "the note changes nothing and is reported in the paper's appendix",
            parsed=False,
        )

    async def answer_review(self, ctx: ReviewContext) -> list[ItemResponse]:
        out = []
        runs_left = ctx.runs_left
        for item in ctx.items:
            if item.kind == "more_seeds":
                if runs_left >= 2:
                    runs_left -= 2
                    arms = "the baseline" if item.target == BASELINE else f"{item.target} and the baseline"
                    out.append(ItemResponse(item_id=item.id, action="act", text=f"running more seeds for {arms}"))
                else:
                    out.append(ItemResponse(item_id=item.id, action="rebut", text=f"the run budget is spent ({ctx.runs_left} runs left); the limitation is stated"))
            elif item.kind == "add_baseline":
                have = [c for c in ctx.report.comparisons]
                out.append(ItemResponse(
                    item_id=item.id,
                    action="rebut" if have else "act",
                    text="every idea is compared with the template's baseline over the same seeds" if have else "adding the baseline",
                ))
            elif item.kind in ("rewrite_section", "add_limitation", "add_citation"):
                out.append(ItemResponse(item_id=item.id, action="act", text=f"the writer revises the paper: {item.text}"))
            else:
                out.append(ItemResponse(item_id=item.id, action="rebut", text="out of scope for this template's declared search space; noted as a limitation"))
        return out


def make(seed: int, config: dict[str, Any]) -> OfflinePIMind:
    return OfflinePIMind(seed)
