"""An evolve project's loop: the Self-Developing loop (``race.Loop``) replayed for the PI, its candidates as the engineer's experiments.

`lab evolve` starts a project whose ``StartProject`` carries an ``EvolveRequest``; the PI keeps an
``EvolveState`` in its project state and, instead of idea waves, calls ``advance`` (given to it by its
wiring: rooms share schema, not code) each time something arrives, and performs the ``EvolveStep`` it returns.
The replay is deterministic: what the mind proposed and whether the wall time had passed are
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
from collections.abc import Callable, Mapping
from typing import Any

from agents.evolve import workflow
from agents.evolve.files import render
from agents.evolve.race import Loop, LoopConfig, Run
from agents.evolve.stats import paired
from agents.evolve.workflow import EvolveMind, ProposeRequest
from bus.schema import ArchiveRecord, CodeChange, Idea, IdeaOutcome
from bus.schema.archive import idea_signature
from bus.schema.evolve import (
    Candidate,
    Evaluated,
    Evaluation,
    EvolveRequest,
    EvolveSetting,
    EvolveState,
    EvolveStep,
    IterationSummary,
    PreferencePair,
    Proposal,
    Split,
)

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


def experiment_id(cid: str, split: Split, seeds: list[int]) -> str:
    return f"{cid}-{split}-s{seeds[0]}"


def run_of(exp: Evaluated, split: Split, metric: str) -> Run:
    """What one finished experiment says of its candidate: its per-seed scores and behaviour, or why it failed."""
    record = exp.runs[-1] if exp.runs else None
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


def candidate_idea(spec_hook: Any, cid: str, p: Proposal | Candidate, split: Split) -> Idea:
    """The candidate as an idea: its code a guarded edit at the template's hook, named by its code's hash."""
    code = CodeChange(summary=f"{spec_hook.function}(): {p.name} [{hashlib.sha256(p.code.encode()).hexdigest()[:12]}]",
                      edits=[workflow.hook_edit(spec_hook, p.code)])
    return Idea(id=cid, title=p.name, hypothesis=p.rationale or f"{p.name} does better than the baseline",
                falsification=f"its {split} score is no better than the baseline's, paired on seeds", changes={}, code=code, rationale=p.rationale)


class Replay:
    """The loop's Evaluate and Sink over the project's experiments: finished ones answer, new ones are asked for."""

    def __init__(self, ev: EvolveState, setting: EvolveSetting, experiments: Mapping[str, Evaluated], now: float) -> None:
        self.ev, self.setting, self.experiments, self.now = ev, setting, experiments, now
        self.ask: list[Evaluation] = []
        self.lines: list[str] = []
        self.pairs: list[PreferencePair] = []
        self.summaries: list[IterationSummary] = []

    async def __call__(self, cid: str, proposal: Proposal, seeds: list[int], split: Split) -> Run:
        exp_id = experiment_id(cid, split, seeds)
        exp = self.experiments.get(exp_id)
        if exp is None:
            spec = self.ev.request.spec
            iteration = int(cid.removeprefix("test-").split("-")[0].removeprefix("i") or 0)
            self.ask.append(Evaluation(experiment_id=exp_id, idea=candidate_idea(spec.hook, cid, proposal, split), seeds=seeds,
                                       fixed={**spec.overrides, spec.split_flag: split}, iteration=iteration))
        elif exp.status != "requested":
            return run_of(exp, split, self.setting.spec.primary_metric)
        raise Pending(exp_id)

    def late(self, iteration: int) -> bool:
        """Whether the wall time had passed when ``iteration`` was to start: decided once, read back on every replay."""
        if iteration not in self.ev.late:
            self.ev.late[iteration] = self.now > self.setting.started_at + self.ev.request.wall_time_s
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

    def keep(self, loop: Loop) -> EvolveStep:
        """What this replay found, as a step: the state, the experiments to ask for, the lines not said before."""
        self.ev.archive = list(loop.archive)
        self.ev.summaries, self.ev.pairs, self.ev.runs = self.summaries, self.pairs, loop.runs
        new = self.lines[self.ev.said:]
        self.ev.said = max(self.ev.said, len(self.lines))
        return EvolveStep(evolve=self.ev, ask=self.ask, lines=new)


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


def loop_config(ev: EvolveState, setting: EvolveSetting, replay: Replay) -> LoopConfig:
    req, spec = ev.request, setting.spec
    metric = spec.primary_metric
    # The offline mind brings the pool itself; with the llm mind the baseline runs first, so it can be compared with.
    own = list(req.seeds) if req.mind == "offline" else [*req.seeds, *req.pool[:1]]
    return LoopConfig(spec=req.spec, task=spec.task, metric=metric, direction=spec.metrics[metric].direction,
                      iterations=req.iterations, population=req.population, keep=req.keep, max_runs=req.max_runs,
                      deadline=float("inf"), seed_proposals=own, late=replay.late)


async def advance(ev: EvolveState, setting: EvolveSetting, experiments: Mapping[str, Evaluated], now: float,
                  make: MindFactory = make_mind) -> EvolveStep:
    """Replay the loop as far as the results in hand take it: new experiments to ask for, or, at its end, the verdict."""
    ev = ev.model_copy(deep=True)
    replay = Replay(ev, setting, experiments, now)
    mind = MemoMind(ev, make(ev.request, setting.seed))
    loop = Loop(loop_config(ev, setting, replay), mind, replay, replay)
    try:
        report = await loop.run()
    except Pending:
        return replay.keep(loop)
    finally:
        await mind.close()
    ev.final, ev.comparisons, ev.verdict, ev.beat_baseline, ev.stopped = (
        report.final, report.comparisons, report.verdict, report.beat_baseline, report.stopped)
    step = replay.keep(loop)
    verdict = report.verdict + (f" (stopped early: {report.stopped} is spent)" if report.stopped else "")
    return step.model_copy(update={
        "done": True, "verdict": verdict, "accepted": report.beat_baseline, "failed": not any(c.state == "succeeded" for c in report.final),
        "files": render(ev, setting, report), "records": archive_records(ev, setting, now)})


def archive_records(ev: EvolveState, setting: EvolveSetting, when: float) -> list[ArchiveRecord]:
    """Each distinct candidate that was proposed (not the baseline itself) against the baseline, paired on dev seeds."""
    spec, metric = ev.request.spec, setting.spec.primary_metric
    direction = setting.spec.metrics[metric].direction
    base = next((c for c in ev.archive if c.builtin and c.name == spec.baseline and c.state == "succeeded"), None)
    records = []
    for c in ev.archive:
        if c.same_as or (base is not None and c.id == base.id):
            continue
        code = candidate_idea(spec.hook, c.id, c, "dev").code
        fields: dict[str, Any] = {"idea_id": c.id, "title": c.name, "code": code, "metric": metric}
        cmp = paired(c, base, direction) if base is not None and c.state == "succeeded" else None
        if c.state != "succeeded":
            outcome = IdeaOutcome(**fields, status="failed", reason=c.reason[:500])
        elif cmp is None:
            outcome = IdeaOutcome(**fields, status="inconclusive", reason=c.eliminated[:500])
        else:
            status = "better" if cmp.lo > 0 else "worse" if cmp.hi < 0 else "inconclusive"
            outcome = IdeaOutcome(**fields, status=status, improvement=cmp.diff, ci_low=cmp.lo, ci_high=cmp.hi, p_value=cmp.p,
                                  source="runs", reason=f"paired with {spec.baseline} on {len(cmp.seeds)} dev seeds")
        records.append(ArchiveRecord(template=setting.template, signature=idea_signature({}, code), project=setting.project,
                                     recorded_at=when, direction=setting.direction, outcome=outcome))
    return records


def summary(ev: EvolveState, setting: EvolveSetting) -> dict[str, Any]:
    """``summary.json``: the run's settings, what each iteration found, the final runs and the verdict."""
    req, metric = ev.request, setting.spec.primary_metric
    dev = {c.id: c for c in ev.archive}
    return {
        "template": setting.template, "project": setting.project, "mind": req.mind, "metric": metric,
        "direction": setting.spec.metrics[metric].direction,
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


__all__ = ["MemoMind", "Pending", "Replay", "advance", "archive_records", "candidate_idea", "experiment_id", "make_mind", "run_of", "summary"]
