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
from agents.pi import copi
from agents.pi.baseline import candidate_values as candidate_values
from agents.pi.baseline import effective, same_as_baseline
from agents.pi.direction import Focus, toward
from agents.pi.direction import read as read_focus
from agents.pi.scores import priority
from agents.pi.scoring import Scorer, declared_variants
from bus.schema import BASELINE, CodeChange, CoPINote, Idea, ItemResponse, Knob, TemplateSpec, Usage, signature_of

_ONLY = re.compile(r"\b(only|just|exclusively|solely|restrict|focus)\b", re.I)
_STOP = re.compile(r"\b(stop|cancel|abort|halt|end)\b.*\b(project|run|everything|now|it)\b|^\s*(stop|cancel|abort)\s*[.!]?\s*$", re.I)
_REPEAT = re.compile(r"\b(repeat|re-?run|again|replicate|reproduce)\b", re.I)
_AVOID = re.compile(r"\b(don'?t|do not|never|avoid|stop|no longer|without|not)\b", re.I)


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


def knob_mentions(text: str, spec: TemplateSpec) -> list[str]:
    """The knobs a note names, by name or by description ("the learning rate" is ``lr``), best-named first."""
    return list(read_focus(text, spec).knobs)


class OfflinePIMind:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self.usage = Usage()

    async def propose_ideas(self, ctx: IdeaContext) -> list[Idea]:
        """The wave's ideas, the direction's first, then best first by the PI's priority: a seeded local search.

        Candidates are every declared value of every allowed knob (and its declared
        default when the profile moved the baseline off it), every template-declared
        code variant, and, once some value beat the baseline, values next to that best
        value (``Scorer.refinements``), each kept only if the run's configuration still
        holds the template's relations (``divides``). A value the baseline already runs
        with under the project's profile (``TemplateSpec.effective``) is never one.
        Ideas this project proposed are never repeated; ideas another project tried (the
        archive) only when ``ctx.repeat_ok``. Each is scored from the evidence (see
        ``Scorer``), ties broken by a generator seeded with the project's seed and wave;
        then ideas on the knobs and variants the direction names come first (those
        moving the way it asks first), and the rest, after them, say why in ``outside_direction``.
        """
        spec = ctx.spec
        base = effective(spec, ctx.profile)
        focus = read_focus(ctx.direction, spec)
        scorer = Scorer(ctx)
        ideas = self._candidates(ctx, base, focus, scorer)
        rng = random.Random(ctx.seed * 7919 + self.seed)
        rng.shuffle(ideas)
        ideas.sort(key=priority, reverse=True)  # stable: the seeded order breaks ties
        ideas = focus.order(ideas, base)
        return [outside(i, focus) for i in ideas[: ctx.n]]

    def _candidates(self, ctx: IdeaContext, base: dict[str, Any], focus: Focus, scorer: Scorer) -> list[Idea]:
        """Every idea the declared space offers now, scored, none the baseline already is, none tried before."""
        spec = ctx.spec
        allowed = ctx.constraints.get("allowed_knobs")
        forbidden = set(ctx.constraints.get("forbidden_knobs", []))
        own = {signature_of(i) for i in ctx.previous}
        elsewhere = {r.signature for r in ctx.prior}
        metric = spec.primary_metric
        better = spec.metrics[metric].direction
        ideas: list[Idea] = []
        seen: set[str] = set()

        def consider(idea: Idea) -> None:
            sig = signature_of(idea)
            if sig in own or sig in seen or (sig in elsewhere and not ctx.repeat_ok) or same_as_baseline(idea, base):
                return
            seen.add(sig)
            ideas.append(scorer.score(idea))

        for name, knob in spec.knobs.items():
            if knob.fairness or name in forbidden or (allowed is not None and name not in allowed):
                continue
            values = [*candidate_values(knob, base[name]), *scorer.refinements(name, knob, base[name])]
            for value in toward(knob, values, base[name], name in focus.smaller, name in focus.larger):
                # The run's configuration but the idea's one knob: a value breaking a declared relation
                # (heads that must divide this profile's width) would only fail as a job.
                if value != base[name] and not spec.broken_relation({**base, name: value}):
                    consider(self._idea(spec, base, name, value, metric, better, ctx.direction))
        if allowed is None:
            for name, summary in declared_variants(spec):
                consider(self._variant_idea(spec, name, summary, metric, better, ctx.direction))
        return ideas

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

    def _idea(self, spec: TemplateSpec, baseline: dict[str, Any], name: str, value: Any, metric: str, direction: str,
              research_direction: str) -> Idea:
        knob = spec.knobs[name]
        base = baseline[name]
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
        named = knob_mentions(note.text, spec)
        if not named and _STOP.search(note.text):
            return NoteReading(understood="stopping the project now: running jobs are cancelled and no paper is written", constraints={"stop": True})
        if named and _ONLY.search(note.text):
            return NoteReading(understood=f"from now on, new ideas vary only {', '.join(named)}", constraints={"allowed_knobs": named})
        if _REPEAT.search(note.text) and not _AVOID.search(note.text):
            return NoteReading(understood="from now on, ideas tried in earlier projects may be proposed again", constraints={"repeat": True})
        if named and _AVOID.search(note.text):
            return NoteReading(understood=f"from now on, new ideas leave {', '.join(named)} alone", constraints={"forbidden_knobs": named})
        request = copi.read(note.text, spec)
        if not request.empty:
            return NoteReading(understood=request.describe())
        return NoteReading(
            understood="not understood: the offline PI recognises only 'only vary <knob>', 'try <knob> <value>', "
            "'do not touch <knob>', 'raise runs to <N>' and 'stop'; "
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
                    more = f"up to {item.seeds} seeds per arm" if item.seeds else "more seeds"
                    out.append(ItemResponse(item_id=item.id, action="act", text=f"running {arms} with {more}"))
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


def outside(idea: Idea, focus: Focus) -> Idea:
    """The idea, saying why it is proposed though the direction names other levers (unchanged when inside, or
    when the direction names none)."""
    if not focus.named or focus.score(idea) > 0:
        return idea
    why = (
        f"outside the direction, which names {focus.describe()}: every idea on those that this template "
        "declares is proposed already, ruled out by the co-PI, or the baseline's own value"
    )
    return idea.model_copy(update={"outside_direction": why})


def make(seed: int, config: dict[str, Any]) -> OfflinePIMind:
    return OfflinePIMind(seed)
