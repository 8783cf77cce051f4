"""The PI learns from results: outcomes in the idea context, the archive across projects, scores that rank ideas."""

from __future__ import annotations

from typing import Any

import pytest

from agents.minds.base import IdeaContext
from agents.pi.offline import OfflinePIMind
from agents.pi.scores import FLOOR, priority, rank
from agents.pi.state import ProjectState
from agents.pi.workflow import PI, PIContext
from agents.templates import load
from bus.schema import (
    AnalysisDone,
    AnalysisReport,
    ArchiveRecord,
    Budget,
    CodeChange,
    Comparison,
    CoPINote,
    Envelope,
    ExperimentResult,
    Idea,
    IdeaOutcome,
    NoveltyVerdict,
    StartProject,
    signature_of,
)
from tests.fakes import TOY_SPEC, MemoryStore
from tests.unit.test_pi import run_record

_, GROKKING = load("grokking")


def outcome(idea: Idea, improvement: float) -> IdeaOutcome:
    return IdeaOutcome(
        idea_id=idea.id, changes=idea.changes, status="better" if improvement > 0 else "worse",
        improvement=improvement, effect_size=improvement * 10, ci_low=improvement - 0.01, ci_high=improvement + 0.01, source="runs",
    )


async def waves(results: dict[str, float]) -> tuple[list[Idea], list[Idea]]:
    mind = OfflinePIMind(0)
    first = await mind.propose_ideas(IdeaContext(spec=GROKKING, direction="", n=4, seed=1))
    outcomes = {i.id: outcome(i, results.get(i.id, -0.05)) for i in first}
    second = await mind.propose_ideas(IdeaContext(spec=GROKKING, direction="", previous=first, outcomes=outcomes, n=3, seed=2))
    return first, second


async def test_the_offline_pis_second_wave_depends_on_the_first_waves_results() -> None:
    first, _ = await waves({})
    assert len(first) == 4 and all(i.interestingness is None for i in first)  # no evidence yet: not scored
    # Two float knobs: the local search refines them between declared values (int knobs: see the test below).
    a, b = [i for i in first if GROKKING.knobs[next(iter(i.changes))].type == "float"][:2]
    _, wave_a = await waves({a.id: 0.2})
    _, wave_b = await waves({b.id: 0.2})
    assert [i.id for i in wave_a] != [i.id for i in wave_b]
    # Each second wave searches next to its own winner first, with the highest interestingness.
    for winner, wave in ((a, wave_a), (b, wave_b)):
        [knob] = winner.changes
        assert knob in wave[0].changes and wave[0].interestingness is not None and wave[0].interestingness >= 7
    # Deterministic: the same results give the same wave.
    _, again = await waves({a.id: 0.2})
    assert [i.model_dump() for i in again] == [i.model_dump() for i in wave_a]
    # Nothing of the first wave comes back.
    assert not {signature_of(i) for i in first} & {signature_of(i) for i in wave_a}


async def test_a_float_winner_is_refined_between_and_beyond_its_neighbours() -> None:
    wd = next(i for i in await OfflinePIMind(0).propose_ideas(IdeaContext(spec=GROKKING, direction="", n=40)) if i.changes == {"weight_decay": 3.0})
    ctx = IdeaContext(
        spec=GROKKING, direction="", previous=[wd], outcomes={wd.id: outcome(wd, 0.1)}, n=3, constraints={"allowed_knobs": ["weight_decay"]}
    )
    values = [i.changes["weight_decay"] for i in await OfflinePIMind(0).propose_ideas(ctx)]
    assert set(values[:2]) == {2.0, 5.0}  # halfway to the baseline's 1.0, one step past the edge of what is known


async def test_an_int_winner_gets_its_neighbours_on_the_declared_grid_within_bounds() -> None:
    async def second_wave(spec, knob: str, winner_value: int) -> list[int]:
        everything = await OfflinePIMind(0).propose_ideas(IdeaContext(spec=spec, direction="", n=40))
        won = next(i for i in everything if i.changes == {knob: winner_value})
        ctx = IdeaContext(spec=spec, direction="", previous=[won], outcomes={won.id: outcome(won, 0.1)}, n=5, constraints={"allowed_knobs": [knob]})
        ideas = await OfflinePIMind(0).propose_ideas(ctx)
        assert all(isinstance(i.changes[knob], int) for i in ideas)
        return [i.changes[knob] for i in ideas]

    # grokking's d_model (int, 16..256, baseline 64, candidates 32 and 128; 4 heads must divide it):
    # halfway to the baseline and one step past the edge, multiples of 32 like the declared values.
    wide = await second_wave(GROKKING, "d_model", 128)
    assert wide[0] == 96 and 192 in wide  # 192 ranks lower: a wider model costs more compute (feasibility)
    narrow = await second_wave(GROKKING, "d_model", 32)
    assert narrow[0] == 48  # halfway to 64 (on a finer grid: none of 32's lies between); one step past 32 is 0, out of bounds
    assert not [v for v in narrow if v not in (16, 48, 128)]  # nothing but the new neighbour and declared values
    # A different winner, a different second wave: the search follows the results.
    assert wide != narrow
    # The bound holds: with max 160, one step past 128 (192) is out of the space.
    spec = GROKKING.model_copy(deep=True)
    spec.knobs["d_model"] = spec.knobs["d_model"].model_copy(update={"max": 160.0})
    assert 192 not in await second_wave(spec, "d_model", 128)
    # Declared choices hold too: an int knob that names its valid values gets the declared ones next to the best.
    spec = GROKKING.model_copy(deep=True)
    spec.knobs["d_model"] = spec.knobs["d_model"].model_copy(update={"choices": [16, 32, 64, 128, 256]})
    assert sorted(await second_wave(spec, "d_model", 128)) == [32, 256]  # 256 the new neighbour, 32 a declared candidate
    with pytest.raises(ValueError, match="not one of"):
        spec.knobs["d_model"].validate_value(96)  # nor may anyone else propose a value outside them


async def test_scores_come_from_the_evidence_and_the_archive() -> None:
    mind = OfflinePIMind(0)
    everything = await mind.propose_ideas(IdeaContext(spec=GROKKING, direction="", n=40))
    assert {i.novelty for i in everything} == {8}
    wide = next(i for i in everything if i.changes == {"d_model": 128})
    narrow = next(i for i in everything if i.changes == {"d_model": 32})
    plain = next(i for i in everything if i.changes == {"weight_decay": 3.0})
    assert wide.feasibility is not None and plain.feasibility is not None and wide.feasibility < plain.feasibility
    assert narrow.feasibility == plain.feasibility
    # Tried by another project: not proposed again, unless repeats are asked for; then scored as not novel.
    record = ArchiveRecord(template="grokking", signature=signature_of(plain), project="old", recorded_at=1.0, outcome=outcome(plain, -0.1))
    again = await mind.propose_ideas(IdeaContext(spec=GROKKING, direction="", prior=[record], n=40))
    assert all(i.changes != plain.changes for i in again)
    repeated = await mind.propose_ideas(IdeaContext(spec=GROKKING, direction="", prior=[record], repeat_ok=True, n=40))
    assert next(i for i in repeated if i.changes == plain.changes).novelty == 2
    # The archive's loser makes the far side of the same knob less interesting than its near side.
    by = {i.changes.get("weight_decay"): i.interestingness for i in again if "weight_decay" in i.changes}
    assert by[0.3] is not None and by[0.1] is not None and by[0.3] > by[0.1]


async def test_template_declared_code_variants_become_code_ideas() -> None:
    spec = GROKKING.model_copy(deep=True)
    object.__setattr__(spec, "variants", {"sam": "sharpness-aware minimisation step"})
    ideas = await OfflinePIMind(0).propose_ideas(IdeaContext(spec=spec, direction="", n=40))
    [code] = [i for i in ideas if i.code is not None]
    assert code.code == CodeChange(variant="sam", summary="sharpness-aware minimisation step") and code.changes == {}


def test_ranking_orders_by_priority_and_drops_what_is_under_the_floor() -> None:
    def idea(id_: str, **scores: int | None) -> Idea:
        return Idea(id=id_, title=id_, hypothesis="h", falsification="f", changes={"x": 1}, **scores)  # type: ignore[arg-type]

    ideas = [
        idea("plain"), idea("great", interestingness=9, feasibility=9, novelty=8), idea("slow", feasibility=2),
        idea("dull", interestingness=1, feasibility=3, novelty=2),
    ]
    kept, dropped = rank(ideas)
    assert [i.id for i in kept] == ["great", "plain"]
    assert set(dropped) == {"slow", "dull"} and priority(ideas[3]) < FLOOR


# ------------------------------------------------------------ the PI with an archive


class MemoryArchive:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str, str], ArchiveRecord] = {}
        self.puts = 0

    async def put(self, record: ArchiveRecord) -> None:
        self.puts += 1
        self.records[(record.template, record.signature, record.project)] = record

    async def records_for(self, template: str) -> list[ArchiveRecord]:
        return [r for (t, _, _), r in sorted(self.records.items()) if t == template]


class Port:
    """The archive as the PI sees it (``records`` is a method there)."""

    def __init__(self, archive: MemoryArchive) -> None:
        self.archive = archive

    async def put(self, record: ArchiveRecord) -> None:
        await self.archive.put(record)

    async def records(self, template: str) -> list[ArchiveRecord]:
        return await self.archive.records_for(template)


class Harness:
    def __init__(self, project: str, archive: MemoryArchive, mind: Any = None) -> None:
        self.pi, self.project, self.archive = PI(), project, archive
        self.state: ProjectState | None = None
        self.mind = mind or OfflinePIMind()
        self.n = 0
        self.contexts: list[IdeaContext] = []

    async def send(self, body: Any, sender: str = "copi") -> list[tuple[Any, str]]:
        self.n += 1
        return await self.deliver(Envelope(id=f"{self.project}-m{self.n}", project=self.project, sender=sender, recipient="pi", body=body))  # type: ignore[arg-type]

    async def deliver(self, env: Envelope) -> list[tuple[Any, str]]:
        self.last = env
        ctx = PIContext(project=self.project, role="pi", state=self.state, artifacts=MemoryStore(), mind=self, clock=lambda: 1000.0,  # type: ignore[arg-type]
                        archive=Port(self.archive))
        await self.pi.handle(env, ctx)
        self.state = ProjectState.model_validate(ctx.state.model_dump(mode="json"))
        return ctx.outputs

    # the mind, recording what the PI showed it
    async def propose_ideas(self, ctx: IdeaContext) -> list[Idea]:
        self.contexts.append(ctx)
        ideas: list[Idea] = await self.mind.propose_ideas(ctx)
        return ideas

    async def read_note(self, note: CoPINote, spec: Any) -> Any:
        return await self.mind.read_note(note, spec)


async def run_project(h: Harness, better: float) -> None:
    """Start, accept every idea as novel, run each on 3 seeds, then analyse; ``better``: the first idea's gain."""
    budget = Budget(max_ideas=4, max_runs=10, max_revision_rounds=0, wall_time_s=600)
    outs = await h.send(StartProject(template="toy", template_object="t", spec=TOY_SPEC, budget=budget))
    await h.send(ExperimentResult(experiment_id="x01-baseline", idea_id="baseline", runs=[run_record("x01-baseline", "baseline", [1.0, 1.1, 0.9])]), "engineer")
    first = True
    while True:
        pending = [b for b, _ in outs if b.type == "novelty_check"]
        if not pending:
            break
        outs = []
        for check in pending:
            sent = await h.send(NoveltyVerdict(idea_id=check.idea.id, novel=True, justification="ok"), "literature")
            exp = next(b for b, _ in sent if b.type == "experiment_request")
            gain = better if first else 0.0
            first = False
            runs = [run_record(exp.experiment_id, check.idea.id, [1.0 - gain, 1.1 - gain, 0.9 - gain])]
            outs = await h.send(ExperimentResult(experiment_id=exp.experiment_id, idea_id=check.idea.id, runs=runs), "engineer")
    assert h.state is not None and h.state.stage == "analysis"


async def test_the_pi_shows_outcomes_ranks_ideas_and_writes_the_archive_once_per_idea() -> None:
    archive = MemoryArchive()
    h = Harness("p1", archive)
    await run_project(h, better=0.3)
    assert h.state is not None
    # Later waves saw the earlier ideas' outcomes, measured from the runs.
    later = [c for c in h.contexts if c.previous]
    assert later and all(o.measured and o.source == "runs" for o in later[0].outcomes.values())
    ideas = list(h.state.ideas.values())
    comparisons = [
        Comparison(idea_id=s.idea.id, metric="loss", direction="lower", baseline_mean=1.0, baseline_stderr=0.1, idea_mean=0.7,
                   idea_stderr=0.1, n_baseline=3, n_idea=3, diff=-0.3, improvement=0.3, ci_low=0.1, ci_high=0.5, p_value=0.01,
                   effect_size=1.5, better=False, verdict="inconclusive", p_adjusted=0.2)
        for s in ideas
    ]
    done = AnalysisDone(report=AnalysisReport(project="p1", primary_metric="loss", comparisons=comparisons, runs=[]))
    before = h.state
    await h.send(done, "analyst")
    assert len(archive.records) == len(ideas) and archive.puts == len(ideas)
    first = {k: r.model_dump() for k, r in archive.records.items()}
    # A redelivery (the state was not stored) writes the same records under the same keys.
    h.state = before
    await h.deliver(h.last)
    assert {k: r.model_dump() for k, r in archive.records.items()} == first
    rec = next(iter(archive.records.values()))
    assert rec.project == "p1" and rec.outcome.source == "analysis" and rec.outcome.p_adjusted == 0.2

    # A second project on the same template sees the first's outcomes and does not repeat its ideas.
    h2 = Harness("p2", archive)
    await run_project(h2, better=0.0)
    assert h2.contexts[0].prior and {r.project for r in h2.contexts[0].prior} == {"p1"}
    assert h2.state is not None
    assert not {signature_of(s.idea) for s in h2.state.ideas.values()} & {signature_of(s.idea) for s in h.state.ideas.values()}


def test_repeats_are_asked_for_in_words() -> None:
    from agents.pi.workflow import asks_repeat

    assert asks_repeat("replicate last month's weight decay result")
    assert asks_repeat("run weight decay 3.0 again")
    assert not asks_repeat("do not repeat earlier ideas")
    assert not asks_repeat("does weight decay speed up grokking?")


async def test_int_neighbours_that_break_a_declared_relation_are_never_proposed() -> None:
    """char_lm's heads must divide the width (``divides``): 6 and 12 heads around a winning 8 would crash on 128 wide."""
    _, char_lm = load("char_lm")

    async def after_winner(spec, profile: str) -> list[int]:
        everything = await OfflinePIMind(0).propose_ideas(IdeaContext(spec=spec, direction="", n=40, profile=profile))
        won = next(i for i in everything if i.changes == {"n_head": 8})
        ctx = IdeaContext(spec=spec, direction="", previous=[won], outcomes={won.id: outcome(won, 0.1)}, n=5,
                          constraints={"allowed_knobs": ["n_head"]}, profile=profile)
        return [i.changes["n_head"] for i in await OfflinePIMind(0).propose_ideas(ctx)]

    undeclared = char_lm.model_copy(deep=True)
    undeclared.knobs["n_head"] = undeclared.knobs["n_head"].model_copy(update={"divides": []})
    assert {6, 12} <= set(await after_winner(undeclared, ""))  # the grid alone would try them
    values = await after_winner(char_lm, "")
    assert values and all(char_lm.defaults()["n_embd"] % v == 0 for v in values) and not {6, 12} & set(values)
    # Under the gpu profile the width is 384 and the baseline runs 6 heads (its effective value): every value
    # proposed divides 384, and the baseline's own 6 heads are never an idea.
    gpu = await after_winner(char_lm, "gpu")
    assert gpu and all(384 % v == 0 for v in gpu) and 6 not in gpu
