"""Stand-ins for the bus's stores and for an executor, for tests of roles and of the host without the real ones."""

from __future__ import annotations

import json
from typing import Any

from bus.errors import ArtifactMissing
from bus.schema import JobPhase

# A small template spec: two ordinary knobs with candidates, one fairness knob, a lower-is-better metric.
TOY_SPEC = {
    "name": "toy",
    "title": "A toy template",
    "task": "Minimise a quadratic.",
    "knobs": {
        "lr": {"type": "float", "default": 0.1, "min": 0.001, "max": 1.0, "candidates": [0.01, 0.5]},
        "width": {"type": "int", "default": 8, "min": 1, "max": 64, "candidates": [4, 16]},
        "steps": {"type": "int", "default": 100, "min": 1, "max": 1000, "fairness": True, "candidates": [500]},
    },
    "metrics": {"loss": {"direction": "lower", "primary": True}},
}


class MemoryStore:
    """The object store's interface over a dict; a missing name raises like the real one."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes) -> str:
        self.data[name] = data
        return name

    async def get(self, name: str) -> bytes:
        try:
            return self.data[name]
        except KeyError:
            raise ArtifactMissing(f"no artifact named {name!r}") from None

    async def list(self, prefix: str) -> list[str]:
        return sorted(n for n in self.data if n.startswith(prefix))


class DictCache:
    """The literature cache (``bus.store.KVCache``) over a dict, counting its hits, misses and puts."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.hits = self.misses = self.puts = 0

    async def get(self, key: str) -> Any:
        value = self.data.get(key)
        self.hits += value is not None
        self.misses += value is None
        return value

    async def put(self, key: str, value: Any) -> None:
        self.puts += 1
        self.data[key] = json.loads(json.dumps(value))  # what a KV bucket would hand back


class RecordingExecutor:
    """An executor that runs nothing: it keeps what it was asked to start, and every job it was given is running.

    Also the engineer's view of its jobs (``agents.engineer.jobs.Jobs``): no lab-wide ledger, so the
    engineer counts this project's jobs itself.
    """

    ledger = None
    results = None  # no result cache: every job runs

    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def runtime(self) -> str:
        return "recording"

    def capacity(self) -> int | None:
        return None

    async def submit(self, job: Any) -> None:
        self.submitted.append(job)

    async def poll(self, job_id: str) -> JobPhase:
        return JobPhase(state="running")

    async def cancel(self, job_id: str) -> None:
        pass

    async def cleanup(self, project: str) -> None:
        pass

    async def close(self) -> None:
        pass
