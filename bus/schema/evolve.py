"""The Self-Developing loop's records (`lab evolve`): what a template declares, candidates as code, their per-seed
scores, the paired comparisons that select them, and preference pairs with their evidence.

The loop's logic (``agents/evolve/``), its minds and the PI that runs it as an evolve project
(``agents/pi/evolve.py``) all speak these shapes; the files written to ``evolve/`` are these
models as JSON lines, and a template's ``evolve.yaml`` is an ``EvolveSpec``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bus.schema.archive import ArchiveRecord
from bus.schema.base import Model
from bus.schema.project import Idea
from bus.schema.results import RunRecord
from bus.schema.template import TemplateSpec

Split = Literal["fit", "dev", "test"]
CandidateState = Literal["succeeded", "failed"]


class HookSpec(Model):
    """Where a candidate goes in a template: a line its code replaces, and the function it must define."""

    anchor: str  # a line of experiment.py that occurs once; the candidate's code replaces it
    function: str
    signature: str
    assign: str  # the line after the candidate's code that switches it in
    describe: str  # for the prompt: what the function gets and returns


class SeedPlan(Model):
    """Seeds of the race: ``first`` for a new candidate, ``step`` more for one close to the best, at most ``most``;
    the final comparison runs ``test`` seeds from ``test_from`` on (seeds no candidate saw during the loop)."""

    first: int = Field(3, ge=2)
    step: int = Field(3, ge=1)
    most: int = Field(9, ge=2)
    test: int = Field(10, ge=2)
    test_from: int = Field(1000, ge=1)


class OperatorSpec(Model):
    params: dict[str, list[float]] = {}  # each parameter's values the offline mind may choose
    gen: bool = False  # takes the seeded generator (random operators)


class Operators(Model):
    """The template's composable primitives (functions of experiment.py) the offline mind writes programs over."""

    stage: dict[str, OperatorSpec] = {}  # stacked task vectors -> same shape
    reduce: list[str] = []  # stacked task vectors -> one merged vector
    post: list[str] = []  # (merged, task vectors) -> merged vector


class Program(Model):
    """One merge algorithm over the operators: stages in order, a reducer, an optional post operator."""

    stage: list[tuple[str, dict[str, float]]] = []
    reduce: str
    post: str | None = None


class EvolveSpec(Model):
    """A template's ``evolve.yaml``: the hook, what is fixed, where each split comes from, the baseline, the seeds."""

    hook: HookSpec
    fixed: str  # stated in every prompt: what the loop does not search
    splits: dict[Split, str]  # where each split's data comes from, in words
    split_flag: str = "split"  # the experiment's option that picks the split scored
    baseline: str  # the built-in merge_* (without prefix) the final comparison is against
    overrides: dict[str, float | int | str | bool] = {}  # knobs every evolve run sets (a testbed that separates methods)
    seeds: SeedPlan = SeedPlan()
    operators: Operators = Operators()
    programs: dict[str, Program] = {}  # built-ins as programs, so the offline mind can mutate them

    @model_validator(mode="after")
    def _three_splits(self) -> EvolveSpec:
        if set(self.splits) != {"fit", "dev", "test"}:
            raise ValueError("evolve.yaml: splits must say where fit, dev and test come from")
        return self


class Proposal(Model):
    """One algorithm a mind proposes: Python source defining the hook function, and why."""

    name: str = Field(min_length=1, max_length=120)
    code: str = Field(min_length=1)
    rationale: str = ""
    parents: list[str] = []  # ids of the candidates it was derived from
    program: Program | None = None  # the offline mind's program behind the code
    builtin: bool = False  # one of the template's own merge_* functions


class Candidate(Model):
    """A proposal as run on one split, its per-seed scores accumulated over every job that ran it."""

    id: str  # i<iteration>-c<index>, or test-<id> for a final test-split run
    iteration: int
    name: str
    code: str
    rationale: str = ""
    parents: list[str] = []
    program: Program | None = None
    builtin: bool = False
    diff: str = ""  # unified diff against its first parent's code (or the baseline's): what the mind changed
    split: Split = "dev"
    state: CandidateState
    seeds: list[int] = []
    values: list[float] = []  # the primary metric, one per seed, in the order of ``seeds``
    behaviour: list[str] = []  # per seed, a hash of what the merged model predicts on fit and dev
    score: float | None = None  # mean of ``values``; None when it failed
    stderr: float | None = None
    same_as: str = ""  # the id of an earlier candidate with the same behaviour on every seed: one algorithm, named once
    eliminated: str = ""  # why the race dropped it (a paired interval against the best below zero)
    metrics: dict[str, float] = {}
    reason: str = ""  # why it failed: a refused edit, a crash, a timeout
    job_ids: list[str] = []  # empty when no job ran (the guarded edit refused the code)
    wall_s: float = 0.0


class Comparison(Model):
    """A paired comparison of two candidates on the seeds both ran: ``diff`` is a minus b, signed so positive is better."""

    a: str
    b: str
    split: Split
    seeds: list[int]
    a_values: list[float]
    b_values: list[float]
    diff: float
    lo: float  # the confidence interval of the mean paired difference
    hi: float
    p: float
    level: float = 0.95

    @property
    def better(self) -> bool:
        return self.lo > 0


class Evidence(Model):
    chosen: str
    rejected: str
    metric: str
    comparison: Comparison


class PreferencePair(Model):
    """A chosen and a rejected algorithm for one prompt, as TRL's DPOTrainer reads them (plain strings), written only
    when the chosen beat the rejected on dev by more than seed noise; ``evidence`` says by how much."""

    prompt: str
    chosen: str
    rejected: str
    evidence: Evidence


class IterationSummary(Model):
    iteration: int
    best: float | None
    best_lo: float | None = None  # the best candidate's mean ± ~2 stderr
    best_hi: float | None = None
    median: float | None
    succeeded: int
    failed: int
    best_id: str | None = None
    runs: int = 0  # jobs this iteration (racing included)


EvolveMindKind = Literal["offline", "llm"]


class EvolveRequest(Model):
    """How `lab evolve` asks the lab for an evolve project (``StartProject.evolve``): the loop's settings, the
    template's ``evolve.yaml``, and the first population's code (the template's built-ins, then any --seed-code)."""

    spec: EvolveSpec
    iterations: int = Field(ge=1)
    population: int = Field(ge=1)
    keep: int = Field(3, ge=1)
    max_runs: int = Field(ge=4)  # every job, the final test runs included
    wall_time_s: float = Field(gt=0)  # after this (from the start), no new iteration starts; the final test still runs
    mind: EvolveMindKind = "offline"
    model: str | None = None  # the llm mind's model
    pool: list[Proposal] = []  # the template's built-ins, the baseline first
    seeds: list[Proposal] = []  # --seed-code: joins the first population


class EvolveState(Model):
    """An evolve project's durable part of the PI's state: the decisions taken so far, which a replay of the loop reuses.

    The loop is replayed from the start each time a result arrives: a proposal or a deadline decision taken
    once is read back here (so the replay takes the same path), an evaluation whose experiment has its result
    returns it, and one still running waits. What the replay found is kept for `lab status`, the web view
    and the files ``evolve/`` (written to the object store at the end).
    """

    request: EvolveRequest
    proposals: dict[int, list[Proposal]] = {}  # per iteration, what the mind proposed
    late: dict[int, bool] = {}  # per iteration, whether the wall time had passed when it was to start
    archive: list[Candidate] = []
    summaries: list[IterationSummary] = []
    pairs: list[PreferencePair] = []
    prompts: dict[int, str] = {}
    said: int = 0  # the replay's lines already logged
    final: list[Candidate] = []
    comparisons: dict[str, Comparison] = {}
    verdict: str = ""
    beat_baseline: bool = False
    runs: int = 0
    stopped: str = ""


class EvolveSetting(Model):
    """What the evolve loop reads of its project (the PI's state), passed to it by the PI."""

    project: str
    template: str
    spec: TemplateSpec
    seed: int
    started_at: float
    direction: str = ""


class Evaluated(Model):
    """One evaluation's experiment as the PI holds it: still running, or its runs (or why it failed without any)."""

    status: Literal["requested", "done", "failed"]
    runs: list[RunRecord] = []
    reason: str = ""


class Evaluation(Model):
    """An evaluation the loop asks for: the PI sends it to the engineer as an ExperimentRequest."""

    experiment_id: str
    idea: Idea  # the candidate: its code a guarded edit at the template's hook (``idea.code.edits``)
    seeds: list[int]
    fixed: dict[str, float | int | str | bool]  # the split and the template's evolve overrides
    iteration: int


class EvolveStep(Model):
    """What one replay of the loop decided, for the PI to perform: experiments to ask for, lines to log, and at the end
    the files of ``evolve/``, the idea archive's records and the verdict."""

    evolve: EvolveState
    ask: list[Evaluation] = []
    lines: list[str] = []
    done: bool = False
    verdict: str = ""
    accepted: bool = False
    failed: bool = False
    files: dict[str, bytes] = {}
    records: list[ArchiveRecord] = []


__all__ = [
    "Candidate", "CandidateState", "Comparison", "Evaluated", "Evaluation", "EvolveMindKind", "EvolveRequest", "EvolveSetting",
    "EvolveSpec", "EvolveState", "EvolveStep", "Evidence", "HookSpec", "IterationSummary", "OperatorSpec", "Operators",
    "PreferencePair", "Program", "Proposal", "SeedPlan", "Split",
]
