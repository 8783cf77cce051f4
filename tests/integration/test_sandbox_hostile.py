"""The hostile template, run by the local executor: every attack from issue 12 fails, nothing outlives the job."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from agents.templates import bundle, load
from bus.schema import JobSpec, NatsAccess
from services.executors.local import LocalExecutor
from services.runner import sandbox
from tests.conftest import ROOT, TESTS
from tests.proc_helpers import processes_with

pytestmark = [pytest.mark.skipif(sandbox.tool() is None, reason="needs bubblewrap (CI installs it)")]

HOSTILE = TESTS / "hostile"
LAB_SOURCE = ROOT / "agents"


async def run_hostile(admin_bus, nats_server, tmp_path, monkeypatch) -> tuple[dict, dict, Path, str]:
    from bus.store import Artifacts

    home = tmp_path / "labhome"
    home.mkdir()
    secrets = {"lab.json": "labjson-" + os.urandom(8).hex(), "env": "envsecret-" + os.urandom(8).hex()}
    lab_json = home / "lab.json"
    lab_json.write_text(json.dumps({"credentials": {"lab": secrets["lab.json"], "copi": secrets["lab.json"]}}))
    lab_json.chmod(0o600)
    monkeypatch.setenv("LAB_HOME", str(home))
    monkeypatch.setenv("LAB_ADMIN_TOKEN", secrets["env"])  # in the runner's environment: must not cross
    source = tmp_path / "src" / "hostile"
    shutil.copytree(HOSTILE, source)
    load(str(source))  # a valid template, as a project would use it
    token = f"hostile-outlive-{os.getpid()}-{time.monotonic_ns()}"
    targets = {"lab_home": str(home), "nats_port": nats_server.port, "template_source": str(source),
               "lab_source": str(LAB_SOURCE), "outlive_token": token, "job_spec": str(home / "jobs" / "jh" / "job.spec.json")}
    art = await Artifacts.open(admin_bus)
    await art.put("p1/hostile.tar.gz", bundle(source))
    job = JobSpec(
        job_id="jh", project="p1", experiment_id="x01", template="hostile", bundle_object="p1/hostile.tar.gz",
        overrides={"targets": json.dumps(targets)}, seeds=[0, 1, 2], wall_time_s=60, memory_mb=512,
        nats=NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"]),
    )
    ex = LocalExecutor(jobs_dir=str(home / "jobs"), capacity=1)
    await ex.submit(job)
    for _ in range(900):
        phase = await ex.poll("jh")
        if phase.state not in ("pending", "running"):
            break
        time.sleep(0.1)
    await ex.close()
    assert phase.state == "succeeded", (phase, (home / "jobs" / "jh" / "runner.log").read_text())
    work = home / "jobs" / "jh" / "work"
    assert not work.exists()  # swept at the end: read what it wrote from the store, as the lab does
    info = json.loads(await art.get("p1/runs/jh/final_info.json"))
    all_secrets = {**secrets, **nats_server.credentials}
    return info, all_secrets, work, token


async def test_every_attack_of_the_hostile_template_fails(admin_bus, nats_server, tmp_path, monkeypatch):
    info, secrets, work, token = await run_hostile(admin_bus, nats_server, tmp_path, monkeypatch)
    attacks = info["attacks"]
    expected = {
        "read_lab_json", "read_job_spec", "read_other_environ", "read_parent_environ", "credential_in_own_environment", "connect_nats",
        "use_nats_without_credential", "setns_into_runner_network", "write_lab_home", "write_template_source", "write_template_copy", "write_lab_source",
        "see_other_processes", "forge_pgid_file", "root_inside", "outlive_the_job",
    }
    assert set(attacks) == expected
    worked = {k: v["detail"][:300] for k, v in attacks.items() if v["worked"] and k != "outlive_the_job"}
    assert worked == {}
    # Whatever the experiment could read, no credential of any kind is in it.
    recorded = json.dumps(info)
    assert [name for name, s in secrets.items() if s in recorded] == []
    # No write landed outside its scratch directory.
    home = work.parent.parent.parent
    assert list(home.glob("hostile-was-here-*")) == [] and list(LAB_SOURCE.glob("hostile-was-here-*")) == []
    assert list((tmp_path / "src" / "hostile").glob("hostile-was-here-*")) == []
    assert (work.parent / "job.spec.json").is_file()  # the job file it went for was really there, outside its reach
    # The setsid child was started, and died with the job.
    assert attacks["outlive_the_job"]["worked"], attacks["outlive_the_job"]
    assert processes_with(token) == []
