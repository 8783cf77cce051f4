"""The steps a role can fail at, named once: the PI reads ``StepFailed.step`` to decide what follows."""

from __future__ import annotations

from typing import Literal

Step = Literal["novelty_check", "references", "experiment", "analysis", "draft", "review"]
