"""What came of an idea: its outcome in a project, and the idea archive's record of it across projects.

The PI builds an ``IdeaOutcome`` for every finished idea from the analyst's
report (or, between waves, from the runs themselves, uncorrected) and shows
them to its mind with the next wave. When a project's analysis is done it
writes one ``ArchiveRecord`` per tried idea to the archive bucket, keyed by
(template, the idea's signature, project): later projects on the same
template read them, so they do not repeat what was tried and build on what
worked.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from bus.schema.base import Model
from bus.schema.project import CodeChange, Idea

OutcomeStatus = Literal["better", "worse", "inconclusive", "failed", "not_novel", "skipped", "pending", "seeded"]


class IdeaOutcome(Model):
    """One idea's result on the primary metric, signed so that ``improvement > 0`` is better."""

    idea_id: str
    title: str = ""
    changes: dict[str, Any] = {}
    code: CodeChange | None = None
    # better/worse/inconclusive: the comparison's verdict; failed: no run succeeded;
    # not_novel/skipped: never run; pending: still running; seeded: a template's own idea (seed_ideas.json), archived
    # when a project starts and replaced by what came of it if the project runs it; never counted as tried.
    status: OutcomeStatus
    metric: str = ""
    improvement: float | None = None
    effect_size: float | None = None  # Hedges' g, signed like improvement
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None  # None: not corrected yet (an interim outcome read from the runs)
    replicated: bool | None = None
    # "analysis": from the analyst's report; "runs": the PI's own interim reading between waves.
    source: Literal["analysis", "runs", "none"] = "none"
    reason: str = ""

    @property
    def measured(self) -> bool:
        return self.improvement is not None


class ArchiveRecord(Model):
    """One idea tried by one project on one template."""

    template: str
    signature: str  # idea_signature(changes, code): the same idea has the same one in every project
    project: str
    recorded_at: float  # when the analysis that produced the outcome was sent (deterministic under redelivery)
    direction: str = ""
    round: int = 0
    outcome: IdeaOutcome


_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def idea_signature(changes: dict[str, Any], code: CodeChange | None = None) -> str:
    """What makes two ideas the same experiment: the same knob values and the same code change."""
    what = {"changes": changes, "code": code.variant or code.summary if code is not None else None}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def signature_of(idea: Idea) -> str:
    return idea_signature(idea.changes, idea.code)


def seed_records(ideas: list[Idea], template: str, project: str, when: float, direction: str = "") -> list[ArchiveRecord]:
    """The template's own ideas (an AI Scientist template's seed_ideas.json) as archive records of status ``seeded``.

    Written when a project starts, under the key its outcome takes if the project runs the idea, which replaces it.
    """
    return [
        ArchiveRecord(
            template=template, signature=signature_of(i), project=project, recorded_at=when, direction=direction,
            outcome=IdeaOutcome(idea_id=i.id, title=i.title, changes=i.changes, code=i.code, status="seeded", reason=i.rationale),
        )
        for i in ideas
    ]


def key_token(value: str) -> str:
    """A KV key token: template and project names are kept readable, anything else becomes '_'."""
    return _KEY_SAFE.sub("_", value)[:64] or "_"


def archive_key(template: str, signature: str, project: str) -> str:
    return f"{key_token(template)}.{signature}.{key_token(project)}"
