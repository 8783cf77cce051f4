"""A library of references in SQLite FTS5, ranked with BM25.

Why SQLite: it ships with Python, a user's library of thousands of entries
searches in milliseconds, and the file lives in the lab home where the CLI
(``lab lit add``) and the literature agent both find it. Each change bumps a
generation number; with the library's random id it forms a fingerprint that
the result cache is keyed on, so cached answers never outlive the library
they came from.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from agents.lit.text import words
from bus.schema import Reference
from bus.settings import settings

LIBRARY_FILE = "literature.sqlite3"
# Title matches matter most; the key column is stored only to join back.
_WEIGHTS = "0.0, 10.0, 2.0, 1.0, 1.0"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (key TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS refs_fts USING fts5(
    key UNINDEXED, title, authors, abstract, venue,
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def default_lab_home() -> Path:
    """``$LAB_HOME``, else the platform's user data dir for kenkyu-lab."""
    home = settings().home
    return home if home is not None else Path(platformdirs.user_data_dir("kenkyu-lab"))


def library_path(lab_home: Path) -> Path:
    return lab_home / LIBRARY_FILE


@dataclass(frozen=True)
class Hit:
    ref: Reference
    score: float  # -bm25: higher is a better match


def fts_query(text: str) -> str:
    """Free text as an FTS5 query: every content word, quoted, OR-ed; BM25 rewards overlap."""
    unique = list(dict.fromkeys(words(text)))
    return " OR ".join(f'"{w}"' for w in unique)


class FtsIndex:
    """One SQLite database (a file, or ``:memory:``) of references."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=10, check_same_thread=False)
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex,))
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('generation', '0')")

    def close(self) -> None:
        self._db.close()

    def upsert(self, refs: Iterable[Reference]) -> tuple[int, int]:
        """Add or replace by key; returns (added, updated)."""
        added = updated = 0
        with self._lock, self._db:
            for ref in refs:
                exists = self._db.execute("SELECT 1 FROM refs WHERE key = ?", (ref.key,)).fetchone()
                self._db.execute("DELETE FROM refs_fts WHERE key = ?", (ref.key,))
                self._db.execute("INSERT OR REPLACE INTO refs VALUES (?, ?)", (ref.key, ref.model_dump_json()))
                self._db.execute(
                    "INSERT INTO refs_fts VALUES (?, ?, ?, ?, ?)",
                    (ref.key, ref.title, " ".join(ref.authors), ref.abstract, ref.venue),
                )
                updated += bool(exists)
                added += not exists
            self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'")
        return added, updated

    def search(self, text: str, limit: int = 10) -> list[Hit]:
        query = fts_query(text)
        if not query:
            return []
        with self._lock:
            rows = self._db.execute(
                f"SELECT r.data, bm25(refs_fts, {_WEIGHTS}) AS rank FROM refs_fts JOIN refs r ON r.key = refs_fts.key "
                "WHERE refs_fts MATCH ? ORDER BY rank, r.key LIMIT ?",
                (query, limit),
            ).fetchall()
        return [Hit(Reference.model_validate_json(data), -rank) for data, rank in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM refs").fetchone()[0])

    def fingerprint(self) -> str:
        """Changes whenever the library does (or is recreated)."""
        with self._lock:
            meta = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        return f"{meta['id'][:12]}-{meta['generation']}"
