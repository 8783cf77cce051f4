"""Memory limits a CUDA process can live with: large virtual reservations pass, touched memory is still stopped.

The CUDA driver reserves far more virtual address space than it ever backs
(unified addressing: ``mmap(PROT_NONE, MAP_NORESERVE)``, touching nothing);
an ``RLIMIT_AS`` near the job's memory made ``torch.cuda.init()`` fail in every
GPU job. The experiments below reserve 128 GiB that way. What this cannot
show without a GPU: the driver's own reservations; the same call is made here
with ctypes. On Docker and Kubernetes the experiment container runs
``services.runner.launcher``, which applies ``confine(use_sandbox=False)``: the
launcher test covers both (the cgroup limit of the container is the engine's).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from bus.schema import JobSpec
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_OK
from services.runner.runner import confine
from tests.integration.test_runner_limits import run_job

RESERVE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
PROT_NONE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0, 0x02, 0x20, 0x4000
p = libc.mmap(None, 128 << 30, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
if p in (None, ctypes.c_void_p(-1).value):
    raise SystemExit(f"mmap of 128 GiB failed: errno {ctypes.get_errno()}")
print("reserved 128 GiB", flush=True)
"""

FINISH = """
import argparse, json, os
p = argparse.ArgumentParser()
p.add_argument("--out_dir"); p.add_argument("--seeds"); p.add_argument("--scale", type=float, default=1.0)
a = p.parse_args()
seeds = [int(s) for s in a.seeds.split(",")]
values = [float(s) for s in seeds]
json.dump({"metrics": {"score": {"mean": sum(values) / len(values), "stderr": 0.5, "values": values}}, "seeds": seeds,
           "config": {"scale": a.scale}}, open(os.path.join(a.out_dir, "final_info.json"), "w"))
"""


async def test_a_cuda_sized_reservation_runs_in_the_local_sandbox(admin_bus, nats_server, tmp_path):
    proc, statuses, work, _ = await run_job(admin_bus, nats_server, tmp_path, RESERVE + FINISH, memory_mb=256)
    assert proc.returncode == EXIT_OK, (proc.stderr[-2000:], statuses[-1].reason if statuses else "")
    assert statuses[-1].state == "succeeded"


async def test_touching_more_than_the_limit_is_still_stopped(admin_bus, nats_server, tmp_path):
    experiment = RESERVE + "x = bytearray(600 << 20)\nx[::4096] = b'1' * len(x[::4096])\nimport time; time.sleep(30)\n"
    proc, statuses, _, elapsed = await run_job(admin_bus, nats_server, tmp_path, experiment, memory_mb=256)
    assert proc.returncode == EXIT_EXPERIMENT_FAILED
    assert statuses[-1].reason.startswith("oom: used") and "256" in statuses[-1].reason and elapsed < 40


def _job(gpu: int) -> JobSpec:
    return JobSpec(job_id="j", project="p", experiment_id="x", template="t", bundle_object="p/t", seeds=[0],
                   wall_time_s=30, memory_mb=256, gpu=gpu)


def test_the_container_launcher_limits_let_a_cuda_reservation_through(tmp_path: Path):
    """What the experiment container of a Docker or Kubernetes job runs under: no address-space cap, CPU job or GPU job."""
    script = tmp_path / "reserve.py"
    script.write_text(textwrap.dedent(RESERVE))
    for gpu in (0, 1):
        launch = confine([sys.executable, str(script)], _job(gpu), tmp_path, [], [], use_sandbox=False)
        proc = subprocess.run(launch.argv, env=launch.env, preexec_fn=launch.preexec, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "reserved 128 GiB" in proc.stdout, (gpu, proc.stderr)
