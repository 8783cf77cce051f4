"""KubernetesExecutor: the real ``kubernetes`` client over HTTP against kmock's emulator.

A test kubelet (tests/kubelet.py) runs the Jobs. The runner container's
command is a stand-in for ``python -m services.runner`` (which needs NATS
and a bundle): it reads the job from its mounted Secret, sleeps and exits as
the job's overrides say, so every exit-code path of the real runner (0, 3, 4)
reaches the executor through a real process and a real pod/Job status; the
experiment container's launcher is a stand-in that exits at once. The real
runner and launcher through this executor: tests/integration/test_split_hostile.py
and the e2e test.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client

from bus.schema import JobPhase, JobSpec, NatsAccess
from services.executors import make_executor
from services.executors.base import ExecutorError
from services.executors.kubernetes import KubernetesExecutor
from services.executors.render import JOB_ID_ANNOTATION, KUEUE_QUEUE_LABEL, dns_name, job_name
from tests.kubelet import Kubelet

NS = "lab"
NODE_NAME_REF = {"fieldRef": {"fieldPath": "spec.nodeName"}}
STAND_IN = [
    "python", "-c",
    "import json, os, signal, sys, time\n"
    "job = json.load(open(os.environ['LAB_JOB_FILE'])); o = job['overrides']\n"
    # As the real runner: SIGTERM (preemption, eviction) -> checkpoint, then exit 4 (infrastructure)
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(4))\n"
    "if 'LAB_JOB' in os.environ: sys.exit(7)\n"
    "pw = open(os.environ['LAB_NATS_PASSWORD_FILE']).read() if 'LAB_NATS_PASSWORD_FILE' in os.environ else None\n"
    "if 'need_password' in o and pw != o['need_password']: sys.exit(9)\n"
    "if job['nats'].get('password') and 'need_password' in o: sys.exit(8)\n"
    "time.sleep(o.get('sleep', 0)); sys.exit(o.get('exit', 0))\n",
]
LAUNCHER_STAND_IN = ["python", "-c", "pass"]


def spec(job_id: str, project: str = "p1", **kw: Any) -> JobSpec:
    overrides = kw.pop("overrides", {})
    return JobSpec(
        job_id=job_id, project=project, experiment_id="e1", template="grokking", bundle_object=f"{project}/b.tar.gz",
        overrides=overrides, seeds=[0, 1, 2], wall_time_s=kw.pop("wall_time_s", 60), memory_mb=512,
        nats=NatsAccess(url="nats://nats:4222", user="runner", password="s3cret"), **kw,
    )


def kubeconfig(path: Path, server: str) -> str:
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u", "namespace": NS}}],
    }
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        for res in ("batch/v1/jobs", "v1/pods", "v1/secrets", "v1/configmaps", "v1/events"):
            emu.resources[res] = {}
        url = str(server.url).rstrip("/")
        yield emu, url, kubeconfig(tmp_path / "kubeconfig", url)


@pytest.fixture
async def make(cluster: Any) -> Any:
    made: list[KubernetesExecutor] = []

    def build(**options: Any) -> KubernetesExecutor:
        options = {"events_interval_s": 0.05, "api_retry_max_wait_s": 0.2, **options}
        ex = make_executor("kubernetes", {"kubeconfig": cluster[2], "namespace": NS, "command": STAND_IN,
                                          "launcher_command": LAUNCHER_STAND_IN, **options})
        assert isinstance(ex, KubernetesExecutor)
        made.append(ex)
        return ex

    yield build
    for ex in made:
        await ex.close()


async def raw_items(url: str, lister: Callable[[client.ApiClient], Callable[..., Any]]) -> list[dict[str, Any]]:
    """The stored objects ``lister(api)`` lists in NS, read in a thread: the emulator serves from this very event loop."""

    def read() -> list[dict[str, Any]]:
        cfg = client.Configuration()
        cfg.host = url
        with client.ApiClient(cfg) as api:
            return json.loads(lister(api)(NS, _preload_content=False).data)["items"]

    return await asyncio.to_thread(read)


async def raw_jobs(url: str) -> list[dict[str, Any]]:
    return await raw_items(url, lambda api: client.BatchV1Api(api).list_namespaced_job)


async def raw_secrets(url: str) -> list[dict[str, Any]]:
    return await raw_items(url, lambda api: client.CoreV1Api(api).list_namespaced_secret)


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    import base64

    return {**{k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}, **(secret.get("stringData") or {})}


async def wait_for(ex: KubernetesExecutor, job_id: str, state: str, timeout: float = 20) -> JobPhase:
    deadline = asyncio.get_running_loop().time() + timeout
    phase = await ex.poll(job_id)
    while phase.state != state:
        assert asyncio.get_running_loop().time() < deadline, f"{job_id} stuck in {phase}"
        await asyncio.sleep(0.05)
        phase = await ex.poll(job_id)
    return phase


async def test_submit_renders_security_gpu_and_failure_policy(make: Any, cluster: Any) -> None:
    ex = make(gpus=2, priority_class="lab-jobs", gpu_node_selector={"nvidia.com/gpu.present": "true"})
    await ex.submit(spec("run-1", gpu=1, wall_time_s=100))
    [job] = (await raw_jobs(cluster[1]))
    assert job["metadata"]["name"] == "lab-run-1"
    assert job["metadata"]["labels"]["lab.kenkyu.dev/project"] == "p1"
    assert job["metadata"]["annotations"][JOB_ID_ANNOTATION] == "run-1"
    s = job["spec"]
    assert s["activeDeadlineSeconds"] == 100 + 300 and s["backoffLimit"] == 2 and s["ttlSecondsAfterFinished"] == 3600
    rules = s["podFailurePolicy"]["rules"]
    assert [(r["action"], r.get("onExitCodes", {}).get("values")) for r in rules] == [
        ("Ignore", None), ("FailJob", [3]), ("Count", [4])]  # the first match wins: a disruption is never counted
    assert rules[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    pod = s["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["shareProcessNamespace"] is False
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["priorityClassName"] == "lab-jobs"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    runner, exp = pod["containers"]
    assert (runner["name"], exp["name"]) == ("runner", "experiment")
    lockdown = {"runAsNonRoot": True, "runAsGroup": 10001, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert runner["securityContext"] == {**lockdown, "runAsUser": 10001}
    assert exp["securityContext"] == {**lockdown, "runAsUser": 10002}  # never the runner's uid
    assert exp["resources"]["limits"] == {"cpu": "1000m", "memory": "640Mi", "nvidia.com/gpu": "1"}
    assert runner["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    assert {m["mountPath"] for m in runner["volumeMounts"]} == {"/tmp", "/scratch", "/run/lab/job"}
    assert {m["mountPath"] for m in exp["volumeMounts"]} == {"/tmp", "/scratch", "/dev/shm"}
    assert pod["terminationGracePeriodSeconds"] == 20 + 30  # the experiment's grace, then the runner's upload
    assert {"medium": "Memory", "sizeLimit": "256Mi"} == {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {m["name"] for m in runner["volumeMounts"]} & {m["name"] for m in exp["volumeMounts"]} == {"scratch"}
    assert volumes["job"]["secret"]["secretName"] == "lab-run-1"
    # No credential, nor the job, in any environment; the experiment's holds nothing of the runner's.
    # (The runner's one reference is to its pod's node, for env.json's provenance.)
    for c in (runner, exp):
        assert all("valueFrom" not in e or e["valueFrom"] == NODE_NAME_REF for e in c["env"]) and "LAB_JOB" not in {e["name"] for e in c["env"]}
    assert {e["name"]: e for e in runner["env"]}["LAB_NODE_NAME"]["valueFrom"] == NODE_NAME_REF
    assert "s3cret" not in json.dumps(job)
    assert {e["name"] for e in exp["env"]} == {"TMPDIR", "HOME", "PYTHONDONTWRITEBYTECODE", "MPLCONFIGDIR", "LAB_SHARED_DIR"}
    [secret] = await raw_secrets(cluster[1])
    assert secret["metadata"]["name"] == "lab-run-1" and secret["metadata"]["labels"]["lab.kenkyu.dev/job"] == "run-1"
    inner = JobSpec.model_validate_json(secret_data(secret)["job.json"])
    assert inner.nats.password == "s3cret"  # no NATS Secret configured: it travels in the job's own Secret


async def test_gpu_placement_mig_shm_and_scratch_come_from_config_and_template(make: Any, cluster: Any) -> None:
    ex = make(gpus=2, gpu_products=["NVIDIA-H100-80GB-HBM3"], mig_profile="1g.10gb", gpu_runtime_class="nvidia",
              tolerations=[{"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}])
    await ex.submit(spec("placed", gpu=1, shm_mb=1024, disk_mb=8192, term_grace_s=45))
    await ex.submit(spec("cpu-only"))
    jobs = {j["metadata"]["name"]: j["spec"]["template"]["spec"] for j in await raw_jobs(cluster[1])}
    pod, cpu_pod = jobs["lab-placed"], jobs["lab-cpu-only"]
    [term] = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}]
    assert pod["runtimeClassName"] == "nvidia" and "runtimeClassName" not in cpu_pod and "affinity" not in cpu_pod
    assert {t["key"] for t in pod["tolerations"]} == {"team", "nvidia.com/gpu"} and [t["key"] for t in cpu_pod["tolerations"]] == ["team"]
    exp = pod["containers"][1]
    assert exp["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1" and "nvidia.com/gpu" not in exp["resources"]["limits"]
    assert exp["resources"]["requests"]["ephemeral-storage"] == exp["resources"]["limits"]["ephemeral-storage"] == "8192Mi"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1024Mi"}
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "8192Mi"}
    assert pod["terminationGracePeriodSeconds"] == 45 + 30
    runner_env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert runner_env["LAB_TERM_GRACE_S"] == "45.0"


async def test_submit_is_idempotent_and_names_are_dns_safe(make: Any, cluster: Any) -> None:
    ex = make()
    await ex.submit(spec("dup"))
    await ex.submit(spec("dup", overrides={"sleep": 5}))  # same job_id: nothing new, nothing changed
    jobs = (await raw_jobs(cluster[1]))
    assert len(jobs) == 1 and '"sleep"' not in json.dumps(jobs[0])
    ids = ["A_b.c" * 20, "A_b.c" * 20 + "x", "exp_1", "exp-1"]
    names = [job_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    for n in names:
        assert len(n) <= 63 and dns_name("lab", n.removeprefix("lab-")) == n


async def test_gpu_capacity_unschedulable_then_runs_in_turn(make: Any, cluster: Any) -> None:
    ex = make(gpus=1)
    assert ex.capacity() == 1
    async with Kubelet(cluster[1], NS, gpus=1):
        await ex.submit(spec("first", gpu=1, overrides={"sleep": 1.5}))
        await wait_for(ex, "first", "running")
        await ex.submit(spec("second", gpu=1, overrides={"sleep": 0.1}))
        phase = await wait_for(ex, "second", "pending")
        while "Unschedulable" not in phase.reason:
            phase = await wait_for(ex, "second", "pending")
        assert "nvidia.com/gpu" in phase.reason
        assert (await ex.poll("first")).state == "running"
        await wait_for(ex, "first", "succeeded")
        await wait_for(ex, "second", "succeeded")


async def test_exit_codes_map_to_failure_reasons(make: Any, cluster: Any) -> None:
    ex = make(backoff_limit=1, startup_margin_s=0)
    async with Kubelet(cluster[1], NS) as kubelet:
        await ex.submit(spec("bad-exp", overrides={"exit": 3}))
        await ex.submit(spec("no-bus", overrides={"exit": 4}))
        await ex.submit(spec("hang", overrides={"sleep": 60}, wall_time_s=1))
        bad = await wait_for(ex, "bad-exp", "failed")
        assert bad.reason.startswith("PodFailurePolicy") and "experiment failed" in bad.reason
        nobus = await wait_for(ex, "no-bus", "failed")
        assert nobus.reason.startswith("BackoffLimitExceeded") and "could not reach NATS" in nobus.reason
        assert sum(n.startswith("lab-no-bus") for n in kubelet.started) == 2  # exit 4 counted and retried once
        assert sum(n.startswith("lab-bad-exp") for n in kubelet.started) == 1  # exit 3 never retried
        hang = await wait_for(ex, "hang", "failed")
        assert hang.reason.startswith("DeadlineExceeded")


async def test_eviction_is_ignored_and_retried(make: Any, cluster: Any) -> None:
    """An evicted pod's runner gets SIGTERM and exits 4 (as the real one does after checkpointing); it must not count.

    The test kubelet sets DisruptionTarget, sends SIGTERM, waits out terminationGracePeriodSeconds,
    then SIGKILLs; its Job controller applies podFailurePolicy rules in order, exit-code rules
    included. What it cannot show: a real node's drain timing or Kueue's preemption path.
    """
    ex = make(backoff_limit=0)
    async with Kubelet(cluster[1], NS) as kubelet:
        await ex.submit(spec("evicted", overrides={"sleep": 6}))
        await wait_for(ex, "evicted", "running")
        await asyncio.sleep(2)  # running is the pod's phase: let the stand-in set its SIGTERM handler before the eviction
        kubelet.evict_requests.add("lab-evicted")
        await wait_for(ex, "evicted", "succeeded")  # backoffLimit 0, yet the disruption did not count
        assert len([n for n in kubelet.started if n.startswith("lab-evicted")]) == 2
    [job] = await raw_jobs(cluster[1])
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 20 + 30


async def test_eviction_counts_as_failure_under_the_old_rule_order(make: Any, cluster: Any) -> None:
    """The kubelet's controller is faithful enough to fail the old policy: Count on exit 4 before Ignore on DisruptionTarget."""
    ex = make(backoff_limit=0)
    async with Kubelet(cluster[1], NS) as kubelet:
        original = kubelet._job_pod_ended

        async def old_order(job: dict[str, Any], *args: Any, **kw: Any) -> None:
            rules = job["spec"]["podFailurePolicy"]["rules"]
            job["spec"]["podFailurePolicy"]["rules"] = rules[1:] + rules[:1]  # Ignore moved last, as before
            await original(job, *args, **kw)

        kubelet._job_pod_ended = old_order  # type: ignore[method-assign]
        await ex.submit(spec("old-order", overrides={"sleep": 60}))  # the eviction ends it: never a race with its own end
        await wait_for(ex, "old-order", "running")
        await asyncio.sleep(2)  # running is the pod's phase: let the stand-in set its SIGTERM handler before the eviction
        kubelet.evict_requests.add("lab-old-order")
        failed = await wait_for(ex, "old-order", "failed")
        assert failed.reason.startswith("BackoffLimitExceeded")


async def test_image_pull_failure_pends_then_fails(make: Any, cluster: Any) -> None:
    ex = make(image="registry.invalid/nope:1", pull_failure_grace_s=0.5)
    async with Kubelet(cluster[1], NS, bad_images={"registry.invalid/nope:1"}):
        await ex.submit(spec("pull"))
        phase = await wait_for(ex, "pull", "pending")
        while "ImagePullBackOff" not in phase.reason:
            phase = await ex.poll("pull")
            assert phase.state == "pending"
        failed = await wait_for(ex, "pull", "failed")
        assert "ImagePullBackOff" in failed.reason


async def test_nats_credential_comes_from_a_secret(make: Any, cluster: Any) -> None:
    cfg = client.Configuration()
    cfg.host = cluster[1]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lab-nats-job", "namespace": NS},
              "stringData": {"user": "runner", "password": "from-secret"}}
    with client.ApiClient(cfg) as api:
        await asyncio.to_thread(client.CoreV1Api(api).create_namespaced_secret, NS, secret)
    ex = make(nats_secret="lab-nats-job")
    async with Kubelet(cluster[1], NS):
        await ex.submit(spec("secret", overrides={"need_password": "from-secret"}))
        await wait_for(ex, "secret", "succeeded")
    [job] = (await raw_jobs(cluster[1]))
    assert "s3cret" not in json.dumps(job)
    [secret] = [s for s in await raw_secrets(cluster[1]) if s["metadata"]["name"] == "lab-secret"]
    assert "s3cret" not in json.dumps(secret)  # the job's own Secret: the password stays in the NATS one
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LAB_NATS_PASSWORD_FILE"] == "/run/lab/nats/password" and env["LAB_NATS_USER_FILE"] == "/run/lab/nats/user"
    [nats] = [v for v in pod["volumes"] if v["name"] == "nats"]
    assert nats["secret"] == {"secretName": "lab-nats-job", "defaultMode": 0o440,
                              "items": [{"key": "user", "path": "user"}, {"key": "password", "path": "password"}]}
    assert "nats" not in {m["name"] for m in pod["containers"][1]["volumeMounts"]}


async def test_cancel_deletes_job_and_stops_its_process(make: Any, cluster: Any) -> None:
    ex = make()
    async with Kubelet(cluster[1], NS) as kubelet:
        await ex.submit(spec("long", overrides={"sleep": 60}))
        await wait_for(ex, "long", "running")
        await ex.cancel("long")
        assert (await ex.poll("long")).state == "missing"
        procs = [p for pod in kubelet._procs.values() for p in pod.values()]
        for _ in range(100):
            if all(p.returncode is not None for p in procs):
                break
            await asyncio.sleep(0.05)
        assert procs and all(p.returncode is not None for p in procs)
        assert await raw_secrets(cluster[1]) == []  # the job's Secret went with it
    await ex.cancel("long")  # gone already: no error


async def test_cleanup_removes_only_the_projects_jobs(make: Any, cluster: Any) -> None:
    ex = make()
    for job_id, project in (("a1", "alpha"), ("a2", "alpha"), ("b1", "beta")):
        await ex.submit(spec(job_id, project=project))
    await ex.cleanup("alpha")
    assert [j["metadata"]["name"] for j in (await raw_jobs(cluster[1]))] == ["lab-b1"]
    await ex.cleanup("beta")
    assert (await raw_jobs(cluster[1])) == []


async def test_kueue_queue_submits_suspended(make: Any, cluster: Any) -> None:
    ex = make(kueue_queue="lab-gpus", gpus=8)
    assert ex.capacity() is None
    await ex.submit(spec("queued"))
    [job] = (await raw_jobs(cluster[1]))
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "lab-gpus"
    assert (await ex.poll("queued")) == JobPhase(state="pending", reason="suspended: waiting for admission (Kueue)")


async def test_forbidden_by_rbac_names_verb_and_resource(tmp_path: Path) -> None:
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        emu.resources["batch/v1/jobs"] = {}
        emu["post", kmock.resource("batch", "v1", "jobs")] << kmock.KubernetesError(
            status=403, reason="Forbidden",
            message='jobs.batch is forbidden: User "system:serviceaccount:lab:default" cannot create resource "jobs"')
        ex = KubernetesExecutor(kubeconfig=kubeconfig(tmp_path / "k", str(server.url).rstrip("/")))
        with pytest.raises(ExecutorError, match=r"forbidden by RBAC: cannot create jobs.batch in namespace lab"):
            await ex.submit(spec("x"))
        await ex.close()


async def test_unreachable_cluster_and_bad_settings_are_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = KubernetesExecutor(kubeconfig=kubeconfig(tmp_path / "k", f"http://127.0.0.1:{port}"), request_timeout_s=2, api_retries=1)
    with pytest.raises(ExecutorError, match=r"no cluster reachable at http://127.0.0.1:\d+"):
        await ex.poll("x")
    await ex.close()
    with pytest.raises(ExecutorError, match=r"bad executor option gpus"):
        make_executor("kubernetes", {"gpus": 0})
    with pytest.raises(ExecutorError, match=r"bad executor option bogus: Extra inputs"):
        make_executor("kubernetes", {"bogus": 1})
    with pytest.raises(ExecutorError, match=r"no usable configuration"):
        make_executor("kubernetes", {"kubeconfig": str(tmp_path / "missing"), "in_cluster": False})


async def test_a_job_name_owned_by_another_project_is_refused_not_adopted(make: Any, cluster: Any) -> None:
    ex = make()
    await ex.submit(spec("same"))
    await ex.submit(spec("same"))  # the same project and experiment: adopted
    with pytest.raises(ExecutorError, match="already exists for project 'p1'.*refusing to adopt"):
        await ex.submit(spec("same", project="p2"))
    assert len(await raw_jobs(cluster[1])) == 1


def refuse_creates(emu: Any, times: int, error: Any) -> None:
    """The next ``times`` Job creates fail with ``error`` and store nothing, as a real admission refusal.

    (The emulator stores an object before any reaction runs; the callback takes it back.)
    """
    def refuse(request: Any) -> Any:
        name = request.data["metadata"]["name"]
        for key in [k for k in emu.objects.keys() if k[2] == name]:
            del emu.objects[key]
        return error

    emu["post", kmock.resource("batch", "v1", "jobs")][:times] << refuse


def _requests(emu: Any, action: str, plural: str, selected: bool = False) -> int:
    """Requests the emulator saw; ``selected``: only those with a label selector (the executor's, not the kubelet's)."""
    group, version = ("batch", "v1") if plural == "jobs" else ("", "v1")
    found = list(emu[action, kmock.resource(group, version, plural)])
    return len([r for r in found if not selected or "labelSelector" in r.params])


async def test_forbidden_quota_is_told_apart_from_rbac_and_retried(make: Any, cluster: Any) -> None:
    emu = cluster[0]
    refuse_creates(emu, 4, kmock.KubernetesError(
        status=403, reason="Forbidden",
        message='jobs.batch "lab-q" is forbidden: exceeded quota: lab-quota, '
                'requested: count/jobs.batch=1, used: count/jobs.batch=8, limited: count/jobs.batch=8'))
    ex = make(api_retries=1)
    with pytest.raises(ExecutorError, match=r"rejected by a ResourceQuota in namespace lab \(full for now\).*exceeded quota") as info:
        await ex.submit(spec("q"))
    assert "RBAC" not in str(info.value)
    assert await raw_jobs(cluster[1]) == [] and _requests(emu, "create", "jobs") == 2  # retried once
    await make(api_retries=2).submit(spec("q"))  # two more refusals, then the quota has room: created
    assert [j["metadata"]["name"] for j in await raw_jobs(cluster[1])] == ["lab-q"]
    assert _requests(emu, "create", "jobs") == 5


async def test_forbidden_by_rbac_fails_at_once_without_retries(make: Any, cluster: Any) -> None:
    emu = cluster[0]
    refuse_creates(emu, 10, kmock.KubernetesError(
        status=403, reason="Forbidden",
        message='jobs.batch is forbidden: User "system:serviceaccount:lab:lab-engineer" cannot create resource "jobs"'))
    with pytest.raises(ExecutorError, match=r"forbidden by RBAC: cannot create jobs.batch in namespace lab"):
        await make(api_retries=3).submit(spec("r"))
    assert _requests(emu, "create", "jobs") == 1


async def test_429_on_listing_is_retried_then_poll_succeeds(make: Any, cluster: Any) -> None:
    emu = cluster[0]
    ex = make(api_retries=2)
    await ex.submit(spec("busy"))
    emu["list", kmock.resource("batch", "v1", "jobs")][:2] << kmock.KubernetesError(
        status=429, reason="TooManyRequests", message="Too many requests, please try again later.")
    assert await ex.poll("busy") == JobPhase(state="pending", reason="waiting for the job controller to create a pod")
    assert _requests(emu, "list", "jobs") == 3  # two 429s, then the answer


async def test_500_after_the_job_was_created_adopts_it_instead_of_duplicating(make: Any, cluster: Any) -> None:
    emu = cluster[0]
    # The emulator stores the Job and then answers 500: the create happened, the client cannot know.
    emu["post", kmock.resource("batch", "v1", "jobs")][:1] << kmock.KubernetesError(
        status=500, reason="InternalError", message="etcdserver: request timed out")
    ex = make(api_retries=2)
    await ex.submit(spec("once"))
    assert [j["metadata"]["name"] for j in await raw_jobs(cluster[1])] == ["lab-once"]
    assert _requests(emu, "create", "jobs") == 1  # looked first, found it ours, did not create again
    with pytest.raises(ExecutorError, match="refusing to adopt"):
        emu["post", kmock.resource("batch", "v1", "jobs")][:1] << kmock.KubernetesError(status=503, reason="Unavailable", message="x")
        await ex.submit(spec("once", project="p2"))


@pytest.mark.parametrize("rejection, state, words", [
    ("exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4",
     "pending", "wait for a ResourceQuota"),
    ('violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false', "failed", "rejected by Pod Security admission"),
])
async def test_pods_that_cannot_be_created_are_reported_with_the_event(make: Any, cluster: Any, rejection: str, state: str, words: str) -> None:
    ex = make()
    async with Kubelet(cluster[1], NS, reject_pods=rejection):
        await ex.submit(spec("refused"))
        phase = await ex.poll("refused")
        deadline = asyncio.get_running_loop().time() + 20
        while "FailedCreate" not in phase.reason:
            assert asyncio.get_running_loop().time() < deadline, phase
            await asyncio.sleep(0.05)
            phase = await ex.poll("refused")
    assert phase.state == state and words in phase.reason and rejection in phase.reason


async def test_a_pod_stuck_unschedulable_is_reported_while_it_waits(make: Any, cluster: Any) -> None:
    ex = make(gpus=1, unschedulable_after_s=0.3)
    async with Kubelet(cluster[1], NS, gpus=0):
        await ex.submit(spec("nogpu", gpu=1))
        phase = await wait_for(ex, "nogpu", "pending")
        deadline = asyncio.get_running_loop().time() + 20
        while not phase.reason.startswith("unschedulable for"):
            assert phase.state == "pending" and asyncio.get_running_loop().time() < deadline, phase
            await asyncio.sleep(0.05)
            phase = await ex.poll("nogpu")
        assert "Insufficient nvidia.com/gpu" in phase.reason


async def test_status_comes_from_one_watch_not_a_call_per_job(make: Any, cluster: Any) -> None:
    emu = cluster[0]
    ex = make()
    async with Kubelet(cluster[1], NS):
        for i in range(4):
            await ex.submit(spec(f"w-{i}", overrides={"sleep": 0.3}))
        for i in range(4):
            await wait_for(ex, f"w-{i}", "succeeded")
    jobs, pods = ex._watchers or ()
    assert (jobs.lists, pods.lists) == (1, 1)  # one LIST each, then the watch streams every change
    assert _requests(emu, "watch", "jobs") == 1 and _requests(emu, "watch", "pods") == 1
    # The executor's own LISTs are the watchers' one each; GETs only for Jobs the stream had not shown yet.
    assert _requests(emu, "list", "jobs", selected=True) == 1 and _requests(emu, "list", "pods", selected=True) == 1
    assert _requests(emu, "fetch", "jobs") <= 4
    await ex.cancel("w-0")
    assert (await ex.poll("w-0")).state == "missing"  # a cancel is never hidden by the cache


async def test_an_expired_watch_resyncs_with_a_fresh_list(make: Any, cluster: Any) -> None:
    emu = cluster[0]
    emu["watch", kmock.resource("batch", "v1", "jobs")][:1] << kmock.KubernetesError(
        status=410, reason="Expired", message="too old resource version: 1 (2)")
    ex = make()
    async with Kubelet(cluster[1], NS):
        await ex.submit(spec("resync", overrides={"sleep": 0.2}))
        await wait_for(ex, "resync", "succeeded")
    jobs, _ = ex._watchers or ()
    assert jobs.lists == 2 and _requests(emu, "watch", "jobs") == 2  # 410, list again, watch again


async def test_kueue_admission_starts_the_deadline_clock(make: Any, cluster: Any) -> None:
    """Suspended time does not count: Kubernetes resets startTime, and so activeDeadlineSeconds, on resume."""
    ex = make(kueue_queue="lab-gpus", startup_margin_s=2)
    async with Kubelet(cluster[1], NS):
        await ex.submit(spec("admitted", wall_time_s=1, overrides={"sleep": 0.1}))
        [job] = await raw_jobs(cluster[1])
        assert job["spec"]["activeDeadlineSeconds"] == 3
        await asyncio.sleep(3.5)  # queued longer than the whole deadline
        assert (await ex.poll("admitted")).reason == "suspended: waiting for admission (Kueue)"
        cfg = client.Configuration()
        cfg.host = cluster[1]
        with client.ApiClient(cfg) as api:  # what Kueue does on admission
            await asyncio.to_thread(client.BatchV1Api(api).patch_namespaced_job, "lab-admitted", NS, {"spec": {"suspend": False}})
        await wait_for(ex, "admitted", "succeeded")


async def test_a_job_still_running_when_the_lab_died_is_adopted_by_the_next_engineer(make: Any, cluster: Any) -> None:
    """The whole lab is killed; the Job runs on in the cluster. The next engineer's executor finds it running,
    submits nothing new for a redelivered request, and sees it finish: adopted, never run twice."""
    first = make()
    async with Kubelet(cluster[1], NS) as kubelet:
        await first.submit(spec("outlives", overrides={"sleep": 1.5}))
        await wait_for(first, "outlives", "running")
        await first.close()  # the engineer (and the whole lab with it) is gone; the cluster is not
        second = make()
        assert (await second.poll("outlives")).state == "running"
        await second.submit(spec("outlives", overrides={"sleep": 1.5}))  # the redelivered request adopts it
        assert (await wait_for(second, "outlives", "succeeded")).state == "succeeded"
        assert len(await raw_jobs(cluster[1])) == 1
        assert sum(n.startswith("lab-outlives") for n in kubelet.started) == 1


async def test_a_runner_that_dies_while_the_experiment_waits_fails_the_job_at_once(make: Any, cluster: Any) -> None:
    """The pod stays Running (its experiment container waits for the runner) until the deadline: the executor says failed now."""
    ex = make(startup_margin_s=0, launcher_command=["python", "-c", "import time; time.sleep(60)"])  # waits for a runner that never comes
    async with Kubelet(cluster[1], NS, crash={"runner": 127}) as kubelet:
        await ex.submit(spec("crash", overrides={"sleep": 60}, wall_time_s=300))
        phase = await wait_for(ex, "crash", "failed")
        assert phase.leftover and "runner exited 127" in phase.reason and "experiment container still ran" in phase.reason, phase
        [pod] = [n for n in kubelet.started if n.startswith("lab-crash")]
        experiment = kubelet._procs[pod]["experiment"]
        assert experiment.returncode is None  # it still waits, holding what the pod asked for
        await ex.cancel("crash")  # what the job watch does with a leftover: the experiment container goes too
        for _ in range(100):
            if experiment.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert experiment.returncode is not None
