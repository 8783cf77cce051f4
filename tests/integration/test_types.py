"""The contracts (bus/), the roles (agents/) and the processes (services/) type-check strictly: a shape that crosses a layer is checked, not hoped for.

The configuration is ``[tool.mypy]`` in pyproject.toml; this runs it as the
test command's part, so a change that breaks a contract fails CI like any test.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

from tests.conftest import ROOT


def test_bus_agents_and_services_pass_mypy_strict():
    # No incremental cache: a stale one under a clean clone's .mypy_cache could hide an error.
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", "/dev/null"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, f"mypy found type errors:\n{run.stdout}{run.stderr}"
    assert "Success" in run.stdout


def test_mypy_covers_bus_agents_and_services():
    # The run above checks pyproject's `files`: dropping a package from it must not pass quietly.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert {"bus", "agents", "services"} <= set(config["files"])
    assert config["strict"] is True
