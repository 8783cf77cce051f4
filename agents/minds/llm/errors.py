"""What the llm mind raises, so a role workflow catches exactly what it can handle.

    LLMMindError
    ├── MindConfigError     the mind's configuration is unusable (bad YAML, unknown field, no API key)
    ├── InvalidAnswer       one answer broke a rule the schema cannot express (fed back to the model, retried)
    └── MindFailed          retries ran out: the role turns it into a StepFailed and the PI decides
        │                   (also a bus.errors.MindError, which the workflow catches)
        └── EndpointDown    the model's endpoint is not answering (its circuit breaker is open): later steps would fail too

LLMMindError is a bus.errors.LabError, so the CLI prints any of these as one line.
"""

from __future__ import annotations

from bus.errors import LabError, MindError, MindUnavailable


class LLMMindError(LabError):
    """Base of every error the llm mind raises on purpose."""


class MindConfigError(LLMMindError, ValueError):
    pass


class InvalidAnswer(LLMMindError, ValueError):
    """The model's answer parsed but is wrong for this step; the message is shown to the model."""


class MindFailed(LLMMindError, MindError):
    """A step could not get a usable answer within its retries."""

    def __init__(self, role: str, step: str, reason: str) -> None:
        self.role = role
        self.step = step
        super().__init__(reason)  # MindError keeps it as .reason: one line, bounded, for a StepFailed message

    def __str__(self) -> str:
        return f"{self.role}.{self.step}: {self.reason}"


class EndpointDown(MindFailed, MindUnavailable):
    """The endpoint stopped answering and its breaker is open: the project should end, not try its next step."""
