"""A job over two nodes, through the Kubernetes executor's JobSet and the test kubelet's JobSet controller.

Real: nats-server, the executor and the JobSet it submits, the job runner and the launcher in
each pod (node 0's reports, node 1's runs in worker mode), torchrun on each "node" with a
static rendezvous, and a gloo all_reduce across them (tests/dist_template); eviction as the
eviction API does it (DisruptionTarget, SIGTERM, grace), the child Job's podFailurePolicy and
the JobSet's failure rules as tests/kubelet.py emulates them.

What this cannot show: the pods are local processes on one machine (the rendezvous name is
mapped to 127.0.0.1, there is no DNS, no headless Service, no NetworkPolicy between pods);
the "GPUs" are the kubelet's accounting, the collective runs on CPU with gloo, not NCCL; the
JobSet and Job controllers are this repository's emulation of the documented behaviour,
not the real controllers (their messages' wording is the Job controller's, their timing is
not); Kueue's gang admission is not exercised (the JobSet is only rendered suspended).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from agents.templates import bundle
from bus.schema import JobSpec, NatsAccess
from bus.store import Artifacts
from services.executors import make_executor
from services.executors.kubernetes import KubernetesExecutor
from services.executors.render import JOBSET_GROUP, JOBSET_PLURAL, JOBSET_VERSION, jobset_name
from tests.conftest import TESTS
from tests.integration.test_k8s_executor import NS, cluster, raw_items, wait_for  # noqa: F401 - pytest fixture
from tests.integration.test_split_hostile import statuses_of
from tests.kubelet import Kubelet

pytestmark = pytest.mark.timeout(240)
JOBSETS = f"{JOBSET_GROUP}/{JOBSET_VERSION}/{JOBSET_PLURAL}"


def gang_job(nats_url: str, password: str, job_id: str, **overrides: Any) -> JobSpec:
    return JobSpec(job_id=job_id, project="p1", experiment_id=f"x-{job_id}", template="dist", bundle_object="p1/dist.tar.gz",
                   overrides=overrides, seeds=[0], wall_time_s=150, memory_mb=1024, gpu=1, nodes=2, resumable=True,
                   nats=NatsAccess(url=nats_url, user="runner", password=password))


@pytest.fixture
async def gang(admin_bus: Any, nats_server: Any, cluster: Any) -> Any:  # noqa: F811
    """The emulator serving JobSets, the template's bundle in the store, an executor, and a kubelet with 2 "GPUs"."""
    emu, url, kubeconfig = cluster
    emu.resources[JOBSETS] = {}
    art = await Artifacts.open(admin_bus)
    source = Path(tempfile.mkdtemp(prefix="dist-template-"))
    source.chmod(0o755)
    shutil.copytree(TESTS / "dist_template", source / "dist")
    await art.put("p1/dist.tar.gz", bundle(source / "dist"))
    ex = make_executor("kubernetes", {"kubeconfig": kubeconfig, "namespace": NS, "gpus": 2, "events_interval_s": 0.05,
                                      "command": [sys.executable, "-m", "services.runner"],
                                      "launcher_command": [sys.executable, "-m", "services.runner.launcher"]})
    assert isinstance(ex, KubernetesExecutor)
    try:
        async with Kubelet(url, NS, gpus=2, tick_s=0.1, jobsets=True) as kubelet:
            yield ex, kubelet, art, url
    finally:
        await ex.close()
        shutil.rmtree(source, ignore_errors=True)


async def jobset_of(url: str, job_id: str) -> dict[str, Any]:
    from kubernetes import client

    [found] = [js for js in await raw_items(url, lambda api: lambda ns, **kw: client.CustomObjectsApi(api).list_namespaced_custom_object(
        JOBSET_GROUP, JOBSET_VERSION, ns, JOBSET_PLURAL, **kw)) if js["metadata"]["name"] == jobset_name(job_id)]
    return found


async def test_two_nodes_run_one_gloo_job_and_only_node_0_reports(gang: Any, admin_bus: Any, nats_server: Any) -> None:
    """Two pods of one JobSet rendezvous at node 0, all-reduce across both, and node 0's runner alone reports the result."""
    ex, kubelet, art, url = gang
    steps = 8
    await ex.submit(gang_job(nats_server.url, nats_server.credentials["runner"], "g1", steps=steps, step_s=0.05))
    await wait_for(ex, "g1", "running", timeout=60)
    phase = await wait_for(ex, "g1", "succeeded", timeout=120)
    assert phase.state == "succeeded"
    statuses = await statuses_of(admin_bus, "g1")
    assert [s.state for s in statuses] == ["running", "succeeded"]  # one runner reported, not two
    info = json.loads(await art.get("p1/runs/g1/final_info.json"))
    assert info["world_size"] == 2 and info["metrics"]["total"]["mean"] == 3.0 * steps  # ranks 0 and 1 both added each step
    assert "node 1 done: succeeded" in (await art.get("p1/runs/g1/log-node1.txt")).decode()
    js = await jobset_of(url, "g1")
    assert [c["type"] for c in js["status"]["conditions"] if c["status"] == "True"] == ["Completed"]
    assert int(js["status"].get("restarts") or 0) == 0
    await ex.cleanup("p1")
    assert (await ex.poll("g1")).state == "missing"


async def test_an_evicted_node_restarts_the_gang_which_resumes_from_node_0s_checkpoint(
    gang: Any, admin_bus: Any, nats_server: Any,
) -> None:
    """Node 1 is evicted mid-run: every rank stops at the same step and rank 0 checkpoints; node 0's runner, whose
    experiment saw only a failed peer, waits (LAB_GANG_SETTLE_S) and is stopped when the child Job fails, so it uploads
    the checkpoint and reports no failure; the JobSet restarts the gang without counting the restart, and the new gang
    resumes from the checkpoint and completes with every step done exactly once."""
    ex, kubelet, art, url = gang
    steps = 40
    await ex.submit(gang_job(nats_server.url, nats_server.credentials["runner"], "g2", steps=steps, step_s=0.25))
    scratch = Path(kubelet._scratch.name)
    for _ in range(600):  # until rank 0 checkpointed a few steps
        found = [json.loads(p.read_text()) for p in scratch.rglob("dist.json") if p.stat().st_size]
        if found and found[0]["step"] >= 4:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the first gang never got going")
    [worker] = [p for p in kubelet._procs if "-node-0-1-" in p]
    kubelet.evict_requests.add(worker)
    phase = await wait_for(ex, "g2", "succeeded", timeout=150)
    assert phase.state == "succeeded"
    js = await jobset_of(url, "g2")
    assert js["status"]["restarts"] == 1 and int(js["status"].get("restartsCountTowardsMax") or 0) == 0  # not counted
    info = json.loads(await art.get("p1/runs/g2/final_info.json"))
    assert info["starts"] == 2 and 0 < info["resumed_from"] < steps, info
    assert info["metrics"]["total"]["mean"] == 3.0 * steps  # no step lost or done twice across the restart
    statuses = await statuses_of(admin_bus, "g2")
    assert [s.state for s in statuses if s.state != "running"] == ["succeeded"]  # the preempted gang reported no failure
    await ex.cleanup("p1")


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("the runner and launcher containers need the kubelet's per-uid isolation (root)")
