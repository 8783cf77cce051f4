"""How a team's lab scales: K concurrent projects, R replicas per role, a slow mind.

For each R in --replicas, one fresh lab (`lab up --replicas all=R`, its own
LAB_HOME) runs, one after the other, K = 1 and every K in --projects `lab run`s
of the tiny sleep template (tests/sleep_template) at once, every agent pausing
--latency seconds per message as a mind call would (LAB_BENCH_MIND_LATENCY_S).
The executor has capacity for every job, so the agents, not the executor, are
measured. Every number that matters is a ratio against a baseline run side by
side on the same machine at the same time (a loaded machine slows both):

- makespan of K projects over the makespan of one on the same lab (1.0: perfect overlap);
- handled messages per second, and that throughput over R=1's at the same K;
- p50/p99 handler latency (from the agents' "handled" log lines of this run);
- peak RSS per agent process (VmHWM from /proc), largest.

Issue 11's goals, printed as met or not: 16 projects within 2x one project's
makespan; R=2 at 1.7x R=1's throughput on a saturated queue, which needs more
projects than one replica handles at once (--concurrency C with K > C).

    python -m bench.lab [--projects 1,4,16] [--replicas 1,2] [--latency 1.0] [--concurrency C]

A benchmark prints numbers; it asserts nothing (tests only check that it runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "tests" / "sleep_template"
OVERLAP_GOAL = 2.0  # K=16 makespan over K=1's
REPLICA_GOAL = 1.7  # R=2 throughput over R=1's, saturated


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


def handled_since(home: Path, since: float) -> list[float]:
    """Seconds each message took, from every agent's "handled" lines that started after ``since`` (wall clock)."""
    out = []
    for path in (home / "logs").glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"handled"' not in line or not line.startswith("{"):
                continue
            rec = json.loads(line)
            if rec.get("event") == "handled" and rec.get("started", 0) >= since:
                out.append(datetime.fromisoformat(rec["timestamp"]).timestamp() - rec["started"])
    return sorted(out)


def run_projects(env: dict[str, str], home: Path, k: int, tag: str) -> dict[str, float]:
    wall, started = time.time(), time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "--template", str(TEMPLATE), "--fast", "--seed", str(i), "--max-ideas", "1",
             "--max-rounds", "0", "-q", "--out", str(home / f"{tag}-out{i}")],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for i in range(k)
    ]
    codes = [p.wait() for p in procs]
    makespan = time.monotonic() - started
    lat = handled_since(home, wall)
    return {
        "ok": sum(c == 0 for c in codes), "makespan": makespan, "msgs_s": len(lat) / makespan,
        "p50": lat[len(lat) // 2] if lat else float("nan"), "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
    }


def one_lab(replicas: int, ks: list[int], latency: float, concurrency: int, home: Path) -> list[dict[str, float]]:
    """One lab with R replicas per role; K=1, then each K, one after the other on it."""
    env = {**os.environ, "LAB_HOME": str(home), "PYTHONPATH": str(REPO), "LAB_BENCH_MIND_LATENCY_S": str(latency),
           "LAB_CONCURRENCY": str(concurrency or max(8, *ks))}
    for key in ("LAB_NATS_URL", "LAB_NATS_USER", "LAB_NATS_PASSWORD", "LAB_MIND"):
        env.pop(key, None)
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(f"executor:\n  local:\n    capacity: {4 * max(ks)}\n")
    r = lab(env, "up", "--detach", "--replicas", f"all={replicas}")
    if r.returncode != 0:
        raise SystemExit(f"lab up failed: {r.stderr.strip() or r.stdout.strip()}")
    rows = []
    try:
        info = json.loads((home / "lab.json").read_text())
        for k in ks:
            res = run_projects(env, home, k, f"k{k}")
            res["rss_max"] = max(peak_rss_mb(pid) for pid in info["agents"].values())
            rows.append(res)
    finally:
        lab(env, "down")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", default="1,4,16", help="K values, comma-separated (1, the baseline, is always run first)")
    ap.add_argument("--replicas", default="1,2", help="R values, comma-separated (the first is the baseline)")
    ap.add_argument("--latency", type=float, default=1.0, help="simulated mind seconds per handled message")
    ap.add_argument("--concurrency", type=int, default=0, help="projects one agent process handles at once (0: every K at once)")
    args = ap.parse_args()
    ks = sorted({1, *(int(k) for k in args.projects.split(","))})
    rs = [int(r) for r in args.replicas.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    results = {r: dict(zip(ks, one_lab(r, ks, args.latency, args.concurrency, root / f"r{r}"), strict=True)) for r in rs}
    base_r = rs[0]
    print(f"latency {args.latency}s per message, concurrency {args.concurrency or 'K'} per agent; ratios against runs on this machine now")
    print(f"{'R':>2} {'K':>3} {'ok':>3} {'makespan s':>10} {'vs K=1':>7} {'msgs/s':>7} {f'vs R={base_r}':>7} {'p50 s':>6} {'p99 s':>6} {'RSS MB':>7}")
    for r in rs:
        for k in ks:
            res = results[r][k]
            vs_r = res["msgs_s"] / results[base_r][k]["msgs_s"] if results[base_r][k]["msgs_s"] else float("nan")
            print(f"{r:>2} {k:>3} {res['ok']:>3.0f} {res['makespan']:>10.1f} {res['makespan'] / results[r][1]['makespan']:>7.2f} "
                  f"{res['msgs_s']:>7.2f} {vs_r:>7.2f} {res['p50']:>6.2f} {res['p99']:>6.2f} {res['rss_max']:>7.0f}")
    k = ks[-1]
    overlap = results[base_r][k]["makespan"] / results[base_r][1]["makespan"]
    print(f"goal: {k} projects within {OVERLAP_GOAL}x one project's makespan (R={base_r}): {overlap:.2f}x "
          f"{'met' if overlap <= OVERLAP_GOAL else 'not met'}{'' if k >= 16 else ' (the goal names K=16)'}")
    if len(rs) > 1:
        speedup = results[rs[-1]][k]["msgs_s"] / results[base_r][k]["msgs_s"] if results[base_r][k]["msgs_s"] else float("nan")
        saturated = bool(args.concurrency) and k > base_r * args.concurrency
        print(f"goal: R={rs[-1]} at {REPLICA_GOAL}x R={base_r}'s throughput (K={k}): {speedup:.2f}x "
              f"{'met' if speedup >= REPLICA_GOAL else 'not met'}"
              f"{'' if saturated else ' (queue not saturated: pass --concurrency C with K > R*C)'}")
    print(f"(labs under {root})")


if __name__ == "__main__":
    main()
