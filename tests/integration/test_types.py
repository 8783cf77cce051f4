"""The contracts (bus/) and the roles (agents/) type-check strictly: a shape that crosses a layer is checked, not hoped for.

The configuration is ``[tool.mypy]`` in pyproject.toml; this runs it as the
test command's part, so a change that breaks a contract fails CI like any test.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_bus_and_agents_pass_mypy_strict():
    # No incremental cache: a stale one under a clean clone's .mypy_cache could hide an error.
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", "/dev/null"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, f"mypy found type errors:\n{run.stdout}{run.stderr}"
    assert "Success" in run.stdout
