"""The base model and the names of the parties that talk on the bus."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

RoleName = Literal["pi", "literature", "engineer", "analyst", "writer", "reviewer"]
ROLES: tuple[RoleName, ...] = ("pi", "literature", "engineer", "analyst", "writer", "reviewer")
# Parties that are not agents: the human co-PI (through the CLI) and the job runner.
Sender = Literal["pi", "literature", "engineer", "analyst", "writer", "reviewer", "copi", "runner"]
Recipient = Literal["pi", "literature", "engineer", "analyst", "writer", "reviewer", "copi", "all"]
Direction = Literal["higher", "lower"]


class Model(BaseModel):
    """Every contract rejects unknown fields: a misspelt field is an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")
