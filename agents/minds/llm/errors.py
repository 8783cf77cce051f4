"""What the llm mind raises, so a role workflow catches exactly what it can handle.

    LLMMindError
    ├── MindConfigError     the mind's configuration is unusable (bad YAML, unknown field, no API key)
    ├── InvalidAnswer       one answer broke a rule the schema cannot express (fed back to the model, retried)
    └── MindFailed          retries ran out: the role turns it into a StepFailed and the PI decides
        └── EndpointDown    the model's endpoint is not answering (its circuit breaker is open): later steps would fail too
"""

from __future__ import annotations


class LLMMindError(Exception):
    """Base of every error the llm mind raises on purpose."""


class MindConfigError(LLMMindError, ValueError):
    pass


class InvalidAnswer(LLMMindError, ValueError):
    """The model's answer parsed but is wrong for this step; the message is shown to the model."""


class MindFailed(LLMMindError):
    """A step could not get a usable answer within its retries."""

    def __init__(self, role: str, step: str, reason: str) -> None:
        self.role = role
        self.step = step
        self.reason = " ".join(reason.split())[:500]  # one line, bounded, for a StepFailed message
        super().__init__(f"{role}.{step}: {self.reason}")


class EndpointDown(MindFailed):
    """The endpoint stopped answering and its breaker is open: the project should end, not try its next step."""
