"""Executors by name; each module holds one, built from its own settings model."""

from __future__ import annotations

import importlib
from typing import Any

from bus.schema import NatsAccess
from services.executors.base import Executor, ExecutorError

_MODULES = {"local": "LocalExecutor", "docker": "DockerExecutor", "kubernetes": "KubernetesExecutor"}
EXECUTOR_KINDS = tuple(_MODULES)


def make_executor(kind: str, options: dict[str, Any] | None = None) -> Executor:
    """``options`` come from the ``executor:`` section of the lab config; each executor validates its own."""
    if kind not in _MODULES:
        raise ExecutorError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTOR_KINDS)}")
    module = importlib.import_module(f"services.executors.{kind}")
    return getattr(module, _MODULES[kind])(**(options or {}))


__all__ = ["Executor", "ExecutorError", "NatsAccess", "make_executor", "EXECUTOR_KINDS"]
