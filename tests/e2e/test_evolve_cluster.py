"""`lab evolve --nats URL` on a lab whose executor is kubernetes: the evolve project's candidates as GPU Jobs.

What is real: a `lab up --executor kubernetes` (nats-server and six agents), `lab evolve` as a
process starting its project on that lab with the credentials `lab up` wrote under
LAB_HOME, the lab's engineer running each candidate, the KubernetesExecutor with the official client over HTTP, and the
job runner, which the test kubelet starts from each pod's command and
environment. Faked, as in tests/e2e/test_kubernetes_run.py: the cluster (kmock)
and the GPUs (two pretend ones). One iteration of two candidates and their final test runs, on the tiny quadratic
of tests/evolve_sleep.py (jobs of a second: the test is about where the candidates run; what `lab evolve` writes
for model_merging is checked by tests/integration/test_evolve_runs.py's check_run).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from services.executors.render import job_name
from tests.conftest import lab_cmd
from tests.evolve_sleep import check_outputs, evolve_args
from tests.integration.test_k8s_executor import kubeconfig, raw_jobs
from tests.kubelet import Kubelet

NS = "lab"


class RecordingKubelet(Kubelet):
    """The test kubelet, noting each Job it ran and the GPUs its pod asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gpus_of: dict[str, int] = {}

    async def _sync_pod(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        self.gpus_of[job["metadata"]["name"]] = sum(  # the experiment container's, in a two-container pod
            int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["spec"]["containers"])
        try:
            await super()._sync_pod(job, pod)
        except ApiException as e:
            # The engineer deletes a project's Jobs as soon as it decides (the runner reports over NATS,
            # before the pod's end is written back here): like a real job controller, shrug off a deleted Job.
            if e.status != 404:
                raise


def lab(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_lab_evolve_runs_its_candidates_as_jobs_of_a_running_lab(lab_env, evolve_sleep: Path, tmp_path: Path) -> None:
    home, env = lab_env
    env = {k: v for k, v in env.items() if not k.startswith(("OPENAI_", "LAB_LLM_", "LAB_MIND", "LAB_RUNNER_", "LAB_JOB_SECRET"))}
    home.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        for res in ("batch/v1/jobs", "v1/pods", "v1/secrets", "v1/events"):
            emu.resources[res] = {}
        api = str(server.url).rstrip("/")
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"executor": {"kubernetes": {
            "kubeconfig": kubeconfig(tmp_path / "kubeconfig", api), "namespace": NS,
            "command": [sys.executable, "-m", "services.runner"], "gpus": 2, "min_gpu": 1, "startup_margin_s": 60,
        }}}))
        env = {**env, "LAB_CONFIG": str(config)}
        # The lab runs its jobs on the cluster; `lab evolve` only starts the project there and follows it.
        r = await asyncio.to_thread(lab, env, "up", "--detach", "--executor", "kubernetes")
        assert r.returncode == 0, r.stderr + r.stdout
        try:
            url = json.loads((home / "lab.json").read_text())["url"]
            async with RecordingKubelet(api, namespace=NS, gpus=2, tick_s=0.2) as kubelet:
                proc = await asyncio.create_subprocess_exec(
                    *lab_cmd(*evolve_args(evolve_sleep, out), "--nats", url),
                    env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                )
                text = (await asyncio.wait_for(proc.communicate(), timeout=480))[0].decode()
                assert proc.returncode == 0, text[-4000:]
                ran = dict(kubelet.gpus_of)
            await asyncio.sleep(3)  # the engineer cleans up its Jobs once the project decides
            leftover = await raw_jobs(api)
        finally:
            await asyncio.to_thread(lab, env, "down")
    dev = check_outputs(out)
    test = [json.loads(line) for line in (out / "evolve" / "final.jsonl").read_text().splitlines()]
    assert len(dev) == 2 and all(c["state"] == "succeeded" for c in dev + test), [c["reason"] for c in dev + test]
    # Every candidate ran as its own Job on the cluster, each with a GPU (the cluster's min_gpu), and none is left.
    assert set(ran) == {job_name(j) for c in dev + test for j in c["job_ids"]}, ran
    assert set(ran.values()) == {1}
    assert not leftover, [j["metadata"]["name"] for j in leftover]
    # The runs went through the lab's own bus: their statuses carry the lab's job signatures, so the lab's
    # engineer (which reads every job status) admitted them rather than dead-lettering each as forged.
    project = json.loads((out / "evolve" / "summary.json").read_text())["project"]
    engineer_log = (home / "logs" / "engineer.log").read_text(errors="replace")
    refused = [line for line in engineer_log.splitlines() if "dead-lettered" in line and project in line]
    assert not refused, refused[:3]
