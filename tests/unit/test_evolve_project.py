"""An evolve project as the PI runs it (agents/pi/evolve.py over the evolve room's loop, agents/evolve/project.py),
in process: the loop replayed over the project's state, each candidate an ExperimentRequest answered by a scripted engineer on the planted testbed.

It must take the same decisions as the loop run straight through (tests/evolve_planted.py), ask for every
experiment once, and ask for nothing again when a message is redelivered or a state write was lost (a lab
killed mid-step): what makes a killed and restarted lab finish the project with no candidate run twice.
"""

from __future__ import annotations

import asyncio
import statistics

from agents.evolve.project import advance as loop
from agents.pi import evolve
from agents.pi import transitions as t
from agents.pi.state import ProjectState
from agents.templates import load
from bus.schema import ExperimentPlanned, ExperimentRequest, ExperimentResult, FinalInfo, MetricStat, RunRecord, StartProject
from bus.schema.evolve import EvolveRequest, Proposal
from tests.evolve_planted import SPEC, Planted, pool, run_planted

ITERATIONS, POPULATION, MAX_RUNS = 3, 4, 40
FORBIDDEN = "import subprocess\n\n\ndef merge(task_vectors, args, gen):\n    return task_vectors.sum(0)\n"


def start_body(seeds: list[Proposal] | None = None) -> StartProject:
    _, spec = load("model_merging")
    request = EvolveRequest(spec=SPEC, iterations=ITERATIONS, population=POPULATION, max_runs=MAX_RUNS, wall_time_s=600,
                            pool=pool(), seeds=seeds or [])
    return StartProject(template=spec.name, template_object="p/bundle.tar.gz", spec=spec, seed=1, evolve=request)


class Engineer:
    """Answers each experiment request with the planted testbed's scores, as the engineer's result would carry them."""

    def __init__(self, margin: float) -> None:
        self.planted = Planted(margin)
        self.asked: list[str] = []

    async def answer(self, req: ExperimentRequest) -> ExperimentResult | ExperimentPlanned:
        self.asked.append(req.experiment_id)
        assert req.idea is not None and req.idea.code is not None
        code = req.idea.code.edits[0].replace.split("\n\n\nEVOLVED_MERGE")[0]
        if "subprocess" in code:  # the guarded edit refuses it: no job
            return ExperimentPlanned(experiment_id=req.experiment_id, idea_id=req.idea.id, overrides={}, job_ids=[], rejected="forbidden: subprocess")
        split = req.fixed["split"]
        run = await self.planted(req.idea.id, Proposal(name=req.idea.title, code=code), req.seeds, split)  # type: ignore[arg-type]
        info = None
        if run.ok:
            stat = MetricStat(mean=statistics.fmean(run.values), stderr=0.0, values=run.values)
            info = FinalInfo.model_validate({"metrics": {"task_acc": stat}, "seeds": run.seeds, "split": split, "behaviour": run.behaviour})
        record = RunRecord(job_id=f"job-{req.experiment_id}", experiment_id=req.experiment_id, idea_id=req.idea.id, overrides=req.fixed,
                           seeds=req.seeds, status="succeeded" if run.ok else "failed", reason=run.reason, final_info=info)
        return ExperimentResult(experiment_id=req.experiment_id, idea_id=req.idea.id, runs=[record])


def requests(step: t.Step) -> list[ExperimentRequest]:
    return [b for b, to in step.sent if isinstance(b, ExperimentRequest) and to == "engineer"]


async def drive(margin: float, replays: bool, seeds: list[Proposal] | None = None) -> tuple[t.Step, Engineer]:
    """The project to its decision; with ``replays``, each message is also handled twice and some steps are lost."""
    eng = Engineer(margin)
    st: ProjectState = evolve.start(None, start_body(seeds), "p1", 0.0)
    step = await evolve.advance(st, 1.0, loop)
    queue, n = requests(step), 0
    while queue:
        req = queue.pop(0)
        answer = await eng.answer(req)
        n += 1
        lost = replays and n % 5 == 0
        before = step.state
        fold = evolve.result if isinstance(answer, ExperimentResult) else evolve.planned
        step = await evolve.advance(fold(before, answer), 2.0, loop)  # type: ignore[arg-type]
        if replays and n % 4 == 0:  # the same message again, on the stored state: nothing new is asked for
            again = await evolve.advance(fold(step.state, answer), 2.0, loop)  # type: ignore[arg-type]
            assert requests(again) == [] and again.state.evolve == step.state.evolve
        if lost:  # the state was not stored: the step is redone from the state before, asking for the same experiments
            redo = await evolve.advance(fold(before, answer), 2.0, loop)  # type: ignore[arg-type]
            assert [r.experiment_id for r in requests(redo)] == [r.experiment_id for r in requests(step)]
        queue += requests(step)
    return step, eng


def test_the_project_takes_the_loops_decisions_and_runs_each_candidate_once(monkeypatch) -> None:
    monkeypatch.setattr("agents.evolve.files.plot", lambda *a: b"png")  # the plot itself: tests/integration/test_evolve_runs.py
    report, mem, _ = asyncio.run(run_planted(margin=0.03, iterations=ITERATIONS, population=POPULATION, max_runs=MAX_RUNS))
    step, eng = asyncio.run(drive(0.03, replays=True))
    ev = step.state.evolve
    assert ev is not None and step.state.stage == "done" and step.state.accepted is report.beat_baseline
    assert len(eng.asked) == len(set(eng.asked)) == report.runs  # every evaluation asked for once, none twice
    assert [(c.id, c.name, c.values, c.same_as, c.eliminated) for c in ev.archive] == \
        [(c.id, c.name, c.values, c.same_as, c.eliminated) for c in report.archive]
    assert ev.verdict == report.verdict and [c.values for c in ev.final] == [c.values for c in report.final]
    assert len(ev.pairs) == len(mem.pairs)
    # the decision, evolve/ in the object store, and an archive record per distinct proposed candidate
    effects = step.effects
    stored = {e.name.removeprefix("p1/evolve/") for e in effects if isinstance(e, t.PutArtifact)}
    assert {"final.jsonl", "preferences.jsonl", "summary.json", "progress.png", "candidates.jsonl"} <= stored
    records = [e.record for e in effects if isinstance(e, t.Remember)]
    distinct = [c for c in ev.archive if not c.same_as and c.name != SPEC.baseline]
    assert sorted(r.outcome.idea_id for r in records) == sorted(c.id for c in distinct)
    for r in records:  # each outcome is its paired comparison with the baseline on dev
        o = r.outcome
        assert o.source == "runs" and o.p_value is not None and o.ci_low is not None and o.ci_high is not None
        assert o.status == ("better" if o.ci_low > 0 else "worse" if o.ci_high < 0 else "inconclusive")


def test_a_refused_candidate_fails_without_a_job_and_the_loop_goes_on(monkeypatch) -> None:
    monkeypatch.setattr("agents.evolve.files.plot", lambda *a: b"png")
    step, eng = asyncio.run(drive(0.0, replays=False, seeds=[Proposal(name="forbidden", code=FORBIDDEN)]))
    ev = step.state.evolve
    assert ev is not None and step.state.stage == "done"
    refused = next(c for c in ev.archive if c.name == "forbidden")
    assert refused.state == "failed" and refused.reason.startswith("edit refused") and not refused.job_ids
    assert ev.verdict.startswith("nothing beat the baseline") and ev.pairs == []
    assert step.state.ideas[refused.id].status == "failed"


def test_a_note_to_an_evolve_project_is_refused_unless_it_says_stop() -> None:
    """Its loop reads no constraints, runs or budgets from notes: acknowledging one would be a request ignored."""
    from agents.minds.base import NoteReading
    from bus.schema import CoPINote

    st: ProjectState = evolve.start(None, start_body(), "p1", 0.0)
    ask = t.note_read(st, CoPINote(id="n1", text="try lr 0.5 and keep batch size below 64"),
                      NoteReading(understood="a run with lr=0.5", constraints={"max_batch_size": 64}, parsed=True))
    [(ack, to)] = ask.sent
    assert to == "copi" and ack.understood.startswith("not done: an evolve project runs only the candidates its loop picks")
    assert ack.constraints == {} and ask.state.constraints == {} and ask.state.stage == "experiments"
    assert ask.state.experiments == st.experiments and [n.id for n in ask.state.notes] == ["n1"]
    stop = t.note_read(st, CoPINote(id="n2", text="stop"), NoteReading(understood="stop", constraints={"stop": True}, parsed=True))
    assert stop.state.stage == "failed" and "stopped by the co-PI" in (stop.state.outcome or "")
    assert [type(m).__name__ for m, _ in stop.sent] == ["NoteAck", "Decision"]


def test_an_evolve_project_is_capped_estimated_and_waits_for_approval_like_any_project() -> None:
    from bus.schema import BudgetLimits, ProjectApproval

    body = start_body().model_copy(update={"require_approval": True})
    step = t.start(None, body, "p1", 0.0, limits=BudgetLimits(max_gpu_hours_per_project=1.5))
    st = step.state
    assert st.stage == "approval" and st.budget.max_gpu_hours == 1.5 and st.evolve is not None
    assert [type(m).__name__ for m, _ in step.sent] == ["ProjectEstimate"]
    assert st.estimate is not None and st.estimate.runs == MAX_RUNS  # the loop's evaluations, not an idea budget's runs
    assert requests(step) == [] and asyncio.run(evolve.advance(st, 1.0, loop)).sent == []  # the loop waits with it
    refused = t.approval(st, ProjectApproval(approved=False, reason="not this week"), 1.0)
    assert refused.state.stage == "failed" and "refused by the co-PI: not this week" in (refused.state.outcome or "")
    approved = t.approval(st, ProjectApproval(approved=True), 1.0)
    assert approved.state.stage == "experiments" and requests(approved) == []  # no baseline wave: the loop asks next
    first = asyncio.run(evolve.advance(approved.state, 2.0, loop))
    assert requests(first) and all(r.fixed for r in requests(first))  # candidates on their splits
