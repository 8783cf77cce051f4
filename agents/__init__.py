"""The six roles. Each ``agents/<role>/workflow.py`` defines its Role subclass as ``ROLE``; the role's minds and prompt sit beside it."""

from __future__ import annotations

import importlib

from agents.base import Role
from bus.schema import ROLES


def role_class(name: str) -> type[Role]:
    if name not in ROLES:
        raise ValueError(f"unknown role {name!r}; choose one of {', '.join(ROLES)}")
    role: type[Role] = importlib.import_module(f"agents.{name}.workflow").ROLE
    return role
