"""Minds by kind and role: ``agents.minds.<kind>.<role>`` defines ``make(seed, config) -> mind``."""

from __future__ import annotations

import importlib
from typing import Any

KINDS = ("offline", "llm")


class UnknownMind(ValueError):
    pass


def make_mind(kind: str, role: str, seed: int = 0, config: dict[str, Any] | None = None) -> Any:
    if kind not in KINDS:
        raise UnknownMind(f"unknown mind {kind!r}; choose one of {', '.join(KINDS)}")
    module = importlib.import_module(f"agents.minds.{kind}.{role}")
    return module.make(seed, config or {})
