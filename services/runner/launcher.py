"""`python -m services.runner.launcher`: the experiment container's entry point, which holds no credential.

It runs in the job's ``experiment`` container (Docker and Kubernetes), as a
uid other than the runner's, with no NATS credential, no status key and no
service-account token anywhere in its environment or files: what the
experiment can find here is what the launcher itself has, which is nothing
worth stealing. It waits for the runner (the other container, see
:mod:`services.runner.split`) to unpack the code and say ``ready``, then runs the
experiment and ``plot.py`` under the runner's own limits (wall time, memory
and process watch over the whole tree, rlimits), writes their output to the
shared log and the outcome to ``exit.json``, and exits 0: the pod's outcome
is the runner's exit code.

It stops the experiment when the runner says ``stop`` or stops touching
``alive`` (the runner is gone: nobody would report the result). As the
container's PID 1 it cannot be killed by the experiment (the kernel drops
signals to a namespace's init that it has no handler for, SIGKILL included),
and it marks itself not dumpable, so the experiment, under the same uid,
cannot ptrace it or read its memory either.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from pydantic import ValidationError

from bus.settings import ConfigError, settings
from services.runner import checkpoint, sandbox, split, usage
from services.runner.runner import (
    PLOT_LIMIT_S,
    Outcome,
    command,
    confine,
    environment,
    supervise,
)


def _not_dumpable() -> None:
    """PR_SET_DUMPABLE 0: no ptrace and no /proc/<pid>/mem of the launcher from the same uid."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _runner_gone(layout: split.Layout, stale_s: float) -> str | None:
    """Why the launcher should give up: the runner said stop, or its heartbeat is older than ``stale_s``."""
    if layout.stop.exists():
        return f"the runner said stop ({layout.stop.read_text().strip() or 'no reason'})"
    age = split.stale_for(layout.alive)
    return f"the runner stopped answering ({age:.0f}s since its last heartbeat)" if age and age > stale_s else None


async def wait_ready(layout: split.Layout, term: asyncio.Event, poll_s: float = 0.2) -> str | None:
    """None once the runner said ready; otherwise why there is nothing to run (``term``: SIGTERM came first)."""
    started = time.monotonic()
    s = settings()  # read once, not at every poll
    start_timeout_s = s.launcher_start_timeout_s  # the runner never showed up
    while not layout.ready.exists():
        gone = "SIGTERM before the runner was ready" if term.is_set() else _runner_gone(layout, s.runner_alive_stale_s)
        if gone:
            return gone
        if time.monotonic() - started > start_timeout_s:
            return f"the runner did not get ready within {start_timeout_s:.0f}s"
        await asyncio.sleep(poll_s)
    return None


async def watch_runner(layout: split.Layout, term: asyncio.Event, why: list[str]) -> None:
    """Ask the experiment to stop (SIGTERM, then SIGKILL after the grace) once the runner is gone.

    A runner that got SIGTERM itself (the pod is going) says ``stop: preempted``: then the
    experiment is preempted (it may checkpoint), not failed.
    """
    stale_s = settings().runner_alive_stale_s  # read once, not at every poll
    while not term.is_set():
        gone = _runner_gone(layout, stale_s)
        if gone:
            if "(preempted)" not in gone:
                why.append(gone)
            term.set()
            return
        await asyncio.sleep(1.0)


def _device(layout: split.Layout) -> str:
    """The device the experiment says it used, for the environment record; cpu when it says nothing."""
    try:
        found = json.loads(split.read_regular(layout.out / "final_info.json")).get("device", "cpu")
    except (OSError, split.SplitError, ValueError, AttributeError):
        return "cpu"
    return str(found)[:40]


async def launch(layout: split.Layout, term: asyncio.Event) -> split.ExitRecord:
    spec = split.LaunchSpec.model_validate_json(layout.launch.read_text())
    job = spec.job
    tmp = Path(tempfile.gettempdir()) / "lab-experiment"
    tmp.mkdir(parents=True, exist_ok=True)
    log = open(layout.log, "a")  # noqa: SIM115 - open for the whole run, closed in the finally below

    async def on_line(line: str) -> None:
        log.write(line + "\n")
        log.flush()
        print(line, flush=True)

    why: list[str] = []
    watching = asyncio.create_task(watch_runner(layout, term, why))
    # Only this container sees the experiment's processes and GPUs: the runner's metrics read what it samples.
    sampling = asyncio.create_task(usage.write_every(usage.Meter(gpus=job.gpu > 0), layout.usage)) if spec.usage else None
    writable = [layout.out] + ([layout.checkpoint] if job.resumable else [])
    cmd = command(job, layout.code, layout.out)
    started = time.monotonic()
    try:
        outcome = await supervise(confine(cmd, job, tmp, readonly=[layout.code], writable=writable, extra_env=spec.env, use_sandbox=False),
                                  layout.code, job, on_line, term)
        if why:
            outcome = Outcome("failed", f"stopped: {why[0]}", outcome.exit_code)
        plot_failed = ""
        if outcome.state == "succeeded" and split.is_regular(layout.out / "final_info.json"):  # a planted link: no plot
            remaining = max(10.0, min(PLOT_LIMIT_S, job.wall_time_s - (time.monotonic() - started)))
            plot_job = job.model_copy(update={"wall_time_s": remaining})
            plot_cmd = [sys.executable, str(layout.code / "plot.py"), "--run_dir", str(layout.out), "--out_dir", str(layout.figures)]
            plot = await supervise(confine(plot_cmd, plot_job, tmp, readonly=[layout.code, layout.out], writable=[layout.figures],
                                           use_sandbox=False), layout.code, plot_job, on_line)
            plot_failed = "" if plot.state == "succeeded" else plot.reason
    finally:
        watching.cancel()
        if sampling is not None:
            sampling.cancel()
        log.close()
    return split.ExitRecord(state=outcome.state, reason=outcome.reason, exit_code=outcome.exit_code,
                            plot_failed=plot_failed, environment=environment(_device(layout)))


async def amain(shared: Path) -> int:
    layout = split.Layout(shared)
    # As PID 1 an unhandled SIGTERM would be ignored: the pod would wait out its grace period.
    early = checkpoint.catch_sigterm(asyncio.get_running_loop())
    gone = await wait_ready(layout, early)
    if gone:
        print(f"launcher: nothing to run: {gone}", flush=True)
        return 0
    alive = asyncio.create_task(split.keep_alive(layout.launcher_alive))
    try:
        record = await launch(layout, early)
    except (OSError, ValidationError) as e:
        record = split.ExitRecord(state="failed", reason=f"launcher: cannot start the experiment: {type(e).__name__}: {e}"[:500])
    finally:
        alive.cancel()
    split.write_atomic(layout.exit, record.model_dump_json())
    print(f"launcher: the experiment {record.state}{': ' + record.reason if record.reason else ''}", flush=True)
    return 0


def main() -> None:
    try:
        shared = settings().shared_dir
    except ConfigError as e:
        print(f"launcher: {e}", file=sys.stderr)
        sys.exit(2)
    if shared is None:
        print(f"launcher: {split.SHARED_ENV} is not set (the volume shared with the runner)", file=sys.stderr)
        sys.exit(2)
    _not_dumpable()
    sandbox.become_subreaper()
    sys.exit(asyncio.run(amain(shared)))


if __name__ == "__main__":
    main()
