"""A planted testbed for `lab evolve`'s loop, in process: one operator composition is truly better by a known margin,
every other composition is equal (in expectation), and per-seed noise is shared across candidates (paired) plus a
little of each candidate's own. Used by the unit tests and by bench/evolve.py."""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field

import numpy as np

from agents.evolve.offline import OfflineEvolveMind, render
from agents.evolve.race import Loop, LoopConfig, Report, Run
from bus.schema.evolve import Candidate, EvolveSpec, IterationSummary, PreferencePair, Program, Proposal, Split

SPEC = EvolveSpec.model_validate({
    "hook": {"anchor": "EVOLVED_MERGE = None\n", "function": "merge", "signature": "def merge(task_vectors, args, gen):",
             "assign": "EVOLVED_MERGE = merge", "describe": "planted"},
    "fixed": "Fixed: everything but merge().",
    "splits": {"fit": "none", "dev": "planted dev noise", "test": "planted test noise"},
    "baseline": "sum",
    "seeds": {"first": 3, "step": 3, "most": 9, "test": 10, "test_from": 1000},
    "operators": {"stage": {"op_trim": {"params": {"density": [0.2, 0.5, 0.8]}}, "op_elect": {}, "op_clip": {}},
                  "reduce": ["reduce_sum", "reduce_mean"], "post": ["post_norm"]},
    "programs": {"sum": {"reduce": "reduce_sum"}, "mean": {"reduce": "reduce_mean"}},
})
PLANTED = Program(stage=[("op_elect", {})], reduce="reduce_sum", post="post_norm")
PROBE = np.random.default_rng(7).normal(size=(3, 16))


def _ops() -> dict[str, object]:
    def op_trim(t: np.ndarray, d: float) -> np.ndarray:
        k = max(1, int(round(d * t.shape[1])))
        th = -np.sort(-np.abs(t), axis=1)[:, k - 1:k]
        return t * (np.abs(t) >= th)

    def op_elect(t: np.ndarray) -> np.ndarray:
        return t * (np.sign(t) == np.sign(t.sum(0)))

    def op_clip(t: np.ndarray) -> np.ndarray:
        return np.clip(t, -1, 1)

    def post_norm(m: np.ndarray, t: np.ndarray) -> np.ndarray:
        return m * (np.linalg.norm(t, axis=1).mean() / max(np.linalg.norm(m), 1e-12))

    return {"op_trim": op_trim, "op_elect": op_elect, "op_clip": op_clip, "post_norm": post_norm, "np": np,
            "reduce_sum": lambda t: t.sum(0), "reduce_mean": lambda t: t.mean(0)}


def output(code: str) -> np.ndarray:
    ns = _ops()
    exec(compile(code, "<candidate>", "exec"), ns)  # noqa: S102 - the planted testbed runs its own rendered programs
    return np.asarray(ns["merge"](PROBE.copy(), None, None))


def target() -> np.ndarray:
    return output(render(PLANTED, SPEC.hook, SPEC.operators))


@dataclass
class Planted:
    """Evaluate for the loop (over a flat landscape the offline search is random search: at 6 x 6 it finds the planted
    program for 8 of mind seeds 0-4 x two shapes; the tests use mind seed 1).
    Score = 0.8 + margin if the candidate computes the planted composition, + noise."""

    margin: float
    shared_sd: float = 0.02
    own_sd: float = 0.004
    cost_s: float = 0.0  # simulated seconds per seed (bench)
    jobs: int = 0
    seed_runs: int = 0
    _target: np.ndarray = field(default_factory=target)

    async def __call__(self, cid: str, proposal: Proposal, seeds: list[int], split: Split) -> Run:
        self.jobs += 1
        self.seed_runs += len(seeds)
        try:
            out = output(proposal.code)
        except Exception as e:
            return Run(ok=False, reason=f"crashed: {e}", job_id=f"job-{self.jobs}")
        good = out.shape == self._target.shape and np.allclose(out, self._target)
        key = hashlib.sha1(np.round(out, 9).tobytes()).hexdigest()[:12]
        values = []
        for s in seeds:
            shared = random.Random(f"{split}-{s}").gauss(0, self.shared_sd)
            own = random.Random(f"{split}-{s}-{key}").gauss(0, self.own_sd)
            values.append(0.8 + (self.margin if good else 0.0) + shared + own)
        if self.cost_s:
            time.sleep(0)  # accounted, not slept: bench/evolve.py reports cost_s x seed_runs
        return Run(ok=True, seeds=list(seeds), values=values, behaviour=[f"{key}-{s}" for s in seeds], job_id=f"job-{self.jobs}")


@dataclass
class Memory:
    archive: list[Candidate] = field(default_factory=list)
    summaries: list[IterationSummary] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def candidates(self, archive: list[Candidate]) -> None:
        self.archive = list(archive)

    def iteration(self, s: IterationSummary, prompt: str) -> None:
        self.summaries.append(s)

    def preference(self, pair: PreferencePair) -> None:
        self.pairs.append(pair)

    def say(self, line: str) -> None:
        self.lines.append(line)


def pool() -> list[Proposal]:
    return [Proposal(name=n, code=render(p, SPEC.hook, SPEC.operators), builtin=True, program=p) for n, p in SPEC.programs.items()]


async def run_planted(margin: float, iterations: int = 6, population: int = 6, seed: int = 1, max_runs: int = 80,
                      first: int | None = None, most: int | None = None) -> tuple[Report, Memory, Planted]:
    spec = SPEC if first is None else SPEC.model_copy(update={"seeds": SPEC.seeds.model_copy(update={"first": first, "most": most or first})})
    ev, mem = Planted(margin), Memory()
    cfg = LoopConfig(spec=spec, task="planted", metric="score", direction="higher", iterations=iterations, population=population,
                     keep=3, max_runs=max_runs, deadline=time.monotonic() + 600)
    report = await Loop(cfg, OfflineEvolveMind(spec, pool(), seed), ev, mem).run()
    return report, mem, ev
