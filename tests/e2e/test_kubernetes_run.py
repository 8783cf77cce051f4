"""A whole `lab run --executor kubernetes` through an API emulator and a test kubelet.

What is real: the lab (six agent processes, nats-server, the engineer's
KubernetesExecutor with the official client over HTTP), the Job manifests it
submits, and the job runner, which the test kubelet starts as a local process
from the pod's own command and environment. What is faked, because this
machine has none: the cluster (kmock's KubernetesEmulator) and the GPUs (the
kubelet schedules against two pretend GPUs; the experiments run on the CPU).
"""

from __future__ import annotations

import asyncio
import json
import sys

import kmock
import pytest
import yaml

from services.executors.render import KubernetesSettings
from tests.conftest import lab_cmd
from tests.e2e.test_lab_run import check_deliverables, check_nothing_lost, conversation
from tests.kubelet import NODE_NAME, Kubelet

pytestmark = [pytest.mark.slow, pytest.mark.tex, pytest.mark.timeout(1200)]
NS = "lab"


async def test_lab_run_through_kubernetes(lab_env, tmp_path):
    home, env = lab_env
    out = tmp_path / "out"
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        for res in ("batch/v1/jobs", "v1/pods", "v1/secrets"):
            emu.resources[res] = {}
        url = str(server.url).rstrip("/")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emu",
            "clusters": [{"name": "emu", "cluster": {"server": url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u", "namespace": NS}}],
        }))
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"executor": {"kubernetes": {
            "kubeconfig": str(kubeconfig), "namespace": NS, "command": [sys.executable, "-m", "services.runner"],
            "gpus": 2, "min_gpu": 1, "startup_margin_s": 60,
        }}}))
        run_env = {**env, "LAB_CONFIG": str(config)}
        async with Kubelet(url, namespace=NS, gpus=2, tick_s=0.2) as kubelet:
            proc = await asyncio.create_subprocess_exec(
                *lab_cmd("run", "--template", "grokking", "--fast", "--executor", "kubernetes", "--max-ideas", "1",
                         "--max-rounds", "0", "--out", str(out)),
                env=run_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            )
            text, _ = await asyncio.wait_for(proc.communicate(), timeout=1000)
            text = text.decode()
            assert proc.returncode == 0, text[-4000:]
            started = dict(kubelet.started)
        from tests.integration.test_k8s_executor import raw_jobs

        leftover = await raw_jobs(url)
    convo = conversation(out)
    check_nothing_lost(convo)
    check_deliverables(out, convo)
    planned = {j for m in convo if m["body"]["type"] == "experiment_planned" for j in m["body"]["job_ids"]}
    assert len(started) == len(planned) >= 2, "one pod per job (the baseline's and the idea's at least), each started once"
    envs = [json.loads(p.read_text()) for p in out.glob("results/*/env.json")]
    assert len(envs) == len(planned) and all(e["executor"] == "kubernetes" for e in envs)
    # Each run traced to its job: the pod's node (downward API), the image, the code it ran (export.json's chain).
    image = KubernetesSettings().image
    assert all(e["node"] == NODE_NAME and e["image"] == image and len(e["code_sha256"]) == 64 for e in envs), envs
    chain = json.loads((out / "export.json").read_text())["provenance"]
    assert chain and all(r["node"] == NODE_NAME and r["image"] == image and r["reused"] == "fresh" for r in chain)
    assert {r["job_id"] for r in chain} <= planned
    # The engineer cleaned up after the project: no Job is left behind.
    assert not leftover, [j["metadata"]["name"] for j in leftover]
