"""``lab lit add`` / ``lab lit search`` through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.lit import app
from tests.conftest import TESTS

LIB = TESTS / "data" / "lit"


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def test_add_then_search_ranks_and_readd_updates(runner: CliRunner, tmp_path: Path) -> None:
    added = runner.invoke(app, ["add", str(LIB / "library.bib"), str(LIB / "library.json")])
    assert added.exit_code == 0, added.output
    assert "13 added, 0 updated, 0 skipped" in added.stdout and "2 added" in added.stdout
    assert (tmp_path / "home" / "literature.sqlite3").is_file()
    found = runner.invoke(app, ["search", "weight decay", "--limit", "2"])
    assert found.exit_code == 0
    lines = [line for line in found.stdout.splitlines() if "20" in line or "19" in line]
    assert len(lines) == 2 and {"loshchilov2019decoupled", "krogh1991simple"} <= set(found.stdout.split())
    again = runner.invoke(app, ["add", str(LIB / "malformed.bib")])
    assert again.exit_code == 0
    assert "0 added, 2 updated, 1 skipped" in again.stdout
    assert f"{LIB / 'malformed.bib'}:8: malformed entry" in again.stderr
    assert "15 entries" in again.stdout


def test_empty_search_says_so(runner: CliRunner) -> None:
    empty = runner.invoke(app, ["search", "grokking"])
    assert empty.exit_code == 0 and "no results" in empty.stdout and "library is empty" in empty.stdout
    runner.invoke(app, ["add", str(LIB / "library.bib")])
    none = runner.invoke(app, ["search", "photosynthesis"])
    assert none.exit_code == 0 and "no entry of 13 matches" in none.stdout


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("missing.bib", None, "no such file"), ("notes.bib", "not bibtex at all", "no BibTeX entries"), ("x.json", "{}", "list of items")],
)
def test_bad_file_is_one_line_and_exit_2(runner: CliRunner, tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = runner.invoke(app, ["add", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr and "Traceback" not in result.output


def test_file_with_only_broken_entries_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "broken.bib"
    path.write_text("@article{x,\n  title = {never closed\n")
    result = runner.invoke(app, ["add", str(path)])
    assert result.exit_code == 2 and f"{path}:1:" in result.stderr
