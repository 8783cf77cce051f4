"""`lab up --web`: the web view as a child of the lab's supervisor, stopped with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bus.retry import RetryPolicy
from bus.settings import Settings, settings
from services.web.serve import info_file


@contextmanager
def web_child(home: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run `lab web` beside the agents; its link goes to the same terminal (or supervisor.log when detached)."""
    info_file(home).unlink(missing_ok=True)
    env = {**os.environ, **Settings.environ(home=home)}
    if first := settings().metrics_port:  # after the agents' ports and the auth service's (lab.json lists the agents)
        try:
            agents = len(json.loads((home / "lab.json").read_text()).get("agents", {}))
            env.update(Settings.environ(metrics_port=first + agents + 1))
        except (OSError, ValueError):
            env.update(Settings.environ(metrics_port=0))  # no record of the agents: any free port rather than one of theirs
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "web", "--port", str(port)], env=env, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_link(home: Path, timeout: float = 20.0) -> str:
    """The link `lab web` wrote for a detached lab, or where to look when it did not come up."""

    def link() -> str:
        info = json.loads(info_file(home).read_text())
        return f"web view: {info['url']}?token={info['token']}"

    # Not written yet (or half-written): read again every 0.2 s until the timeout.
    unwritten = (OSError, ValueError, KeyError)
    try:
        return RetryPolicy(attempts=None, budget_s=timeout, base_wait_s=0.2, max_wait_s=0.2, level=None).run_blocking(link, unwritten)
    except unwritten:
        return f"web view: not up yet; see {home / 'supervisor.log'}"
