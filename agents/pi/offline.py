"""The offline PI: ideas drawn from the template's declared knob space (autonomy level 1).

Each idea changes one knob to one of its candidate values (or switches in a
code variant the template declares) and states a hypothesis and how it would
be falsified. Later waves learn from the outcomes so far and from the idea
archive: values next to the best one come first, what was tried elsewhere is
not repeated (see ``propose_ideas`` and ``scoring.Scorer``). Knobs marked ``fairness`` (compute,
data) are never proposed: changing them would make the baseline unfair. Co-PI
notes restrict the space ("only vary weight decay", "do not touch lr").
Deterministic for a seed.
"""

from __future__ import annotations

import random
import re
from typing import Any

from agents.minds.base import IdeaContext, NoteReading, ReviewContext
from agents.pi.scores import priority
from agents.pi.scoring import Scorer, declared_variants
from bus.schema import BASELINE, CodeChange, CoPINote, Idea, ItemResponse, Knob, TemplateSpec, Usage, signature_of

_ONLY = re.compile(r"\b(only|just|exclusively|solely|restrict|focus)\b", re.I)
_STOP = re.compile(r"\b(stop|cancel|abort|halt|end)\b.*\b(project|run|everything|now|it)\b|^\s*(stop|cancel|abort)\s*[.!]?\s*$", re.I)
_REPEAT = re.compile(r"\b(repeat|re-?run|again|replicate|reproduce)\b", re.I)
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


def _rejected_if(spec: TemplateSpec, metric: str, better: str, then: str) -> str:
    """The falsification every offline idea states (Holm over the paper's comparisons), ``then`` what this kind adds."""
    return (
        f"Rejected if, over at least {spec.seeds} seeds per arm, the mean {metric} is not {better} than the "
        f"baseline's with p < 0.05 after Holm's correction over every comparison of the paper{then}"
    )


def _direction_or_open(research_direction: str) -> str:
    return research_direction.strip() or "the direction leaves the choice open"


def knob_mentions(text: str, knobs: list[str]) -> list[str]:
    low = text.lower()
    return [k for k in knobs if k.lower() in low or k.replace("_", " ").lower() in low]


class OfflinePIMind:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self.usage = Usage()

    async def propose_ideas(self, ctx: IdeaContext) -> list[Idea]:
        """The wave's ideas, best first by the PI's priority: a seeded local search over the declared space.

        Candidates are every declared value of every allowed knob, every
        template-declared code variant, and, once some value beat the baseline,
        values next to that best value (``Scorer.refinements``: halfway to its
        known neighbours or one step past them, on an int knob's grid or declared
        choices, within the knob's bounds), each kept only if the run's configuration
        still holds the template's relations (``divides``). Ideas this project proposed are never repeated; ideas another
        project tried (the archive) only when ``ctx.repeat_ok``. Each is scored
        from the evidence (see ``Scorer``) and the top ``ctx.n`` returned, ties
        broken by a generator seeded with the project's seed and wave.
        """
        spec = ctx.spec
        allowed = ctx.constraints.get("allowed_knobs")
        forbidden = set(ctx.constraints.get("forbidden_knobs", []))
        own = {signature_of(i) for i in ctx.previous}
        elsewhere = {r.signature for r in ctx.prior}
        scorer = Scorer(ctx)
        metric = spec.primary_metric
        direction = spec.metrics[metric].direction
        ideas: list[Idea] = []
        seen: set[str] = set()

        def consider(idea: Idea) -> None:
            sig = signature_of(idea)
            if sig in own or sig in seen or (sig in elsewhere and not ctx.repeat_ok):
                return
            seen.add(sig)
            ideas.append(scorer.score(idea))

        # The run's configuration but the idea's one knob: a value breaking a declared relation
        # (heads that must divide this profile's width) would only fail as a job.
        around = {**spec.profile(ctx.profile or None).overrides, **spec.baseline}
        for name, knob in spec.knobs.items():
            if knob.fairness or name in forbidden or (allowed is not None and name not in allowed):
                continue
            base = spec.baseline.get(name, knob.default)
            for value in [*candidate_values(knob), *scorer.refinements(name, knob, base)]:
                if value != base and not spec.broken_relation({**around, name: value}):
                    consider(self._idea(spec, name, value, metric, direction, ctx.direction))
        if allowed is None:
            for name, summary in declared_variants(spec):
                consider(self._variant_idea(spec, name, summary, metric, direction, ctx.direction))
        rng = random.Random(ctx.seed * 7919 + self.seed)
        rng.shuffle(ideas)
        ideas.sort(key=priority, reverse=True)  # stable: the seeded order breaks ties
        return ideas[: ctx.n]

    def _variant_idea(self, spec: TemplateSpec, name: str, summary: str, metric: str, direction: str, research_direction: str) -> Idea:
        better = "higher" if direction == "higher" else "lower"
        return Idea(
            id=f"variant-{_slug(name)}"[:48],
            title=f"code variant {name} instead of the baseline's code",
            hypothesis=(
                f"Switching the experiment's code to the template's variant {name} ({summary or 'declared by the template'}) "
                f"gives a {better} {metric} than the baseline on {spec.name}, all knobs held at the baseline's values."
            ),
            falsification=_rejected_if(spec, metric, better, "; the compute each run used is compared with the baseline's."),
            changes={},
            code=CodeChange(variant=name, summary=summary or f"the template's {name} variant"),
            rationale=f"{name} is a code variant the template declares; {_direction_or_open(research_direction)}.",
        )

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
            falsification=_rejected_if(spec, metric, better, " (a paired t-test when both arms run the same seeds)."),
            changes={name: value},
            rationale=(
                f"{name} ({what}) is a declared lever of this template; {_direction_or_open(research_direction)}."
            ),
        )

    async def read_note(self, note: CoPINote, spec: TemplateSpec) -> NoteReading:
        knobs = list(spec.knobs)
        named = knob_mentions(note.text, knobs)
        if not named and _STOP.search(note.text):
            return NoteReading(understood="stopping the project now: running jobs are cancelled and no paper is written", constraints={"stop": True})
        if named and _ONLY.search(note.text):
            return NoteReading(understood=f"from now on, new ideas vary only {', '.join(named)}", constraints={"allowed_knobs": named})
        if _REPEAT.search(note.text) and not _AVOID.search(note.text):
            return NoteReading(understood="from now on, ideas tried in earlier projects may be proposed again", constraints={"repeat": True})
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
                    text = f"the run budget is spent ({ctx.runs_left} runs left); the limitation is stated"
                    out.append(ItemResponse(item_id=item.id, action="rebut", text=text))
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
