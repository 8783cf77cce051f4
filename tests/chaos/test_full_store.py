"""A full store: the lab says so in one line with the numbers, refuses new projects, and loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from bus.client import Bus, BusConfig
from bus.errors import BusRefused
from bus.store import Artifacts
from tests.conftest import lab_cmd

pytestmark = pytest.mark.timeout(600)


def lab(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def as_engineer(info: dict, name: str) -> BusConfig:
    """The engineer's own credential (a role may add artifacts, and clean up a half-written one); no admin login is kept."""
    password = (Path(info["home"]) / "secrets" / "engineer").read_text().strip()
    return BusConfig(url=info["url"], user="engineer", password=password, name=name)


async def fill(info: dict) -> dict[str, bytes]:
    """Put objects until JetStream refuses one; the ones it acknowledged."""
    bus = await Bus.connect(as_engineer(info, "test-fill"))
    try:
        artifacts = await Artifacts.open(bus)
        kept: dict[str, bytes] = {}
        for i in range(200):
            data = os.urandom(96 * 1024)
            try:
                await artifacts.put(f"filler/{i}", data)
            except BusRefused as e:
                assert "insufficient" in str(e), e
                return kept
            kept[f"filler/{i}"] = data
        raise AssertionError("the store never filled")
    finally:
        await bus.close()


async def read_back(info: dict, names: list[str]) -> dict[str, bytes]:
    bus = await Bus.connect(as_engineer(info, "test-read"))
    try:
        artifacts = await Artifacts.open(bus)
        return {n: await artifacts.get(n) for n in names}
    finally:
        await bus.close()


def test_a_full_jetstream_refuses_new_projects_in_one_line_and_keeps_what_it_acknowledged(lab_env):
    home, env = lab_env
    env = {**env, "LAB_MAX_STORE": "4M"}
    up = lab(env, "up", "--detach")
    assert up.returncode == 0, up.stderr
    try:
        info = json.loads((home / "lab.json").read_text())
        assert info["max_store_bytes"] == 4 << 20
        kept = asyncio.run(fill(info))
        assert kept

        r = lab(env, "run", "--template", "grokking", "--fast")
        assert r.returncode != 0 and "Traceback" not in r.stderr
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith("lab: error: the lab's store is full: ") and f"used of its 4.0 MiB limit (JetStream at {info['url']})" in lines[0], lines[0]

        # Nothing acknowledged was lost, and the lab is still there for the projects it has.
        assert asyncio.run(read_back(info, sorted(kept))) == kept
        st = lab(env, "status", "--json")
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["projects"] == [] and all(a is not None for a in status["agents"].values())
    finally:
        lab(env, "down", timeout=120)
