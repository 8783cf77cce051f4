"""The Self-Developing loop's records (`lab evolve`): candidates as code, their scores, preference pairs.

The loop's logic (``agents/evolve/workflow.py``), its minds and the service that runs the
candidates (``services/cli/evolve.py``) all speak these shapes; the files written
to ``evolve/`` are these models as JSON lines.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bus.schema.base import Model

Split = Literal["dev", "test"]
CandidateState = Literal["succeeded", "failed"]


class Proposal(Model):
    """One algorithm a mind proposes: Python source defining the hook function, and why."""

    name: str = Field(min_length=1, max_length=80)
    code: str = Field(min_length=1)
    rationale: str = ""
    parents: list[str] = []  # ids of the candidates it was derived from


class Candidate(Model):
    """A proposal as run: on the development split during the loop, once on the test split at the end."""

    id: str  # i<iteration>-c<index>, or final-<id> for a test-split run
    iteration: int
    name: str
    code: str
    rationale: str = ""
    parents: list[str] = []
    split: Split = "dev"
    state: CandidateState
    score: float | None = None  # the primary metric's mean over seeds; None when it failed
    stderr: float | None = None
    metrics: dict[str, float] = {}
    reason: str = ""  # why it failed: a refused edit, a crash, a timeout
    job_id: str = ""  # empty when no job ran (the guarded edit refused the code)
    wall_s: float = 0.0


class PreferencePair(Model):
    """Best vs worst of one iteration, as TRL's DPOTrainer reads a preference dataset (plain strings)."""

    prompt: str
    chosen: str
    rejected: str


class IterationSummary(Model):
    iteration: int
    best: float | None
    median: float | None
    succeeded: int
    failed: int
    best_id: str | None = None


__all__ = ["Candidate", "CandidateState", "IterationSummary", "PreferencePair", "Proposal", "Split"]
