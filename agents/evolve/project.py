"""An evolve project: the Self-Developing loop (``race.Loop``) run by the PI, its candidates as the engineer's experiments.

`lab evolve` starts a project whose ``StartProject`` carries an ``EvolveRequest``; the PI keeps an
``EvolveState`` in its project state and, instead of idea waves, replays the loop each time something
arrives. The replay is deterministic: what the mind proposed and whether the wall time had passed are
decided once and read back from the state; an evaluation whose experiment has its result returns it;
one never asked for is sent to the engineer as an ``ExperimentRequest`` (the candidate's code as a guarded
edit at the template's hook, the split and the template's evolve overrides as the request's ``fixed``
options), and the replay stops where it first waits. Experiment ids derive from the candidate, the split
and the seeds, and the engineer ignores a request it has seen: a redelivery or a restarted lab never runs
a candidate twice. When the loop ends, the PI writes ``evolve/`` to the object store (`lab export` and
`lab evolve` fetch it), archives each candidate's outcome against the baseline, and decides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from agents.evolve import workflow
from agents.evolve.files import render
from agents.evolve.race import FINAL_RUNS, Loop, LoopConfig, Report, Run
from agents.evolve.stats import paired
from agents.evolve.workflow import EvolveMind, ProposeRequest
from agents.pi import transitions as t
from agents.pi.state import ExperimentState, IdeaState, ProjectState
from bus.schema import (
    ArchiveRecord,
    CodeChange,
    ExperimentPlanned,
    ExperimentRequest,
    ExperimentResult,
    Idea,
    IdeaOutcome,
    RunRecord,
    StartProject,
    StepFailed,
)
from bus.schema.archive import idea_signature
from bus.schema.evolve import Candidate, EvolveRequest, EvolveState, IterationSummary, PreferencePair, Proposal, Split

MindFactory = Callable[[EvolveRequest, int], EvolveMind]


class Pending(Exception):
    """An evaluation waits for its experiment: the replay stops here (it goes on when the result arrives)."""


def make_mind(request: EvolveRequest, seed: int) -> EvolveMind:
    """The request's mind: the offline one (genetic programming over the template's operators), or the llm one."""
    if request.mind == "llm":
        from agents.evolve.llm import make

        return make(seed, {"model": request.model} if request.model else {})
    from agents.evolve.offline import OfflineEvolveMind

    return OfflineEvolveMind(request.spec, request.pool, seed)


def start(state: ProjectState | None, body: StartProject, project: str, now: float) -> ProjectState:
    """A new evolve project's state (the loop's first proposals come with the first ``advance``)."""
    if state is not None:
        return state
    assert body.evolve is not None
    return ProjectState(
        project=project, template=body.template, template_object=body.template_object, spec=body.spec,
        direction=body.direction or f"evolve {body.evolve.spec.hook.function}()", seed=body.seed, budget=body.budget,
        fast=body.fast, profile=body.profile, cache=body.cache, mind=body.mind, started_at=now, user=body.user,
        stage="experiments", evolve=EvolveState(request=body.evolve),
    )


def planned(st: ProjectState, body: ExperimentPlanned) -> ProjectState:
    """A refused plan (the guarded edit refused the candidate's code) is that evaluation's result: no job ran."""
    exp = st.experiments.get(body.experiment_id)
    if exp is None or not body.rejected or exp.status != "requested":
        return st
    st = st.model_copy(deep=True)
    st.experiments[body.experiment_id].status = "failed"
    st.experiments[body.experiment_id].reason = f"edit refused: {body.rejected}"
    return st


def result(st: ProjectState, body: ExperimentResult) -> ProjectState:
    exp = st.experiments.get(body.experiment_id)
    if exp is None or exp.status != "requested":
        return st
    st = st.model_copy(deep=True)
    exp = st.experiments[body.experiment_id]
    exp.runs = body.runs
    exp.status = "done" if any(r.status == "succeeded" for r in body.runs) else "failed"
    exp.reason = "; ".join(r.reason for r in body.runs if r.reason)
    return st


def step_failed(st: ProjectState, body: StepFailed) -> ProjectState:
    exp = st.experiments.get(body.ref) if body.step == "experiment" else None
    if exp is None or exp.status != "requested":
        return st
    st = st.model_copy(deep=True)
    st.experiments[body.ref].status, st.experiments[body.ref].reason = "failed", body.reason
    return st


def experiment_id(cid: str, split: Split, seeds: list[int]) -> str:
    return f"{cid}-{split}-s{seeds[0]}"


def run_of(exp: ExperimentState, split: Split, metric: str) -> Run:
    """What one finished experiment says of its candidate: its per-seed scores and behaviour, or why it failed."""
    record: RunRecord | None = exp.runs[-1] if exp.runs else None
    base = Run(ok=False, job_id=record.job_id if record else "", wall_s=round(record.wall_s, 2) if record else 0.0)
    if record is None or record.status != "succeeded" or record.final_info is None:
        base.reason = exp.reason or (record.reason if record else "failed")
        return base
    info = record.final_info
    extra = info.model_extra or {}
    scored = extra.get("split", split)
    stat = info.metrics.get(metric)
    if scored != split or stat is None or len(stat.values) != len(info.seeds):
        base.reason = f"the experiment scored the {scored} split" if scored != split else f"no per-seed {metric} in final_info.json"
        return base
    behaviour = [str(b) for b in extra.get("behaviour", [])]
    return Run(ok=True, job_id=base.job_id, wall_s=base.wall_s, seeds=list(info.seeds), values=list(stat.values),
               behaviour=behaviour if len(behaviour) == len(info.seeds) else [], metrics={m: x.mean for m, x in info.metrics.items()})


class Replay:
    """The loop's Evaluate and Sink over the project's state: finished experiments answer, new ones are asked for."""

    def __init__(self, st: ProjectState, now: float) -> None:
        assert st.evolve is not None
        self.st, self.ev, self.now = st, st.evolve, now
        self.out: list[t.Effect] = []
        self.lines: list[str] = []
        self.pairs: list[PreferencePair] = []
        self.summaries: list[IterationSummary] = []
        self.waiting = 0

    async def __call__(self, cid: str, proposal: Proposal, seeds: list[int], split: Split) -> Run:
        exp_id = experiment_id(cid, split, seeds)
        exp = self.st.experiments.get(exp_id)
        if exp is None:
            self._request(exp_id, cid, proposal, seeds, split)
        elif exp.status != "requested":
            return run_of(exp, split, self.st.spec.primary_metric)
        self.waiting += 1
        raise Pending(exp_id)

    def _request(self, exp_id: str, cid: str, p: Proposal, seeds: list[int], split: Split) -> None:
        spec = self.ev.request.spec
        code = CodeChange(summary=f"{spec.hook.function}(): {p.name} [{hashlib.sha256(p.code.encode()).hexdigest()[:12]}]",
                          edits=[workflow.hook_edit(spec.hook, p.code)])
        idea = Idea(id=cid, title=p.name, hypothesis=p.rationale or f"{p.name} merges better than the baseline",
                    falsification=f"its {split} score is no better than the baseline's, paired on seeds", changes={}, code=code,
                    rationale=p.rationale)
        iteration = int(cid.removeprefix("test-").split("-")[0].removeprefix("i") or 0)
        self.st.ideas.setdefault(cid, IdeaState(idea=idea, wave=iteration, status="running"))
        self.st.experiments[exp_id] = ExperimentState(experiment_id=exp_id, idea_id=cid, seeds=seeds, round=0)
        fixed = {**spec.overrides, spec.split_flag: split}
        self.out.append(t.Send(ExperimentRequest(
            experiment_id=exp_id, idea=idea, seeds=seeds, template=self.st.template, template_object=self.st.template_object,
            spec=self.st.spec, fast=self.st.fast, profile=self.st.profile, cache=self.st.cache, fixed=fixed), "engineer"))

    def late(self, iteration: int) -> bool:
        """Whether the wall time had passed when ``iteration`` was to start: decided once, read back on every replay."""
        if iteration not in self.ev.late:
            self.ev.late[iteration] = self.now > self.st.started_at + self.ev.request.wall_time_s
        return self.ev.late[iteration]

    # the Sink
    def candidates(self, archive: list[Candidate]) -> None:
        self.ev.archive = list(archive)

    def iteration(self, s: IterationSummary, prompt: str) -> None:
        self.summaries.append(s)
        self.ev.prompts[s.iteration] = prompt

    def preference(self, pair: PreferencePair) -> None:
        self.pairs.append(pair)

    def say(self, line: str) -> None:
        self.lines.append(line)

    def keep(self, loop: Loop) -> None:
        """What this replay found, into the state; lines not said before are logged; ideas whose runs all ended, ended."""
        self.ev.archive = list(loop.archive)
        self.ev.summaries, self.ev.pairs, self.ev.runs = self.summaries, self.pairs, loop.runs
        for line in self.lines[self.ev.said:]:
            self.out.append(t.Log("info", "evolve", {"says": line}))
        self.ev.said = max(self.ev.said, len(self.lines))
        for idea_id, idea in self.st.ideas.items():
            exps = [e for e in self.st.experiments.values() if e.idea_id == idea_id]
            if idea.status == "running" and exps and all(e.status != "requested" for e in exps):
                ok = any(e.status == "done" for e in exps)
                idea.status, idea.reason = ("done", "") if ok else ("failed", exps[-1].reason)


class MemoMind:
    """The mind, asked once per iteration: its answer (or its failure, as none) is kept and read back on replays."""

    def __init__(self, ev: EvolveState, mind: EvolveMind) -> None:
        self.ev, self.mind = ev, mind

    async def propose(self, request: ProposeRequest) -> list[Proposal]:
        if request.iteration not in self.ev.proposals:
            try:
                got = (await self.mind.propose(request))[: request.k]
            except Exception:
                self.ev.proposals[request.iteration] = []
                raise
            self.ev.proposals[request.iteration] = got
        return list(self.ev.proposals[request.iteration])

    async def close(self) -> None:
        await self.mind.close()


def loop_config(st: ProjectState, replay: Replay) -> LoopConfig:
    assert st.evolve is not None
    req = st.evolve.request
    metric = st.spec.primary_metric
    # The offline mind brings the pool itself; with the llm mind the baseline runs first, so it can be compared with.
    own = list(req.seeds) if req.mind == "offline" else [*req.seeds, *req.pool[:1]]
    return LoopConfig(spec=req.spec, task=st.spec.task, metric=metric, direction=st.spec.metrics[metric].direction,
                      iterations=req.iterations, population=req.population, keep=req.keep, max_runs=req.max_runs,
                      deadline=float("inf"), seed_proposals=own, late=replay.late)


async def advance(st: ProjectState, now: float, make: MindFactory = make_mind) -> t.Step:
    """Replay the loop as far as the results in hand take it: new experiments asked for, or, at its end, the decision."""
    if st.evolve is None or st.stage in ("done", "failed"):
        return t.Step(st)
    st = st.model_copy(deep=True)
    assert st.evolve is not None
    replay = Replay(st, now)
    mind = MemoMind(st.evolve, make(st.evolve.request, st.seed))
    loop = Loop(loop_config(st, replay), mind, replay, replay)
    try:
        report = await loop.run()
    except Pending:
        replay.keep(loop)
        return t.Step(st, replay.out)
    finally:
        await mind.close()
    replay.keep(loop)
    _conclude(st, replay.out, report, now)
    return t.Step(st, replay.out)


def _conclude(st: ProjectState, out: list[t.Effect], report: Report, now: float) -> None:
    """The loop's end: its report kept, ``evolve/`` stored, each candidate archived, the decision sent."""
    ev = st.evolve
    assert ev is not None
    ev.final, ev.comparisons, ev.verdict, ev.beat_baseline, ev.stopped = (
        report.final, report.comparisons, report.verdict, report.beat_baseline, report.stopped)
    for name, data in render(st, report).items():
        out.append(t.PutArtifact(f"{st.project}/evolve/{name}", data))
    out.extend(t.Remember(r) for r in archive_records(st, now))
    reason = report.verdict + (f" (stopped early: {report.stopped} is spent)" if report.stopped else "")
    failed = not any(c.state == "succeeded" for c in report.final)
    t._finish(st, out, accepted=report.beat_baseline, reason=reason, failed=failed)


def archive_records(st: ProjectState, when: float) -> list[ArchiveRecord]:
    """Each distinct candidate that was proposed (not the baseline itself) against the baseline, paired on dev seeds."""
    ev = st.evolve
    assert ev is not None
    spec, metric = ev.request.spec, st.spec.primary_metric
    direction = st.spec.metrics[metric].direction
    base = next((c for c in ev.archive if c.builtin and c.name == spec.baseline and c.state == "succeeded"), None)
    records = []
    for c in ev.archive:
        idea = st.ideas.get(c.id)
        if idea is None or c.same_as or (base is not None and c.id == base.id):
            continue
        fields: dict[str, Any] = {"idea_id": c.id, "title": c.name, "code": idea.idea.code, "metric": metric}
        cmp = paired(c, base, direction) if base is not None and c.state == "succeeded" else None
        if c.state != "succeeded":
            outcome = IdeaOutcome(**fields, status="failed", reason=c.reason[:500])
        elif cmp is None:
            outcome = IdeaOutcome(**fields, status="inconclusive", reason=c.eliminated[:500])
        else:
            status = "better" if cmp.lo > 0 else "worse" if cmp.hi < 0 else "inconclusive"
            outcome = IdeaOutcome(**fields, status=status, improvement=cmp.diff, ci_low=cmp.lo, ci_high=cmp.hi, p_value=cmp.p,
                                  source="runs", reason=f"paired with {spec.baseline} on {len(cmp.seeds)} dev seeds")
        records.append(ArchiveRecord(template=st.template, signature=idea_signature({}, idea.idea.code), project=st.project,
                                     recorded_at=when, direction=st.direction, outcome=outcome))
    return records


def summary(st: ProjectState) -> dict[str, Any]:
    """``summary.json``: the run's settings, what each iteration found, the final runs and the verdict."""
    ev = st.evolve
    assert ev is not None
    req, metric = ev.request, st.spec.primary_metric
    dev = {c.id: c for c in ev.archive}
    return {
        "template": st.template, "project": st.project, "mind": req.mind, "metric": metric, "direction": st.spec.metrics[metric].direction,
        "splits": req.spec.splits, "baseline": req.spec.baseline, "overrides": req.spec.overrides, "seeds": req.spec.seeds.model_dump(),
        "iterations": [s.model_dump() for s in ev.summaries], "runs": sum(len(c.job_ids) for c in [*ev.archive, *ev.final]),
        "max_runs": req.max_runs, "stopped": ev.stopped, "duplicates": {c.id: c.same_as for c in ev.archive if c.same_as},
        "preference_pairs": len(ev.pairs),
        "final": [{"id": c.id, "name": c.name, "builtin": c.builtin, "dev": dev[c.id.removeprefix("test-")].score,
                   "dev_seeds": len(dev[c.id.removeprefix("test-")].values), "test": c.score, "test_stderr": c.stderr,
                   "test_values": c.values, "test_seeds": c.seeds, "state": c.state, "reason": c.reason} for c in ev.final],
        "comparisons": {k: v.model_dump() for k, v in ev.comparisons.items()},
        "verdict": ev.verdict, "beat_baseline": ev.beat_baseline,
    }


def summary_json(st: ProjectState) -> bytes:
    return json.dumps(summary(st), indent=2).encode()


__all__ = ["FINAL_RUNS", "MemoMind", "Pending", "Replay", "advance", "archive_records", "experiment_id", "make_mind", "planned",
           "result", "run_of", "start", "step_failed", "summary"]
