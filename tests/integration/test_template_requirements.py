"""A template's extra packages: the runner builds its environment once (outside the sandbox) and runs the experiment in it.

The fixture tests/aisci/aisci_needs_pkg is an AI Scientist template whose experiment.py and
plot.py import ``labtinydep``, a one-module package these tests write as a wheel to a folder
that pip reads with ``--no-index --find-links`` (LAB_PIP_ARGS): no network. Through the real
runner and sandbox, as in test_runner_limits.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agents import templates
from bus import subjects
from bus.schema import JobSpec, NatsAccess, decode
from bus.schema.constants import EXIT_EXPERIMENT_FAILED, EXIT_OK
from bus.store import Artifacts
from services.runner import envs
from tests.conftest import TESTS

NEEDS = TESTS / "aisci" / "aisci_needs_pkg"
MODULE = "def loss(seed):\n    return 0.5 + seed\n"


def write_wheel(folder: Path, name: str = "labtinydep", version: str = "0.1", body: str = MODULE) -> Path:
    """A pure-Python wheel of one module, written by hand (no build backend, no index)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": body,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kenkyu-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(text: str) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},{digest(text)},{len(text.encode())}\n" for path, text in files.items()) + f"{info}/RECORD,,\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in {**files, f"{info}/RECORD": record}.items():
            z.writestr(path, text)
    return wheel


async def run_needs(admin_bus, server, tmp_path: Path, folder: Path, job_id: str, wall: float = 60, **env: str):
    art = await Artifacts.open(admin_bus)
    await art.put(f"p1/{job_id}.tar.gz", templates.bundle(folder))
    job = JobSpec(
        job_id=job_id, project="p1", experiment_id="x01", template=folder.name, bundle_object=f"p1/{job_id}.tar.gz",
        seeds=[0, 1, 2], wall_time_s=wall, memory_mb=512,
        nats=NatsAccess(url=server.url, user="runner", password=server.credentials["runner"]),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "services.runner"],
        env={**os.environ, **job.env(), "LAB_JOB_DIR": str(tmp_path / f"work-{job_id}"), **env},
        capture_output=True, text=True, timeout=300,
    )
    sub = await admin_bus.js.pull_subscribe(subjects.job_status("p1", job_id), stream=subjects.JOBS_STREAM)
    statuses = [decode(m.data).body for m in await sub.fetch(10, timeout=2)]
    log = (await art.get(f"p1/runs/{job_id}/log.txt")).decode()
    return proc, statuses, log


@pytest.fixture
def pip_env(tmp_path):
    wheels = tmp_path / "wheels"
    write_wheel(wheels)
    home = tmp_path / "home"
    return home, {"LAB_HOME": str(home), "LAB_PIP_ARGS": f"--no-index --find-links {wheels}"}


async def test_a_template_needing_a_package_runs_in_its_own_environment(admin_bus, nats_server, tmp_path, pip_env):
    home, env = pip_env
    proc, statuses, log = await run_needs(admin_bus, nats_server, tmp_path, NEEDS, "j1", **env)
    assert proc.returncode == EXIT_OK, log[-2000:] + proc.stderr[-2000:]
    done = statuses[-1]
    assert done.state == "succeeded" and done.final_info.metrics["toy/final_val_loss"].values == [0.5, 1.5, 2.5]
    assert "in the sandbox" in log and "labtinydep==0.1" in log and "(built now)" in log
    [built] = [p for p in (home / "envs").iterdir() if p.is_dir()]
    assert (built / envs.READY).is_file() and list(built.glob("lib/python*/site-packages/labtinydep.py"))
    # The lab's own Python is untouched: the package is only in the template's environment.
    assert not any(Path(p, "labtinydep.py").exists() for p in sys.path)

    # A second job with the same requirements reuses it: no second build.
    proc, statuses, log = await run_needs(admin_bus, nats_server, tmp_path, NEEDS, "j2", **env)
    assert proc.returncode == EXIT_OK and statuses[-1].state == "succeeded"
    assert "(built now)" not in log and str(built) in log


async def test_a_package_that_cannot_be_installed_fails_the_job_with_one_line(admin_bus, nats_server, tmp_path, pip_env):
    _, env = pip_env
    folder = tmp_path / "needs_absent"
    shutil.copytree(NEEDS, folder)
    (folder / "requirements.txt").write_text("labtinydep-absent>=2\n")
    proc, statuses, _ = await run_needs(admin_bus, nats_server, tmp_path, folder, "j3", **env)
    assert proc.returncode == EXIT_EXPERIMENT_FAILED
    reason = statuses[-1].reason
    assert statuses[-1].state == "failed" and "\n" not in reason
    assert reason.startswith("cannot install package 'labtinydep-absent>=2' required by the template")


def test_a_job_image_without_the_package_is_named(monkeypatch):
    """Docker and Kubernetes: nothing is installed in the job; the image's packages are checked before the run."""
    assert envs.missing(["numpy", "pyyaml>=5"]) is None
    assert envs.missing(["labtinydep==0.1"]) == (
        "this job image lacks package 'labtinydep' required by the template; build an image with it"
    )
    assert "has package 'numpy'" in (envs.missing(["numpy<1"]) or "")
    assert envs.missing(["nonsense-pkg; python_version < '3'"]) is None  # a marker that does not apply here


def test_requirements_come_from_the_bundle(tmp_path):
    (tmp_path / "template.yaml").write_text("name: x\nrequirements: [a==1, b]\n")
    (tmp_path / "requirements.txt").write_text("# extra\nb\nc>=2  # pinned low\n\n")
    assert envs.requirements_of(tmp_path) == ["a==1", "b", "c>=2"]
    _, spec = templates.load(str(NEEDS))
    assert spec.requirements == ["labtinydep==0.1"]


async def test_an_ai_scientist_run_past_its_wall_time_is_stopped_and_reported(admin_bus, nats_server, tmp_path):
    """The wrapper runs the template as a child: the runner's clock still stops the whole tree and says why."""
    folder = tmp_path / "slow"
    shutil.copytree(TESTS / "aisci" / "aisci_tiny", folder)
    (folder / "experiment.py").write_text("import time\nprint('training', flush=True)\ntime.sleep(300)\n")
    proc, statuses, log = await run_needs(admin_bus, nats_server, tmp_path, folder, "j4", wall=3)
    assert proc.returncode == EXIT_EXPERIMENT_FAILED
    assert statuses[-1].state == "failed" and statuses[-1].reason == "timeout: exceeded the wall-time limit of 3s"
    assert "training" in log and statuses[-1].wall_s < 30
