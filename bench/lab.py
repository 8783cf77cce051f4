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
- peak RSS per agent process (VmHWM from /proc), largest;
- CPU-seconds of the K projects (``cpu_seconds``): the lab's whole process tree (supervisor, NATS server,
  auth service, agents, job runners, experiments, TeX) plus the `lab run` clients, and the lower bound on
  the makespan they allow, max(one project's makespan, CPU-seconds / cores), with the K-project makespan
  as a ratio to it (1.0: the machine could not have done it faster; much more: time lost to waiting).

The projects run with `lab run --no-cache`: every project runs its own jobs, so the
makespan ratios measure orchestration, not what the result cache saves (``--cache`` does).

Issue 11's goals, printed as met or not: 16 projects within 2x one project's
makespan; R=2 at 1.7x R=1's throughput on a saturated queue, which needs more
projects than one replica handles at once (--concurrency C with K > C).

    python -m bench.lab [--projects 1,4,16] [--replicas 1,2] [--latency 1.0] [--concurrency C]

With ``--cache K`` it measures the result cache (bus/resultcache.py) instead: on one
fresh lab, K concurrent `--fast` projects with ``--no-cache``, then the same K with
the cache (which the first pass left empty: a fresh run stores nothing). Printed:
the jobs each pass ran and their job-seconds (the runs' wall seconds, from the
engineers' "job finished" log lines) side by side, their ratio, each pass's
CPU-seconds, and whether, with the cache,
each distinct run (code, configuration, seeds, runtime: its cache key) ran
exactly once lab-wide.

    python -m bench.lab --cache 16 [--latency 1.0]

A benchmark prints numbers; it asserts nothing (tests only check that it runs).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

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


def tree_cpu_s(root: int) -> float:
    """CPU-seconds used so far by the process tree under ``root`` (the lab's supervisor), read from /proc.

    Each live process counts its own user and system time plus its reaped children's (utime + stime +
    cutime + cstime): a job runner, an experiment or a TeX run that has ended was waited for by its
    parent (the engineer polls its runners, a runner waits for its experiment, the writer for TeX), so
    its time is in that parent's cutime/cstime, once. The lab is a detached session (`lab up --detach`),
    not this process's child, which is why RUSAGE_CHILDREN cannot see it. What a process reparented away
    from the tree used (none of the lab's do that) would be missed.
    """
    procs: dict[int, tuple[int, int]] = {}  # pid: (parent, clock ticks)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        except (OSError, IndexError):
            continue  # it ended while we read
        procs[int(d.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))  # utime stime cutime cstime
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += procs.get(pid, (0, 0))[1]
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def clients_cpu_s() -> float:
    """CPU-seconds of this process's reaped children: the `lab run` clients, each waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cores() -> int:
    return len(os.sched_getaffinity(0))


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


def run_projects(env: dict[str, str], home: Path, k: int, tag: str, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """K concurrent `lab run`s on the lab under ``home``: their makespan, throughput, latency and CPU-seconds."""
    root = json.loads((home / "lab.json").read_text())["supervisor_pid"]
    cpu0 = tree_cpu_s(root) + clients_cpu_s()
    wall, started = time.time(), time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "--template", str(TEMPLATE), "--fast", "--seed", str(i), "--max-ideas", "1",
             "--max-rounds", "0", "-q", "--out", str(home / f"{tag}-out{i}"), *extra],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for i in range(k)
    ]
    codes = [p.wait() for p in procs]
    makespan = time.monotonic() - started
    cpu_s = tree_cpu_s(root) + clients_cpu_s() - cpu0
    lat = handled_since(home, wall)
    return {
        "since": wall, "ok": sum(c == 0 for c in codes), "makespan": makespan, "msgs_s": len(lat) / makespan, "cpu_s": cpu_s,
        "p50": lat[len(lat) // 2] if lat else float("nan"), "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
    }


def job_events(home: Path, since: float, until: float) -> dict[str, Any]:
    """What the engineers logged between ``since`` and ``until`` (wall clock): jobs run and their wall seconds, runs served.

    ``runs``: how many jobs ran per cache key (each distinct code, configuration, seeds and runtime).
    """
    runs: dict[str, int] = {}
    out: dict[str, Any] = {"dispatched": 0, "served": 0, "job_s": 0.0, "runs": runs}
    for path in (home / "logs").glob("engineer*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{") or '"job ' not in line:
                continue
            rec = json.loads(line)
            at = datetime.fromisoformat(rec["timestamp"]).timestamp()
            if not since <= at <= until:
                continue
            if rec.get("event") == "job dispatched":
                out["dispatched"] += 1
                runs[rec.get("run_key", "")] = runs.get(rec.get("run_key", ""), 0) + 1
            elif rec.get("event") == "job served from the result cache":
                out["served"] += 1
            elif rec.get("event") == "job finished":
                out["job_s"] += float(rec.get("wall_s", 0.0))
    return out


def start_lab(home: Path, replicas: int, latency: float, concurrency: int, k: int) -> dict[str, str]:
    """A fresh lab (`lab up`, its own LAB_HOME) with R replicas per role and room for every job of K projects; its env."""
    env = {**os.environ, "LAB_HOME": str(home), "PYTHONPATH": str(REPO), "LAB_BENCH_MIND_LATENCY_S": str(latency),
           "LAB_CONCURRENCY": str(concurrency or max(8, k))}
    for key in ("LAB_NATS_URL", "LAB_NATS_USER", "LAB_NATS_PASSWORD", "LAB_MIND"):
        env.pop(key, None)
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(f"executor:\n  local:\n    capacity: {4 * k}\n")
    r = lab(env, "up", "--detach", "--replicas", f"all={replicas}")
    if r.returncode != 0:
        raise SystemExit(f"lab up failed: {r.stderr.strip() or r.stdout.strip()}")
    return env


def one_lab(replicas: int, ks: list[int], latency: float, concurrency: int, home: Path) -> list[dict[str, float]]:
    """One lab with R replicas per role; K=1, then each K, one after the other on it."""
    env = start_lab(home, replicas, latency, concurrency, max(ks))
    rows = []
    try:
        info = json.loads((home / "lab.json").read_text())
        for k in ks:
            res = run_projects(env, home, k, f"k{k}", ("--no-cache",))  # each project runs its own jobs: orchestration alone
            res["rss_max"] = max(peak_rss_mb(pid) for pid in info["agents"].values())
            rows.append(res)
    finally:
        lab(env, "down")
    return rows


def cache_side_by_side(k: int, latency: float, concurrency: int, home: Path) -> None:
    """K projects without the cache, then the same K with it, on one lab; prints jobs, job-seconds and their ratio."""
    env = start_lab(home, 1, latency, concurrency, k)
    passes: dict[str, dict[str, Any]] = {}
    try:
        for tag, extra in (("no cache", ("--no-cache",)), ("cache", ())):
            res: dict[str, Any] = dict(run_projects(env, home, k, tag.replace(" ", "-"), extra))
            time.sleep(1.0)  # the last "job finished" lines reach the log files
            res.update(job_events(home, res["since"], time.time()))
            passes[tag] = res
    finally:
        lab(env, "down")
    print(f"result cache: {k} concurrent --fast projects of {TEMPLATE.name}, latency {latency}s per message, one lab, one after the other")
    print(f"{'':>9} {'ok':>3} {'jobs':>5} {'served':>6} {'distinct':>8} {'job-s':>8} {'makespan s':>10} {'CPU s':>7}")
    for tag, res in passes.items():
        print(f"{tag:>9} {res['ok']:>3} {res['dispatched']:>5} {res['served']:>6} {len(res['runs']):>8} {res['job_s']:>8.1f} "
              f"{res['makespan']:>10.1f} {res['cpu_s']:>7.1f}")
    fresh, cached = passes["no cache"], passes["cache"]
    ratio = fresh["job_s"] / cached["job_s"] if cached["job_s"] else float("inf")
    print(f"job-seconds without / with the cache: {fresh['job_s']:.1f} / {cached['job_s']:.1f} = {ratio:.2f}x; "
          f"makespan {fresh['makespan'] / cached['makespan']:.2f}x")
    once = bool(cached["runs"]) and all(n == 1 for n in cached["runs"].values())
    print(f"with the cache, each distinct run ran exactly once lab-wide: {'yes' if once else 'no'} "
          f"({len(cached['runs'])} distinct, {cached['dispatched']} jobs; without: {len(fresh['runs'])} distinct, {fresh['dispatched']} jobs)")
    print(f"(lab under {home})")


def row(r: int, k: int, mine: dict[int, dict[str, float]], base: dict[str, float]) -> str:
    """One (R, K) configuration's line: its ratios to K=1 and to R's baseline, and to the machine's lower bound."""
    res, one = mine[k], mine[1]
    vs_r = res["msgs_s"] / base["msgs_s"] if base["msgs_s"] else float("nan")
    bound = max(one["makespan"], res["cpu_s"] / cores())
    return (f"{r:>2} {k:>3} {res['ok']:>3.0f} {res['makespan']:>10.1f} {res['makespan'] / one['makespan']:>7.2f} "
            f"{res['msgs_s']:>7.2f} {vs_r:>7.2f} {res['p50']:>6.2f} {res['p99']:>6.2f} {res['rss_max']:>7.0f} "
            f"{res['cpu_s']:>7.1f} {bound:>7.1f} {res['makespan'] / bound:>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", default="1,4,16", help="K values, comma-separated (1, the baseline, is always run first)")
    ap.add_argument("--replicas", default="1,2", help="R values, comma-separated (the first is the baseline)")
    ap.add_argument("--latency", type=float, default=1.0, help="simulated mind seconds per handled message")
    ap.add_argument("--concurrency", type=int, default=0, help="projects one agent process handles at once (0: every K at once)")
    ap.add_argument("--cache", type=int, default=0, metavar="K", help="measure the result cache instead: K projects without, then with it")
    args = ap.parse_args()
    if args.cache:
        cache_side_by_side(args.cache, args.latency, args.concurrency, Path(tempfile.mkdtemp(prefix="bench-cache-")) / "lab")
        return
    ks = sorted({1, *(int(k) for k in args.projects.split(","))})
    rs = [int(r) for r in args.replicas.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-lab-"))
    results = {r: dict(zip(ks, one_lab(r, ks, args.latency, args.concurrency, root / f"r{r}"), strict=True)) for r in rs}
    base_r = rs[0]
    print(f"latency {args.latency}s per message, concurrency {args.concurrency or 'K'} per agent, --no-cache, {cores()} cores; "
          "ratios against runs on this machine now")
    print("bound: max(K=1's makespan, CPU s / cores), the fastest this machine could finish K projects' work; vs bound: makespan / bound")
    print(f"{'R':>2} {'K':>3} {'ok':>3} {'makespan s':>10} {'vs K=1':>7} {'msgs/s':>7} {f'vs R={base_r}':>7} {'p50 s':>6} {'p99 s':>6} "
          f"{'RSS MB':>7} {'CPU s':>7} {'bound s':>7} {'vs bound':>8}")
    for r in rs:
        for k in ks:
            print(row(r, k, results[r], results[base_r][k]))
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
