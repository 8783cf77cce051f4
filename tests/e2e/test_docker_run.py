"""A whole grokking project through `lab up --executor docker` on a real Docker engine (tests/docker_engine.py).

Real: the engine (Debian's dockerd on a private socket, runc, the kernel's namespaces), the image
(this host's Python with the test environment's torch, imported as one layer: nothing is pulled),
the lab (nats-server, the auth service, six agent processes), the engineer's DockerExecutor, and
in each job the runner and the launcher in their own containers. The commands are docs/compose.md's
"The Docker executor without Compose", one for one. A watcher records every lab container as the
engine holds it while the project runs, so the two-container split is checked on every job, not on
one picked by hand. Skipped, counted, where no dockerd can be started as root; LAB_REQUIRE_DOCKER=1
(CI) fails instead.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.executors.render import JOB_ID_ANNOTATION, container_name, experiment_name, volume_name
from tests.conftest import lab_cmd
from tests.docker_engine import PART_OF, Engine, docker_engine, torch_image  # noqa: F401 - pytest fixtures
from tests.e2e.test_lab_run import check_deliverables, check_nothing_lost, conversation

pytestmark = [pytest.mark.slow, pytest.mark.tex, pytest.mark.timeout(1200)]
CREDENTIAL_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY", "LAB_JOB_FILE", "LAB_NATS")


class Watcher(threading.Thread):
    """Every lab container the engine lists while the lab runs, inspected the first time it is seen."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(daemon=True)
        import docker

        self.client = docker.DockerClient(base_url=engine.base_url, version="auto", timeout=60)
        self.seen: dict[str, dict[str, Any]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        import docker

        while not self.stopping.wait(0.3):
            try:
                for c in self.client.containers.list(all=True, filters={"label": PART_OF}):
                    self.seen.setdefault(c.name, c.attrs)
            except docker.errors.NotFound:
                pass  # removed between the listing and its inspection: seen on an earlier pass, or never started

    def stop(self) -> dict[str, dict[str, Any]]:
        self.stopping.set()
        self.join(30)
        self.client.close()
        return self.seen


def lab(env: dict[str, str], *args: str, timeout: float) -> str:
    r = subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"lab {' '.join(args)} exited {r.returncode}: {(r.stdout + r.stderr)[-4000:]}"
    return r.stdout + r.stderr


def remove_lab_objects(engine: Engine) -> None:
    for c in engine.client.containers.list(all=True, filters={"label": PART_OF}):
        c.remove(force=True)
    for v in engine.client.volumes.list(filters={"label": PART_OF}):
        v.remove(force=True)


def check_split(seen: dict[str, dict[str, Any]], job_ids: set[str], image: str) -> None:
    """Each job: a runner holding its credential (a file) and an experiment of another uid with none, no network,
    read-only roots, the job's one scratch volume shared and nothing else of the host."""
    assert {a["Config"]["Labels"][JOB_ID_ANNOTATION] for a in seen.values()} == job_ids
    assert len(seen) == 2 * len(job_ids), sorted(seen)
    for job in job_ids:
        runner, experiment = seen[container_name(job)], seen[experiment_name(job)]
        assert runner["Config"]["Image"] == experiment["Config"]["Image"] == image
        assert runner["Config"]["User"].split(":")[0] != experiment["Config"]["User"].split(":")[0]
        assert experiment["HostConfig"]["NetworkMode"] == "none" and runner["HostConfig"]["NetworkMode"] == "host"
        assert runner["HostConfig"]["ReadonlyRootfs"] and experiment["HostConfig"]["ReadonlyRootfs"]
        leaked = [e for e in experiment["Config"]["Env"] if any(w in e.split("=")[0] for w in CREDENTIAL_WORDS)]
        assert not leaked, f"{job}: the experiment's environment has {leaked}"
        volumes = [(m["Type"], m.get("Name")) for m in experiment["Mounts"]]
        assert volumes == [("volume", volume_name(job))], f"{job}: the experiment mounts {experiment['Mounts']}"
        runner_mounts = {m["Type"]: m for m in runner["Mounts"]}
        assert runner_mounts["volume"]["Name"] == volume_name(job)
        assert runner_mounts["bind"]["Source"].endswith(container_name(job)) and not runner_mounts["bind"]["RW"], "the job file, read-only"


def test_a_grokking_project_through_lab_up_with_the_docker_executor(docker_engine: Engine, torch_image: str, lab_env, tmp_path: Path) -> None:  # noqa: F811
    home, env = lab_env
    out = tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"executor": {"docker": {"base_url": docker_engine.base_url, "image": torch_image, "network": "host"}}}))
    env = {**env, "LAB_CONFIG": str(config)}
    watcher = Watcher(docker_engine)
    watcher.start()
    try:
        lab(env, "up", "--detach", "--executor", "docker", timeout=180)
        try:
            # One idea, no revision round: the test is about the Docker path (every job's containers), not the science.
            text = lab(env, "run", "--template", "grokking", "--fast", "--seed", "0", "--max-ideas", "1", "--max-rounds", "0",
                       "--out", str(out), timeout=900)
        finally:
            lab(env, "down", timeout=120)
    finally:
        seen = watcher.stop()
        left = docker_engine.lab_objects()
        remove_lab_objects(docker_engine)  # a failed run's jobs would fail the session's final check too: one failure, not two
    # The lab cleaned up after itself: no container or volume of the lab's is left on the engine.
    assert left == []
    assert "paper.pdf" in text
    convo = conversation(out)
    check_nothing_lost(convo)
    check_deliverables(out, convo)
    planned = {j for m in convo if m["body"]["type"] == "experiment_planned" for j in m["body"]["job_ids"]}
    assert len(planned) >= 2  # the baseline's job and the idea's, at least
    check_split(seen, planned, torch_image)
    # Each run's files came back from its containers: results, the experiment's log, its figures; env.json says docker.
    runs = [p.parent for p in (out / "results").glob("*/final_info.json")]
    assert runs and len(runs) == len(list((out / "results").iterdir()))
    for run in runs:
        assert json.loads((run / "env.json").read_text())["executor"] == "docker"
        assert "step 800: train_acc" in (run / "log.txt").read_text(), "the experiment's own output, streamed by its runner"
        assert any(run.glob("*.png")), sorted(p.name for p in run.iterdir())
    decision = next(m for m in convo if m["body"]["type"] == "decision")
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["status"] == "finished" and manifest["accepted"] == decision["body"]["accepted"]
    assert {e["executor"] for e in manifest["provenance"]} == {"docker"} and {e["image"].split(" ")[0] for e in manifest["provenance"]} == {torch_image}
