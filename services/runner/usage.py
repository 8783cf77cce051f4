"""What a running experiment uses, for the runner's metrics (``LAB_RUNNER_METRICS_PORT``, :mod:`bus.metrics`).

Measured where the experiment's processes are in sight: by the runner itself on the local sandbox, by the
launcher in the experiment's own container on Docker and Kubernetes, which writes each sample to
``launcher/usage.json`` in the shared volume for the runner to read (:func:`read`). What the experiment
container writes is believed only as its own metrics: a lie there misleads nobody but its own graphs.

CPU seconds: the live process tree's, from /proc, plus the children already waited for (RUSAGE_CHILDREN since
the meter started). Memory: the tree's resident bytes now, and the most seen. GPU memory: nvidia-smi's
``memory.used`` for each GPU this container sees (on Kubernetes and Docker, the job's own), only for a job
that asked for a GPU; without nvidia-smi or a GPU the field is None and the series stays absent.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus import metrics
from services.runner import proctree, split

SAMPLE_EVERY_S = 2.0
GPU_EVERY_S = 10.0  # nvidia-smi is slow to start: its answer is kept this long
NVIDIA_SMI_TIMEOUT_S = 5.0
USAGE_MAX_BYTES = 4096


class Sample(BaseModel):
    """One measurement; also the launcher's ``usage.json``."""

    model_config = ConfigDict(extra="forbid")
    cpu_s: float = Field(ge=0)
    rss: int = Field(ge=0)
    peak_rss: int = Field(ge=0)
    gpu_memory: dict[str, int] | None = None  # GPU index -> bytes in use; None: no GPU seen


def _children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


async def gpu_memory() -> dict[str, int] | None:
    """Bytes in use on each GPU in sight, by index; None without nvidia-smi or when it fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            smi, "--query-gpu=index,memory.used", "--format=csv,noheader,nounits",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), NVIDIA_SMI_TIMEOUT_S)
    except (OSError, TimeoutError):
        return None
    found: dict[str, int] = {}
    for row in out.decode(errors="replace").strip().splitlines():
        index, _, mib = row.partition(",")
        if index.strip().isdigit() and mib.strip().isdigit():
            found[index.strip()] = int(mib.strip()) << 20
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")  # the local executor's share of a machine's GPUs
    if visible and all(v.strip().isdigit() for v in visible.split(",")):
        found = {i: used for i, used in found.items() if i in {v.strip() for v in visible.split(",")}}
    return found or None


class Meter:
    """Samples the process tree under this process (the runner's or the launcher's) from the moment it is made."""

    def __init__(self, gpus: bool) -> None:
        self.root = os.getpid()
        self.gpus = gpus
        self.waited_before = _children_cpu_s()
        self.peak = 0
        self._gpu: dict[str, int] | None = None
        self._gpu_at = -GPU_EVERY_S

    async def sample(self) -> Sample:
        tree = proctree.usage(self.root)
        self.peak = max(self.peak, tree.rss)
        cpu = tree.cpu_s + max(0.0, _children_cpu_s() - self.waited_before)
        loop = asyncio.get_running_loop()
        if self.gpus and loop.time() - self._gpu_at >= GPU_EVERY_S:
            self._gpu, self._gpu_at = await gpu_memory(), loop.time()
        return Sample(cpu_s=round(cpu, 3), rss=tree.rss, peak_rss=self.peak, gpu_memory=self._gpu)


async def write_every(meter: Meter, path: Path, every_s: float = SAMPLE_EVERY_S) -> None:
    """The launcher's side: a sample to ``path`` (atomically) every ``every_s`` until cancelled."""
    while True:
        split.write_atomic(path, (await meter.sample()).model_dump_json())
        await asyncio.sleep(every_s)


def read(path: Path) -> Sample | None:
    """The runner's side: the launcher's last sample; None while there is none, or when it is not one (a link, junk)."""
    try:
        return Sample.model_validate_json(split.read_regular(path, USAGE_MAX_BYTES))
    except (OSError, split.SplitError, ValidationError):
        return None


async def publish(job: str, measure: Meter | Path, every_s: float = SAMPLE_EVERY_S) -> None:
    """Keep the job's usage series up to date until cancelled: measured here (a Meter) or read from the launcher's file."""
    while True:
        got = await measure.sample() if isinstance(measure, Meter) else read(measure)
        if got is not None:
            metrics.runner_usage(job, got.cpu_s, got.rss, got.peak_rss, got.gpu_memory)
        await asyncio.sleep(every_s)
