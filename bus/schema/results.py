"""What a job produced: the experiment's final_info.json, the machine it ran on, one run's record."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict

from bus.schema.base import Model


class MetricStat(Model):
    mean: float
    stderr: float
    values: list[float] = []  # one per seed, in the order of FinalInfo.seeds


class FinalInfo(Model):
    """What a template's experiment.py writes to ``final_info.json``."""

    model_config = ConfigDict(extra="allow")
    metrics: dict[str, MetricStat]
    seeds: list[int]
    config: dict[str, Any] = {}
    # The compute each seed's run used, by measure (parameters, steps, flops, ...), averaged over seeds:
    # the analyst flags a comparison whose compute differs from the baseline's.
    compute: dict[str, float] = {}


class JobEnvironment(Model):
    """The machine a job really ran on: the writer reports only this."""

    model_config = ConfigDict(extra="allow")
    hostname: str = ""
    platform: str = ""
    python: str = ""
    cpu: str = ""
    cpu_count: int = 0
    gpus: list[str] = []
    cuda: str | None = None
    driver: str | None = None
    device: str = "cpu"  # what the experiment used: cpu or cuda
    packages: dict[str, str] = {}
    executor: str = "local"


class RunRecord(Model):
    """One job: a configuration run over several seeds."""

    job_id: str
    experiment_id: str
    idea_id: str  # "baseline" for the baseline
    overrides: dict[str, Any]
    seeds: list[int]
    status: Literal["succeeded", "failed"]
    reason: str = ""
    final_info: FinalInfo | None = None
    environment: JobEnvironment | None = None
    artifacts: list[str] = []  # object-store names
    wall_s: float = 0.0
    attempt: int = 1  # this run's attempt: earlier ones were lost with their runner (see ``lost``) or fixed
    lost: list[str] = []  # earlier attempts whose runner died without a result, and why
    diff: str = ""  # the code edits this run made to the template, as a unified diff ("" for a knob-only run)
