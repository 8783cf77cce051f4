"""Which handler errors are permanent and which are transient.

Permanent ones are dead-lettered at once (bad input, a missing artifact, an
unknown template); transient ones are retried with backoff.
"""

from __future__ import annotations

from agents.base import Permanent, is_permanent
from bus.errors import ArtifactMissing, ConnectError, StateConflict
from bus.schema import TemplateError


def test_which_errors_are_permanent():
    from pydantic import BaseModel, ValidationError

    class M(BaseModel):
        x: int

    try:
        M.model_validate({"x": "nope"})
    except ValidationError as e:
        invalid = e
    for e in (Permanent("x"), ArtifactMissing("x"), invalid, TemplateError("x"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")):
        assert is_permanent(e), e
    for e in (ConnectError("x"), StateConflict("x"), TimeoutError(), ConnectionResetError(), RuntimeError("x")):
        assert not is_permanent(e), e
