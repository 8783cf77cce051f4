"""``lab lit``: the user's own library, indexed locally for the literature agent.

``lab lit add refs.bib`` indexes BibTeX or CSL-JSON into the FTS5 library
under the lab home (``$LAB_HOME`` or the platform's data dir), where the
literature agent searches it; ``lab lit search`` shows what it would find.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import typer
from rich.table import Table

from agents.lit.index import FtsIndex, default_lab_home, library_path
from agents.lit.library_files import read_library_file
from services.cli.errors import LabTyper, fail
from services.cli.terminal import SafeConsole

app = LabTyper(help="Your own literature library: add BibTeX/CSL-JSON, search it.", no_args_is_help=True, error_prefix="error: ")
out = SafeConsole(highlight=False)  # titles and authors come from outside
err = SafeConsole(stderr=True, highlight=False)

HomeOption = typer.Option(None, "--home", help="lab home (default: $LAB_HOME or the user data dir)")


def _index(home: Path | None) -> FtsIndex:
    path = library_path(home or default_lab_home())
    try:
        return FtsIndex(path)
    except (sqlite3.Error, OSError) as e:  # one line naming the library, not a traceback
        fail(f"cannot open the library {path}: {e}")


@app.command()
def add(files: list[Path] = typer.Argument(..., help="BibTeX (.bib) or CSL-JSON (.json) files"), home: Path | None = HomeOption) -> None:
    """Index entries; a malformed entry is reported with its line and skipped; a known key is updated."""
    parsed = []
    for path in files:
        parsed.append((path, read_library_file(path)))  # LibraryError: a LabError, printed as one line by LabTyper
    index = _index(home)
    try:
        for path, result in parsed:
            for problem in result.problems:
                err.print(f"{path}:{problem.line}: {problem.reason}", markup=False)
            added, updated = index.upsert(result.refs)
            out.print(f"{path}: {added} added, {updated} updated, {len(result.problems)} skipped", markup=False)
        out.print(f"library {library_path(home or default_lab_home())}: {index.count()} entries", markup=False)
    finally:
        index.close()
    if parsed and not any(r.refs for _, r in parsed):
        raise typer.Exit(2)


@app.command()
def search(
    query: str = typer.Argument(..., help="free text"),
    limit: int = typer.Option(10, "--limit", "-n", min=1, max=200),
    home: Path | None = HomeOption,
) -> None:
    """Ranked matches (BM25 over title, authors, abstract, venue)."""
    index = _index(home)
    try:
        hits = index.search(query, limit)
        total = index.count()
    finally:
        index.close()
    if not hits:
        note = "the library is empty (add entries with `lab lit add FILE`)" if total == 0 else f"no entry of {total} matches"
        out.print(f"no results for {query!r}: {note}", markup=False)
        return
    table = Table("key", "year", "title", "score")
    for hit in hits:
        table.add_row(hit.ref.key, str(hit.ref.year or ""), hit.ref.title, f"{hit.score:.2f}")
    out.print(table)
