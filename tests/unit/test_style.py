"""The whole tree passes ``ruff check``: lint and import order, as configured in pyproject.toml's ``[tool.ruff]``.

Running it as a unit test means a change that adds a lint error fails CI like any test
failure, and the message is ruff's own report of what to fix.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_tree_passes_ruff_check() -> None:
    try:
        version = _ruff("--version")
    except FileNotFoundError as e:  # pragma: no cover - sys.executable always exists
        pytest.fail(f"cannot run ruff ({e}); install the test extras: pip install -e '.[test]'")
    if version.returncode != 0:
        pytest.fail(f"ruff is not installed in {sys.executable}'s environment; install the test extras: pip install -e '.[test]'\n{version.stderr}")
    # No cache: a stale one could hide an error, and the check is fast without it.
    run = _ruff("check", "--no-cache", "--quiet", str(ROOT))
    assert run.returncode == 0, f"ruff check found problems (fix them, or run `ruff check --fix` for the safe ones):\n{run.stdout}{run.stderr}"


def test_ruff_checks_the_configured_rules() -> None:
    # The run above uses pyproject's [tool.ruff]: dropping a rule family from `select` must not pass quietly.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert {"E", "W", "F", "I", "B", "UP"} <= set(config["lint"]["select"])
    assert not config.get("exclude") and not config.get("extend-exclude"), "the whole tree is checked"
