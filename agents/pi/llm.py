"""The PI's llm mind: ideas with reflection rounds, co-PI notes read into constraints, answers to reviews.

Ideas may only change the template's declared knobs (minus fairness knobs and
whatever the co-PI ruled out): the check rejects anything else and the model
gets the reason back, so the engineer never receives an idea it cannot run.
An idea may also (or instead) change the code: its summary goes to the
engineer, who implements it by guarded edits.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from agents.minds.base import IdeaContext, NoteReading, ReviewContext
from agents.minds.llm.common import LLMMind, knob_lines, report_brief, show
from agents.minds.llm.errors import InvalidAnswer
from agents.minds.llm.schemas import IdeaBatch, IdeaDraft, ItemAnswers, NoteAnswer, as_dict
from agents.pi.direction import Focus
from agents.pi.direction import read as read_focus
from bus.schema import CodeChange, CoPINote, Idea, IdeaOutcome, ItemResponse, TemplateError, TemplateSpec

RUN_ITEMS = ("more_seeds", "add_baseline")  # revision items that cost runs
ARCHIVE_SHOWN = 40  # the archive's most recent records in the prompt


def outcome_brief(o: IdeaOutcome) -> dict[str, Any]:
    """An outcome as the prompt shows it: only what is known, rounded."""
    out: dict[str, Any] = {"id": o.idea_id, "changes": o.changes, "status": o.status}
    if o.code is not None:
        out["code"] = o.code.variant or o.code.summary
    if o.improvement is not None:
        out["improvement"] = round(o.improvement, 4)
    if o.effect_size is not None:
        out["effect"] = round(o.effect_size, 2)
    if o.ci_low is not None and o.ci_high is not None:
        out["ci"] = [round(o.ci_low, 4), round(o.ci_high, 4)]
    if o.p_adjusted is not None:
        out["p_adjusted"] = round(o.p_adjusted, 4)
    if o.replicated is not None:
        out["replicated"] = o.replicated
    if o.reason:
        out["reason"] = o.reason[:200]
    return out


def allowed_knobs(spec: TemplateSpec, constraints: dict[str, Any]) -> list[str]:
    only = constraints.get("allowed_knobs")
    forbidden = set(constraints.get("forbidden_knobs", []))
    return [k for k, knob in spec.knobs.items() if not knob.fairness and k not in forbidden and (only is None or k in only)]


def idea_id(draft: IdeaDraft) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", draft.title.lower()).strip("-")[:32].strip("-") or "idea"
    key: list[Any] = [draft.title, as_dict(draft.changes)] + ([draft.code.strip()] if draft.code.strip() else [])
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return f"{slug}-{digest[:6]}"


class IdeaRules:
    """What makes a batch of ideas usable for this template, this co-PI, this direction and this history.

    ``profile`` is the project's: an idea is compared with the baseline as it runs under it
    (``TemplateSpec.effective``), so under ``--fast`` char_lm's lr 0.003 is no change.
    """

    def __init__(self, spec: TemplateSpec, allowed: list[str], previous: list[Idea], archived: list[IdeaOutcome] | None = None,
                 profile: str | None = None, direction: str = "") -> None:
        self.spec, self.allowed = spec, allowed
        self.base = spec.effective(profile or None)
        self.profile_name = profile or None
        self.focus = read_focus(direction, spec)
        # This project's ideas, and (unless repeats are asked for) what earlier projects tried (the archive).
        self.tried = [self.key(i.changes, i.code.summary if i.code else "") for i in previous] + [
            self.key(o.changes, o.code.summary if o.code else "") for o in (archived or [])
        ]

    @staticmethod
    def key(changes: dict[str, Any], code: str) -> str:
        return json.dumps([changes, " ".join(code.lower().split())], sort_keys=True, default=str)

    def coerce(self, draft: IdeaDraft) -> dict[str, Any]:
        changes = as_dict(draft.changes)
        if len(changes) != len(draft.changes):
            raise InvalidAnswer(f"idea {draft.title!r} sets the same knob twice")
        bad = [k for k in changes if k not in self.allowed]
        if bad:
            raise InvalidAnswer(f"idea {draft.title!r} changes {bad}, not allowed; change only these knobs: {self.allowed}")
        try:
            return self.spec.check_overrides(changes, self.profile_name)
        except TemplateError as e:
            raise InvalidAnswer(f"idea {draft.title!r}: {e}") from None

    def outside(self, draft: IdeaDraft, changes: dict[str, Any]) -> bool:
        """Whether the idea touches none of the knobs or variants the direction names (False when it names none)."""
        code = CodeChange(summary=draft.code.strip()) if draft.code.strip() else None
        probe = Idea(id="probe", title=draft.title, hypothesis="-", falsification="-", changes=changes, code=code)
        return self.focus.named and self.focus.score(probe) == 0

    def __call__(self, batch: IdeaBatch) -> None:
        seen = list(self.tried)
        for draft in batch.ideas:
            changes = self.coerce(draft)
            # A code idea tests its code even with no knob set; a knob-only idea must move a knob.
            if not draft.code.strip() and all(self.base[k] == v for k, v in changes.items()):
                shown = {k: self.base[k] for k in changes}
                raise InvalidAnswer(f"idea {draft.title!r} sets every knob to the value the baseline runs with ({shown}) and changes no code: it tests nothing")
            if self.outside(draft, changes) and not draft.outside_direction.strip():
                raise InvalidAnswer(
                    f"idea {draft.title!r} changes none of what the research direction names ({self.focus.describe()}): "
                    "change those, or say in outside_direction why this idea is worth a run all the same"
                )
            key = self.key(changes, draft.code)
            if key in seen:
                raise InvalidAnswer(f"idea {draft.title!r} repeats the changes {changes}, already proposed; propose different changes")
            seen.append(key)


class LLMPIMind(LLMMind):
    role = "pi"

    async def propose_ideas(self, ctx: IdeaContext) -> list[Idea]:
        spec = ctx.spec
        allowed = allowed_knobs(spec, ctx.constraints)
        if not allowed and spec.knobs:  # the co-PI's notes ruled out every knob; a template with none (AI Scientist) takes code ideas
            return []
        archived = [] if ctx.repeat_ok else [r.outcome for r in ctx.prior]
        rules = IdeaRules(spec, allowed, ctx.previous, archived, ctx.profile, ctx.direction)
        conv = self.client.conversation("propose_ideas", self.system, IdeaBatch)
        batch = await conv.ask(self._idea_prompt(spec, ctx, allowed), rules)
        rounds = self.client.config.reflection_rounds
        for r in range(1, rounds + 1):
            if batch.done:
                break
            batch = await conv.ask(
                f"Reflection round {r} of {rounds}. Critique each idea for novelty, feasibility, interestingness and "
                "whether the metric can falsify it; then give the improved full list of ideas. If you would not change "
                "them, repeat them unchanged and set done to true.",
                rules,
            )
        return [self._idea(d, rules) for d in batch.ideas[: ctx.n]]

    def _idea_prompt(self, spec: TemplateSpec, ctx: IdeaContext, allowed: list[str]) -> str:
        metric = spec.primary_metric
        history = [outcome_brief(ctx.outcomes[i.id]) if i.id in ctx.outcomes else {"id": i.id, "changes": i.changes, "status": "pending"} for i in ctx.previous]
        archive = [{"project": r.project, **outcome_brief(r.outcome)} for r in ctx.prior[-ARCHIVE_SHOWN:]]
        repeats = (
            "The direction or a co-PI note asks for repeats: you may propose an idea tried before."
            if ctx.repeat_ok else "Do not repeat any idea tried in this project or in earlier ones (same changes, same code)."
        )
        return "\n".join([
            f"Template {spec.name}: {spec.title}. Task: {spec.task}",
            f"Primary metric: {metric} ({spec.metrics[metric].direction} is better).",
            f"Research direction from the co-PI: {ctx.direction or '(none given)'}",
            self._direction_rule(read_focus(ctx.direction, spec)),
            f"Knobs you may change (each idea sets one or a few of them, or changes the code as below); the baseline values are "
            f"the ones the runs use under profile {ctx.profile or 'default'}:\n{knob_lines(spec, allowed, ctx.profile)}"
            if allowed else
            "This template declares no knobs (its hyper-parameters are in its code): every idea changes the code, as below, "
            "with no knob changes.",
            f"Co-PI notes (take them into account): {show(ctx.notes) if ctx.notes else 'none'}",
            f"Constraints in force: {json.dumps(ctx.constraints) if ctx.constraints else 'none'}",
            "Outcomes are on the primary metric: improvement > 0 is better whatever the direction; effect is Hedges' g; "
            "ci is the bootstrap CI of the improvement; p_adjusted is Holm-corrected (absent: an interim reading of the runs).",
            f"Ideas already tried in this project, with outcomes: {json.dumps(history, default=str) if history else 'none'}",
            f"Earlier projects on this template (the idea archive), with outcomes: {json.dumps(archive, default=str) if archive else 'none'}",
            f"{repeats} Build on what worked: values near a winning one, levers not yet tried; avoid what clearly failed.",
            f"Propose {ctx.n} idea(s). Each: a title, a falsifiable hypothesis about {metric}, how it would be falsified, "
            "the knob changes, a rationale, and 1-10 scores for interestingness, feasibility and novelty. "
            "An idea may instead change the experiment's code (a new function: a merge algorithm, a regulariser, a "
            "schedule): then say in 'code' what to implement, precisely enough for an engineer to write it, and list only "
            "the knob changes it also needs (possibly none); leave 'code' empty for a knob-only idea. "
            "Think first in 'thoughts'. Set done to true only if reflecting further would not improve the ideas.",
        ])

    @staticmethod
    def _direction_rule(focus: Focus) -> str:
        if not focus.named:
            return "The direction names no particular knob: any allowed knob is in scope."
        return (
            f"The direction names {focus.describe()}: propose ideas on those first. An idea that changes none of them "
            "must say in outside_direction why it is worth a run all the same, or it is refused."
        )

    def _idea(self, draft: IdeaDraft, rules: IdeaRules) -> Idea:
        return Idea(
            id=idea_id(draft),
            title=draft.title,
            hypothesis=draft.hypothesis,
            falsification=draft.falsification,
            changes=rules.coerce(draft),
            code=CodeChange(summary=draft.code.strip()) if draft.code.strip() else None,
            rationale=draft.rationale,
            interestingness=draft.interestingness,
            feasibility=draft.feasibility,
            novelty=draft.novelty,
            outside_direction=draft.outside_direction.strip() if rules.outside(draft, rules.coerce(draft)) else "",
        )

    async def read_note(self, note: CoPINote, spec: TemplateSpec) -> NoteReading:
        template = spec
        knobs = list(template.knobs)

        def check(answer: NoteAnswer) -> None:
            unknown = [k for k in [*answer.allowed_knobs, *answer.forbidden_knobs] if k not in knobs]
            if unknown:
                raise InvalidAnswer(f"unknown knobs {unknown}; the template's knobs are {knobs}")

        answer = await self.ask("read_note", [
            f"The co-PI sent this note: {note.text!r}",
            f"The template's knobs:\n{knob_lines(template, baseline=False)}",
            "Say in one sentence what you will do about it ('understood'). If the note restricts which knobs new "
            "ideas may change, list them in allowed_knobs; if it rules knobs out, list them in forbidden_knobs; "
            "otherwise leave both empty. Set stop to true only if the note asks to stop, cancel or abort the whole "
            "project now (running jobs are cancelled and no paper is written).",
        ], NoteAnswer, check)
        constraints: dict[str, Any] = {}
        if answer.allowed_knobs:
            constraints["allowed_knobs"] = answer.allowed_knobs
        if answer.forbidden_knobs:
            constraints["forbidden_knobs"] = answer.forbidden_knobs
        if answer.stop:
            constraints["stop"] = True
        return NoteReading(understood=answer.understood, constraints=constraints)

    async def answer_review(self, ctx: ReviewContext) -> list[ItemResponse]:
        items = {i.id: i for i in ctx.items}

        def check(answer: ItemAnswers) -> None:
            ids = [r.item_id for r in answer.responses]
            missing, extra = sorted(set(items) - set(ids)), sorted(set(ids) - set(items))
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if missing or extra or dupes:
                raise InvalidAnswer(f"answer every item exactly once: missing {missing}, unknown {extra}, repeated {dupes}")
            if ctx.runs_left <= 0:
                costly = [r.item_id for r in answer.responses if r.action == "act" and items[r.item_id].kind in RUN_ITEMS]
                if costly:
                    raise InvalidAnswer(f"no experiment runs are left, so items {costly} cannot be acted on: rebut them")

        if not items:
            return []
        answer = await self.ask("answer_review", [
            f"The reviewers ask for these revisions: {show(ctx.items)}",
            f"Analysis so far: {report_brief(ctx.report)}",
            f"Experiment runs left: {ctx.runs_left}; revision rounds left: {ctx.rounds_left}.",
            "For each item decide: act (we will do it) or rebut (explain why not, with evidence). Items of kind "
            "more_seeds or add_baseline need runs.",
        ], ItemAnswers, check)
        return answer.responses


def make(seed: int, config: dict[str, Any]) -> LLMPIMind:
    return LLMPIMind(seed, config)
