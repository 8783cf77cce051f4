"""How well the Kubernetes executor keeps a GPU cluster busy.

N runs of known duration go through KubernetesExecutor (real client, real HTTP)
to kmock's emulator, where the test kubelet runs each pod as a local process on
a simulated node of G GPUs. A dispatcher like the engineer's keeps at most
``capacity()`` jobs in flight and polls them. Prints

- GPU utilisation = sum(run times) / (G x makespan), run time being each
  process's measured life (so interpreter start-up counts as useful work);
- dispatch overhead per job = (submit-to-succeeded as the executor saw it)
  minus the process's life: API calls, kubelet ticks and polling latency.

    python -m bench.bench_cluster [--gpus 4] [--runs 32] [--min-s 6] [--max-s 10] [--poll-s 0.1]

A benchmark prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

try:
    import kmock
except ImportError as e:  # a test-only dependency: say which extra brings it, in one line
    sys.exit(f"bench.bench_cluster: needs the test extra, install it with: pip install -e '.[test]' (missing: {e.name})")

from kubelet import Kubelet  # noqa: E402

from bus.schema import JobSpec, NatsAccess  # noqa: E402
from services.executors.kubernetes import KubernetesExecutor  # noqa: E402
from services.executors.render import job_name  # noqa: E402

SLEEPER = ["python", "-c", "import json, os, time; time.sleep(json.loads(os.environ['LAB_JOB'])['overrides']['sleep'])"]


def kubeconfig(folder: Path, server: str) -> str:
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "emu",
           "clusters": [{"name": "emu", "cluster": {"server": server}}],
           "users": [{"name": "u", "user": {"token": "t"}}],
           "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u"}}]}
    path = folder / "kubeconfig"
    path.write_text(json.dumps(cfg))
    return str(path)


async def trim_request_log(emu: kmock.KubernetesEmulator) -> None:
    """kmock matches each request against its whole request log, so a long run slows down
    quadratically and would measure the emulator, not the executor; keep the log short."""
    while True:
        await asyncio.sleep(0.2)
        del emu._requests[:-32]


async def main(gpus: int, runs: int, min_s: float, max_s: float, poll_s: float, seed: int) -> None:
    rng = random.Random(seed)
    durations = [round(rng.uniform(min_s, max_s), 3) for _ in range(runs)]
    jobs = [JobSpec(job_id=f"bench-{i}", project="bench", experiment_id="e", template="bench", bundle_object="b",
                    overrides={"sleep": d}, seeds=[0], wall_time_s=60, memory_mb=256, gpu=1,
                    nats=NatsAccess(url="nats://nats:4222")) for i, d in enumerate(durations)]
    with tempfile.TemporaryDirectory() as tmp:
        async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
            for res in ("batch/v1/jobs", "v1/pods"):
                emu.resources[res] = {}
            url = str(server.url).rstrip("/")
            trimmer = asyncio.create_task(trim_request_log(emu))
            ex = KubernetesExecutor(kubeconfig=kubeconfig(Path(tmp), url), command=SLEEPER, gpus=gpus)
            async with Kubelet(url, "lab", gpus=gpus) as kubelet:
                capacity = ex.capacity() or gpus
                queue = list(jobs)
                submitted: dict[str, float] = {}
                done: dict[str, float] = {}
                start = time.monotonic()
                while len(done) < len(jobs):
                    while queue and len(submitted) - len(done) < capacity:
                        job = queue.pop(0)
                        submitted[job.job_id] = time.monotonic()
                        await ex.submit(job)
                    # Poll every job in flight at once, as a dispatcher watching G GPUs should.
                    in_flight = [j for j in submitted if j not in done]
                    phases = await asyncio.gather(*(ex.poll(j) for j in in_flight))
                    for job_id, phase in zip(in_flight, phases, strict=True):
                        if phase.state in ("succeeded", "failed"):
                            if phase.state == "failed":
                                raise SystemExit(f"{job_id} failed: {phase.reason}")
                            done[job_id] = time.monotonic()
                    await asyncio.sleep(poll_s)
                makespan = max(done.values()) - start
                lives = {}
                for job in jobs:
                    [pod] = [p for p in kubelet.started if p.startswith(job_name(job.job_id) + "-")]
                    lives[job.job_id] = kubelet.ended[pod] - kubelet.started[pod]
            await ex.cleanup("bench")
            await ex.close()
            trimmer.cancel()
    busy = sum(lives.values())
    overhead = [(done[j] - submitted[j]) - lives[j] for j in done]
    print(f"cluster: {gpus} GPUs, {runs} runs of {min_s}-{max_s}s (sum of sleeps {sum(durations):.1f}s), poll every {poll_s}s")
    print(f"makespan:                {makespan:.2f} s  (ideal >= {sum(durations) / gpus:.2f} s)")
    print(f"sum of run times:        {busy:.2f} s  (process life incl. interpreter start)")
    print(f"GPU utilisation:         {busy / (gpus * makespan):.1%}")
    print(f"dispatch overhead / job: mean {sum(overhead) / len(overhead) * 1000:.0f} ms, max {max(overhead) * 1000:.0f} ms")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.bench_cluster", description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=4)
    p.add_argument("--runs", type=int, default=32)
    p.add_argument("--min-s", type=float, default=6.0)
    p.add_argument("--max-s", type=float, default=10.0)
    p.add_argument("--poll-s", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    asyncio.run(main(a.gpus, a.runs, a.min_s, a.max_s, a.poll_s, a.seed))
