"""Minds by kind and role: ``agents.<role>.<kind>`` defines ``make(seed, config) -> mind``."""

from __future__ import annotations

import importlib
from typing import Any

from agents.minds.base import Mind
from bus.errors import LabError
from bus.schema import MIND_KINDS, MindKind


class UnknownMind(LabError, ValueError):
    pass


def make_mind(kind: MindKind, role: str, seed: int = 0, config: dict[str, Any] | None = None) -> Mind:
    if kind not in MIND_KINDS:  # the kind may come from untyped input (a CLI flag, a stored document)
        raise UnknownMind(f"unknown mind {kind!r}; choose one of {', '.join(MIND_KINDS)}")
    module = importlib.import_module(f"agents.{role}.{kind}")
    mind: Mind = module.make(seed, config or {})  # each role's make() returns that role's mind (agents/minds/base.py)
    return mind


def llm_unavailable(role: str, config: dict[str, Any] | None = None, model: str | None = None) -> str | None:
    """Why ``role`` could not think with an llm mind here (None: it can), without building one.

    Agents report this in their heartbeat, so `lab run --mind llm` against a running lab is
    refused at once with the reason instead of failing minutes later inside the project.
    """
    from agents.minds.llm.config import load_config
    from agents.minds.llm.errors import MindConfigError

    config = dict(config or {})
    if config.get("model_client") is not None:  # tests and replays hand over a ready client
        return None
    if model:
        config["model"] = model
    try:
        load_config(config).for_role(role).api_key()
    except MindConfigError as e:
        return str(e)
    return None
