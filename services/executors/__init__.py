"""Executors by name; each module holds one, built from its own settings model."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from bus.schema import EXECUTOR_KINDS, ExecutorKind, NatsAccess
from services.executors.base import Executor, ExecutorError

# One class per kind; the kinds themselves are declared once, in bus.schema.kinds.
_MODULES: dict[ExecutorKind, str] = {"local": "LocalExecutor", "docker": "DockerExecutor", "kubernetes": "KubernetesExecutor"}


def make_executor(kind: str, options: dict[str, Any] | None = None) -> Executor:
    """``options`` come from the ``executor:`` section of the lab config; each executor validates its own."""
    if kind not in EXECUTOR_KINDS:
        raise ExecutorError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTOR_KINDS)}")
    module = importlib.import_module(f"services.executors.{kind}")
    # The class takes its own settings model's fields as keywords; it validates them itself.
    build: Callable[..., Executor] = getattr(module, _MODULES[kind])  # kind is an ExecutorKind once checked
    return build(**(options or {}))


__all__ = ["Executor", "ExecutorError", "NatsAccess", "make_executor", "EXECUTOR_KINDS"]
