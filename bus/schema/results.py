"""What a job produced: the experiment's final_info.json, the machine it ran on, one run's record."""

from __future__ import annotations

import re
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
    # Provenance (bus.provenance): where and from what the job ran; "" where not recorded (runs before these fields).
    node: str = ""  # Kubernetes: the pod's node; Docker: the engine's host; local: this host
    image: str = ""  # the container image as referenced, with its digest or id when the executor knew it; "" locally
    interpreter: str = ""  # the Python that ran the experiment: its path and version
    packages_sha256: str = ""  # bus.provenance.packages_sha256 of ``packages``
    code_sha256: str = ""  # bus.provenance.tree_sha256 of the template code the job ran, its code edits applied


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
    cpu_s: float | None = None  # the experiment's CPU-seconds, from its status (None: not measured)
    gpu_s: float = 0.0  # wall seconds x the GPUs the job was given (0 for a CPU job)
    attempt: int = 1  # this run's attempt: earlier ones were lost with their runner (see ``lost``) or fixed
    lost: list[str] = []  # earlier attempts whose runner died without a result, and why
    diff: str = ""  # the code edits this run made to the template, as a unified diff ("" for a knob-only run)
    # Served by the result cache (bus/resultcache.py): "<project>/<experiment>/<job>" of the run whose results these are
    # (its final_info, environment, artifacts, wall time); "" for a run executed for this job.
    reused_from: str = ""


# How a failed job failed, from its status's reason and who reported it (the engineer decides what to retry by it):
# - ``invalid_output``: the experiment ran and wrote output the lab refuses (NaN metrics, final_info.json too large or
#   off-schema, outputs over the job's caps); the experiment's own failure, permanent: one attempt, its reason shown.
# - ``lost``: the runner died without a result (reported for it by the executor watch); the job runs again.
# - ``experiment``: any other failure the runner reported (a crash, a limit); the experiment's own.
FailureKind = Literal["invalid_output", "lost", "experiment"]
INVALID_OUTPUT = "invalid_output"


def failure_kind(reason: str, from_runner: bool) -> FailureKind:
    if reason.startswith(INVALID_OUTPUT):
        return "invalid_output"
    return "experiment" if from_runner else "lost"


# ESC sequences (CSI, OSC, the two-byte ones), then C0 (but \t), DEL, C1 and the bidirectional overrides.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_])?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# The end of a job's log, kept apart by the runner: what the engineer reads of a failed run (never the whole log).
LOG_TAIL_NAME = "log-tail.txt"


def clean_text(text: str, limit: int = 300) -> str:
    """``text`` without terminal escapes or control characters (a tab stays), cut to ``limit`` characters."""
    text = _CONTROLS.sub("", _ESCAPES.sub("", text))
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"
