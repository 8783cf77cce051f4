"""services.runner.usage: what a running experiment uses, measured from /proc, and the launcher's file the runner believes only as data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.runner import usage
from services.runner.split import write_atomic

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\nheld = bytearray(32 << 20)\n" \
       "for i in range(0, len(held), 4096): held[i] = 1\nprint('ready', flush=True)\ntime.sleep(30)\n"


async def test_the_meter_counts_a_live_child_s_cpu_and_memory_and_keeps_them_once_it_is_waited_for() -> None:
    meter = usage.Meter(gpus=False)
    child = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        live = await meter.sample()
        assert live.cpu_s >= 0.5 and live.rss >= 32 << 20 and live.peak_rss == live.rss and live.gpu_memory is None
    finally:
        child.kill()
        child.wait()
    after = await meter.sample()
    assert after.rss < live.rss and after.peak_rss == live.peak_rss  # gone, but its peak stays
    assert after.cpu_s >= live.cpu_s - 0.05  # waited for: its CPU moved into RUSAGE_CHILDREN, not lost


def test_the_launcher_s_file_is_read_only_when_it_is_a_regular_file_holding_a_sample(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    assert usage.read(path) is None  # not written yet
    write_atomic(path, usage.Sample(cpu_s=1.5, rss=10, peak_rss=20, gpu_memory={"0": 5}).model_dump_json())
    assert usage.read(path) == usage.Sample(cpu_s=1.5, rss=10, peak_rss=20, gpu_memory={"0": 5})
    for junk in ("not json", '{"cpu_s": -1, "rss": 0, "peak_rss": 0}', '{"cpu_s": 1, "rss": 0, "peak_rss": 0, "extra": 1}', "x" * 5000):
        path.write_text(junk)
        assert usage.read(path) is None, junk
    secret = tmp_path / "secret"
    secret.write_text('{"cpu_s": 1, "rss": 0, "peak_rss": 0}')
    path.unlink()
    path.symlink_to(secret)
    assert usage.read(path) is None  # a planted link is not followed


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An nvidia-smi on PATH that answers as the real one does for --format=csv,noheader,nounits (MiB)."""
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\nprintf '0, 1024\\n1, 2048\\n'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return tool


async def test_gpu_memory_reads_each_gpu_in_sight_and_only_those_the_job_was_given(smi: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await usage.gpu_memory() == {"0": 1 << 30, "1": 2 << 30}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert await usage.gpu_memory() == {"1": 2 << 30}
    assert (await usage.Meter(gpus=True).sample()).gpu_memory == {"1": 2 << 30}
    assert (await usage.Meter(gpus=False).sample()).gpu_memory is None  # a CPU job never asks


async def test_no_nvidia_smi_means_no_gpu_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert await usage.gpu_memory() is None
