"""The Self-Developing loop itself: propose, race on seeds, merge duplicates, prefer, and the final paired test.

Pure orchestration over two injected activities: ``Evaluate`` runs one candidate on some seeds of one split (a
job, for `lab evolve`; a function call, in tests), and ``Sink`` records what happens (``evolve/``'s files).

- **Splits.** The experiment fits its fitted choices (model_merging: the scaling coefficient) on the fit split;
  the loop selects on dev; the final comparison reads the test split, on seeds no candidate ran before.
- **Racing.** A new candidate runs ``seeds.first`` seeds. Then, round after round, each contender is compared,
  paired on shared seeds, with the leader: one whose interval lies below zero is eliminated; the closest
  others (at most ``keep``), and the leader, get ``seeds.step`` more seeds, up to ``seeds.most``.
- **Duplicates.** A candidate whose per-seed behaviour (predictions on fit and dev) equals an earlier one's
  on every shared seed is that candidate under another name: recorded ``same_as`` it, never raced.
- **Verdict.** The leader, the template's baseline and the best built-in run on the test seeds; the report is
  the paired difference of the leader against each with its interval, and "nothing beat the baseline" when the
  interval against the baseline does not lie above zero.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agents.evolve import workflow
from agents.evolve.stats import paired
from agents.evolve.workflow import EvolveMind, ProposeRequest
from bus.schema import Direction
from bus.schema.evolve import Candidate, Comparison, EvolveSpec, IterationSummary, PreferencePair, Proposal, Split


@dataclass
class Run:
    """What one evaluation (one job) returned."""

    ok: bool
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    behaviour: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    job_id: str = ""
    wall_s: float = 0.0


class Evaluate(Protocol):
    async def __call__(self, cid: str, proposal: Proposal, seeds: list[int], split: Split) -> Run: ...


class Sink(Protocol):
    def candidates(self, archive: list[Candidate]) -> None: ...
    def iteration(self, s: IterationSummary, prompt: str) -> None: ...
    def preference(self, pair: PreferencePair) -> None: ...
    def say(self, line: str) -> None: ...


@dataclass
class LoopConfig:
    spec: EvolveSpec
    task: str
    metric: str
    direction: Direction
    iterations: int
    population: int
    keep: int
    max_runs: int
    deadline: float  # time.monotonic() after which no new iteration starts
    seed_proposals: list[Proposal] = field(default_factory=list)
    # Whether iteration i may no longer start (default: past ``deadline``); a replayed loop decides it once and reads it back.
    late: Callable[[int], bool] | None = None


@dataclass
class Report:
    archive: list[Candidate]
    summaries: list[IterationSummary]
    final: list[Candidate]
    comparisons: dict[str, Comparison]  # "baseline", "builtin"
    verdict: str
    beat_baseline: bool
    runs: int
    stopped: str = ""
    pairs: int = 0


FINAL_RUNS = 3  # the leader, the baseline, the best built-in: reserved in the run budget


def absorb(c: Candidate, run: Run) -> Candidate:
    """``c`` with one more job's seeds (or its failure) added."""
    jobs = [*c.job_ids, run.job_id] if run.job_id else c.job_ids
    if not run.ok:
        return c.model_copy(update={"state": "failed", "reason": run.reason, "job_ids": jobs, "wall_s": c.wall_s + run.wall_s})
    return workflow.scored(c.model_copy(update={
        "state": "succeeded", "seeds": [*c.seeds, *run.seeds], "values": [*c.values, *run.values],
        "behaviour": [*c.behaviour, *run.behaviour], "metrics": run.metrics or c.metrics, "job_ids": jobs,
        "wall_s": c.wall_s + run.wall_s,
    }))


def duplicate_of(c: Candidate, earlier: list[Candidate]) -> str:
    """The id of an earlier candidate with the same behaviour on every shared seed (at least two), else ""."""
    mine = dict(zip(c.seeds, c.behaviour, strict=False))
    for e in earlier:
        if e.id == c.id or e.same_as or e.state != "succeeded" or not e.behaviour:
            continue
        theirs = dict(zip(e.seeds, e.behaviour, strict=False))
        shared = [s for s in mine if s in theirs]
        if len(shared) >= 2 and all(mine[s] == theirs[s] for s in shared):
            return e.id
    return ""


def diff_of(code: str, parent: str, name: str, parent_name: str) -> str:
    return "".join(difflib.unified_diff(parent.splitlines(True), code.splitlines(True), f"{parent_name}.py", f"{name}.py"))


class Loop:
    """One run of the loop; ``run()`` returns its Report."""

    def __init__(self, cfg: LoopConfig, mind: EvolveMind, evaluate: Evaluate, sink: Sink) -> None:
        self.cfg, self.mind, self.evaluate, self.sink = cfg, mind, evaluate, sink
        self.archive: list[Candidate] = []
        self.runs = 0
        self.pairs = 0

    def _left(self) -> int:
        return self.cfg.max_runs - FINAL_RUNS - self.runs

    async def _eval(self, c: Candidate, seeds: list[int], split: Split = "dev") -> Candidate:
        self.runs += 1
        p = Proposal(name=c.name, code=c.code, rationale=c.rationale, parents=c.parents, program=c.program, builtin=c.builtin)
        return absorb(c, await self.evaluate(c.id, p, seeds, split))

    def _replace(self, c: Candidate) -> None:
        self.archive = [c if a.id == c.id else a for a in self.archive]

    async def run(self) -> Report:
        summaries: list[IterationSummary] = []
        stopped = ""
        for it in range(self.cfg.iterations):
            late = self.cfg.late(it) if self.cfg.late is not None else time.monotonic() > self.cfg.deadline
            if self._left() < 1 or late:
                stopped = "the run budget" if self._left() < 1 else "the wall time"
                break
            summaries.append(await self._iteration(it))
        return await self._final(summaries, stopped)

    async def _iteration(self, it: int) -> IterationSummary:
        cfg = self.cfg
        before = self.runs
        shown = workflow.examples(self.archive, cfg.keep, cfg.direction)
        bad = workflow.worst(self.archive, 1, cfg.direction) if it else []
        k = min(cfg.population, self._left())
        text = workflow.prompt(cfg.spec, cfg.task, cfg.metric, cfg.direction, k, shown, bad)
        proposals = list(cfg.seed_proposals[:k]) if it == 0 else []
        if len(proposals) < k:
            req = ProposeRequest(iteration=it, k=k - len(proposals), prompt=text, examples=shown, tried=[c.code for c in self.archive])
            try:
                proposals += (await self.mind.propose(req))[: req.k]
            except Exception as e:  # a mind that fails loses this iteration's proposals, not the loop
                self.sink.say(f"iteration {it}: the mind proposed nothing: {e}")
        batch = [self._candidate(it, i, p) for i, p in enumerate(proposals)]
        batch = await self._first_seeds(batch)
        self.archive += batch
        await self._race()
        batch = [next(a for a in self.archive if a.id == c.id) for c in batch]
        for pair in workflow.preferences(text, batch, cfg.direction, cfg.metric):
            self.sink.preference(pair)
            self.pairs += 1
        s = workflow.summary(it, batch, self.archive, cfg.direction, self.runs - before)
        self.sink.candidates(self.archive)
        self.sink.iteration(s, text)
        return s

    def _candidate(self, it: int, i: int, p: Proposal) -> Candidate:
        parent = next((a for a in self.archive if p.parents and a.id == p.parents[0]), None)
        base = next((a for a in self.archive if a.builtin and a.name == self.cfg.spec.baseline), None)
        ref = parent or base
        diff = diff_of(p.code, ref.code, p.name, ref.name) if ref is not None and ref.code != p.code else ""
        return Candidate(id=f"i{it}-c{i}", iteration=it, name=p.name, code=p.code, rationale=p.rationale, parents=p.parents,
                         program=p.program, builtin=p.builtin, diff=diff, state="succeeded")

    async def _first_seeds(self, batch: list[Candidate]) -> list[Candidate]:
        """Each new candidate on the first seeds; refused code fails without a job; duplicates are named once."""
        first = list(range(self.cfg.spec.seeds.first))
        ran: list[Candidate] = []
        for c in batch:
            try:
                workflow.check_code(self.cfg.spec.hook, c.code)
            except Exception as e:
                ran.append(c.model_copy(update={"state": "failed", "reason": f"edit refused: {e}"}))
                continue
            ran.append(c)
        todo = [c for c in ran if c.state == "succeeded"]
        done = {c.id: c for c in await asyncio.gather(*(self._eval(c, first) for c in todo))}
        out = [done.get(c.id, c) for c in ran]
        for i, c in enumerate(out):
            if c.state == "succeeded" and (twin := duplicate_of(c, [*self.archive, *out[:i]])):
                out[i] = c.model_copy(update={"same_as": twin})
                self.sink.say(f"{c.id} {c.name}: the same behaviour as {twin} on every seed; named once, as {twin}")
        return out

    async def _race(self) -> None:
        """Long because each round compares every contender with the leader, eliminates, then buys seeds for the closest."""
        plan, d = self.cfg.spec.seeds, self.cfg.direction
        while True:
            alive = workflow.ranked(self.archive, d)
            if len(alive) < 2:
                return
            leader, close = alive[0], []
            for c in alive[1:]:
                cmp = paired(c, leader, d)
                if cmp is not None and cmp.hi < 0:
                    why = f"worse than {leader.id} by {-cmp.diff:.4f} (paired 95% CI [{cmp.lo:.4f}, {cmp.hi:.4f}], {len(cmp.seeds)} seeds)"
                    self._replace(c.model_copy(update={"eliminated": why}))
                elif len(c.values) < plan.most:
                    close.append((abs(cmp.diff) if cmp else 0.0, c))
            close.sort(key=lambda t: t[0])
            more = [c for _, c in close[: self.cfg.keep]]
            if more and len(leader.values) < plan.most and len(leader.values) <= max(len(c.values) for c in more):
                more.append(leader)
            if not more or self._left() < len(more):
                return
            grown = await asyncio.gather(*(self._eval(c, [s for s in range(len(c.seeds), len(c.seeds) + plan.step)]) for c in more))
            for c in grown:
                self._replace(c)

    async def _final(self, summaries: list[IterationSummary], stopped: str) -> Report:
        """The leader, the baseline and the best built-in on the held-out test seeds; paired comparisons; the verdict."""
        cfg, d = self.cfg, self.cfg.direction
        plan = cfg.spec.seeds
        seeds = list(range(plan.test_from, plan.test_from + plan.test))
        ranked = workflow.ranked(self.archive, d)
        baseline = next((a for a in self.archive if a.builtin and a.name == cfg.spec.baseline and a.state == "succeeded"), None)
        builtin = next((a for a in ranked if a.builtin), None)
        picks = [c for c in (ranked[0] if ranked else None, baseline, builtin) if c is not None]
        unique = list({c.id: c for c in picks}.values())
        tested = await asyncio.gather(*(self._eval(self._test_copy(c), seeds, "test") for c in unique))
        by = {c.id.removeprefix("test-"): c for c in tested}
        comparisons: dict[str, Comparison] = {}
        if ranked and baseline is not None and ranked[0].id != baseline.id:
            if (cmp := paired(by[ranked[0].id], by[baseline.id], d)) is not None:
                comparisons["baseline"] = cmp
        if ranked and builtin is not None and ranked[0].id != builtin.id:
            if (cmp := paired(by[ranked[0].id], by[builtin.id], d)) is not None:
                comparisons["builtin"] = cmp
        beat, verdict = self._verdict(ranked[0] if ranked else None, baseline, comparisons)
        return Report(archive=self.archive, summaries=summaries, final=list(tested), comparisons=comparisons, verdict=verdict,
                      beat_baseline=beat, runs=self.runs, stopped=stopped, pairs=self.pairs)

    def _test_copy(self, c: Candidate) -> Candidate:
        return c.model_copy(update={"id": f"test-{c.id}", "split": "test", "seeds": [], "values": [], "behaviour": [], "job_ids": [],
                                    "score": None, "stderr": None, "wall_s": 0.0})

    def _verdict(self, best: Candidate | None, baseline: Candidate | None, comparisons: dict[str, Comparison]) -> tuple[bool, str]:
        name = self.cfg.spec.baseline
        if best is None:
            return False, "no candidate ran"
        if baseline is None:
            return False, f"the baseline ({name}) did not run: no comparison against it"
        cmp = comparisons.get("baseline")
        if cmp is None:
            return False, f"nothing beat the baseline: the best on dev is the baseline ({name}) itself"
        ci = f"{cmp.diff:+.4f}, 95% CI [{cmp.lo:+.4f}, {cmp.hi:+.4f}], p = {cmp.p:.3g}, {len(cmp.seeds)} test seeds"
        if cmp.better:
            return True, f"{best.name} beat the baseline ({name}) on the held-out test split: {ci}"
        return False, f"nothing beat the baseline ({name}): the best on dev, {best.name}, differs from it on the test split by {ci}"


__all__ = ["FINAL_RUNS", "Evaluate", "LoopConfig", "Loop", "Report", "Run", "Sink", "absorb", "diff_of", "duplicate_of"]
