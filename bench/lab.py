"""How a team's lab scales: K concurrent projects, R replicas per role, a slow mind.

For each R in --replicas and K in --projects, a fresh lab (`lab up --replicas all=R`,
its own LAB_HOME) runs K `lab run`s of the tiny sleep template (tests/sleep_template)
at once, every agent pausing --latency seconds per message as a mind call would
(LAB_BENCH_MIND_LATENCY_S). The executor is given capacity for every job, so the
agents, not the executor, are what is measured. Prints per (R, K):

- makespan of K projects over the makespan of one (R's own K=1 run): 1.0 is perfect overlap;
- messages per second (conversation messages over the makespan);
- p50/p99 handler latency (from the agents' heartbeats, worst instance);
- peak RSS per agent process (VmHWM from /proc), largest and mean.

    python -m bench.lab [--projects 1,4,16] [--replicas 1,2] [--latency 1.0]

A benchmark prints numbers; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "tests" / "sleep_template"


def lab(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def one(k: int, replicas: int, latency: float, home: Path) -> dict[str, float]:
    env = {**os.environ, "LAB_HOME": str(home), "PYTHONPATH": str(REPO), "LAB_BENCH_MIND_LATENCY_S": str(latency), "LAB_CONCURRENCY": str(max(8, k))}
    for key in ("LAB_NATS_URL", "LAB_NATS_USER", "LAB_NATS_PASSWORD"):
        env.pop(key, None)
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(f"executor:\n  local:\n    capacity: {4 * k}\n")
    r = lab(env, "up", "--detach", "--replicas", f"all={replicas}")
    if r.returncode != 0:
        raise SystemExit(f"lab up failed: {r.stderr.strip() or r.stdout.strip()}")
    try:
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", "--template", str(TEMPLATE), "--fast", "--seed", str(i), "--max-ideas", "1",
                 "--max-rounds", "0", "-q", "--out", str(home / f"out{i}")],
                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for i in range(k)
        ]
        codes = [p.wait() for p in procs]
        makespan = time.monotonic() - started
        messages = sum(len((home / f"out{i}" / "conversation.jsonl").read_text().splitlines()) for i in range(k) if codes[i] == 0)
        status = json.loads(lab(env, "status", "--json").stdout)
        info = json.loads((home / "lab.json").read_text())
        rss = [peak_rss_mb(pid) for pid in info["agents"].values()]
        p50 = max((b.get("p50_s") or 0.0) for b in status["instances"])
        p99 = max((b.get("p99_s") or 0.0) for b in status["instances"])
        return {"ok": sum(c == 0 for c in codes), "makespan": makespan, "msgs_s": messages / makespan, "p50": p50, "p99": p99,
                "rss_max": max(rss), "rss_mean": sum(rss) / len(rss)}
    finally:
        lab(env, "down")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", default="1,4,16", help="K values, comma-separated (1 is always run first)")
    ap.add_argument("--replicas", default="1,2", help="R values, comma-separated")
    ap.add_argument("--latency", type=float, default=1.0, help="simulated mind seconds per handled message")
    args = ap.parse_args()
    ks = sorted({1, *(int(k) for k in args.projects.split(","))})
    rs = [int(r) for r in args.replicas.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    print(f"{'R':>2} {'K':>3} {'ok':>3} {'makespan s':>10} {'vs K=1':>7} {'msgs/s':>7} {'p50 s':>6} {'p99 s':>6} {'RSS max MB':>10} {'RSS mean MB':>11}")
    throughput: dict[int, float] = {}
    for r in rs:
        base = None
        for k in ks:
            res = one(k, r, args.latency, root / f"r{r}-k{k}")
            base = base or res["makespan"]
            throughput[r] = max(throughput.get(r, 0.0), res["msgs_s"])
            print(f"{r:>2} {k:>3} {res['ok']:>3} {res['makespan']:>10.1f} {res['makespan'] / base:>7.2f} {res['msgs_s']:>7.2f} "
                  f"{res['p50']:>6.2f} {res['p99']:>6.2f} {res['rss_max']:>10.0f} {res['rss_mean']:>11.0f}", flush=True)
    if len(rs) > 1:
        print(f"throughput R={rs[-1]} over R={rs[0]} at the largest K: {throughput[rs[-1]] / throughput[rs[0]]:.2f}x")
    print(f"(labs under {root})")


if __name__ == "__main__":
    main()
