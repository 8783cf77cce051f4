"""A preempted job resumes from its checkpoint and ends where an uninterrupted run ends.

The real job runner runs the real char_lm template (a tiny configuration); the
runner gets SIGTERM mid-run as a pod being evicted would, forwards it, uploads
the checkpoint and exits for a retry; a second runner with the same job and a
fresh scratch folder (what a Kubernetes pod retry is) fetches the checkpoint
and finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.templates import BUILTIN_DIR, bundle
from bus import subjects
from bus.schema import JobSpec, NatsAccess, decode
from bus.schema.constants import EXIT_INFRA, EXIT_OK
from bus.store import Artifacts
from services.runner import checkpoint

pytestmark = pytest.mark.slow

TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 8, "max_steps": 240,
        "warmup_steps": 10, "eval_batches": 2, "dropout": 0.1}
SEEDS = [0, 1]
# CPU runs in one thread are bit-reproducible and the resumed run restores the model, the
# optimizer, the RNG and the batch stream, so the results match to float32 rounding.
REL_TOL = 1e-5


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = path.read_text() if path.exists() else ""
        if text in body:
            return body
        assert proc.poll() is None, f"the runner exited ({proc.returncode}) before {text!r}:\n{body[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in {path} after {timeout}s")


def _runner(job: JobSpec, work: Path) -> subprocess.Popen:
    env = {**os.environ, **job.env(), "LAB_JOB_DIR": str(work), "LAB_CHECKPOINT_EVERY": "40", "LAB_CHECKPOINT_SYNC_S": "0.5"}
    return subprocess.Popen([sys.executable, "-m", "services.runner"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def test_a_preempted_job_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(admin_bus, nats_server, tmp_path):
    art = await Artifacts.open(admin_bus)
    await art.put("p1/bundles/char_lm.tar.gz", bundle(BUILTIN_DIR / "char_lm"))
    job = JobSpec(
        job_id="jres", project="p1", experiment_id="x01", template="char_lm", bundle_object="p1/bundles/char_lm.tar.gz",
        overrides=TINY, seeds=SEEDS, wall_time_s=600, memory_mb=1024, resumable=True,
        nats=NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"]),
    )
    # The first pod: evicted while seed 1 trains, after seed 0 finished.
    first = _runner(job, tmp_path / "pod1")
    _wait_for(tmp_path / "pod1" / "log.txt", "seed 1 step 96:", first)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == EXIT_INFRA, out
    log1 = (tmp_path / "pod1" / "log.txt").read_text()
    assert "[runner] SIGTERM: forwarding it to the experiment" in log1
    assert "SIGTERM: saved a checkpoint at seed 1 step" in log1
    saved_at = int(log1.split("SIGTERM: saved a checkpoint at seed 1 step ")[1].split()[0])
    assert 96 <= saved_at < TINY["max_steps"]
    assert await art.get(checkpoint.object_name(job))  # it left the pod before the pod went

    # The retried pod: same job, empty scratch.
    second = _runner(job, tmp_path / "pod2")
    out, _ = second.communicate(timeout=400)
    assert second.returncode == EXIT_OK, out
    log2 = (tmp_path / "pod2" / "log.txt").read_text()
    assert "[runner] restored a checkpoint" in log2
    assert "seed 0 step" not in log2  # the finished seed is not trained again
    sub = await admin_bus.js.pull_subscribe(subjects.job_status("p1", "jres"), stream=subjects.JOBS_STREAM)
    statuses = [decode(m.data).body for m in await sub.fetch(10, timeout=2)]
    done = statuses[-1]
    assert done.state == "succeeded", done.reason
    extra = done.final_info.model_extra
    assert extra["resumed_at_step"] == saved_at
    assert extra["resumed"].startswith(f"resumed at step {saved_at} of seed 1")

    # The same seeds, never interrupted.
    ref = tmp_path / "reference"
    args = [f"--{k}={v}" for k, v in TINY.items()]
    subprocess.run(
        [sys.executable, str(BUILTIN_DIR / "char_lm" / "experiment.py"), "--out_dir", str(ref), "--seeds", "0,1", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True, timeout=300,
    )
    reference = json.loads((ref / "final_info.json").read_text())
    assert "resumed" not in reference
    for metric in ("val_loss", "train_loss"):
        got, want = done.final_info.metrics[metric].values, reference["metrics"][metric]["values"]
        assert got == pytest.approx(want, rel=REL_TOL), metric


def test_2d_diffusion_resumes_after_sigterm_exactly(tmp_path):
    """The second resumable template, at the experiment level: SIGTERM, save, rerun, same numbers."""
    exp = BUILTIN_DIR / "2d_diffusion" / "experiment.py"
    knobs = ["--num_train_steps=400", "--num_timesteps=20", "--hidden_size=32", "--num_layers=1", "--embedding_size=8",
             "--batch_size=32", "--num_samples=100", "--ema_decay=0.99"]
    ckpt_dir = tmp_path / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAB_CHECKPOINT_DIR": str(ckpt_dir), "LAB_CHECKPOINT_EVERY": "25"}
    cmd = [sys.executable, str(exp), "--seeds", "0,1", *knobs]
    first = subprocess.Popen([*cmd, "--out_dir", str(tmp_path / "a")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (ckpt_dir / "2d_diffusion.pt").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 143, out
    saved_at = int(out.split("SIGTERM: saved a checkpoint at seed 0 step ")[1].split()[0])
    resumed = subprocess.run([*cmd, "--out_dir", str(tmp_path / "a")], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    plain = subprocess.run([*cmd, "--out_dir", str(tmp_path / "b")], env={**env, "LAB_CHECKPOINT_DIR": ""}, capture_output=True, timeout=300)
    assert plain.returncode == 0
    got = json.loads((tmp_path / "a" / "final_info.json").read_text())
    want = json.loads((tmp_path / "b" / "final_info.json").read_text())
    assert got["resumed"].startswith(f"resumed at step {saved_at} of seed 0") and "resumed" not in want
    for metric in ("mmd", "chamfer", "train_loss"):
        assert got["metrics"][metric]["values"] == pytest.approx(want["metrics"][metric]["values"], rel=REL_TOL), metric
