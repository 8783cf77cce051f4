"""What an experiment leaves behind, taken without trusting any of it: its output lines, its files, its words.

Bad output is the experiment's failure, never the lab's: nothing here raises on
what an experiment wrote. A line longer than ``LAB_JOB_LOG_LINE_MAX_BYTES`` is
cut with a marker (:class:`LineClipper`); the log kept for a job is its first
and last ``LAB_JOB_LOG_KEEP_BYTES`` (:class:`BoundedLog`); output files are
taken only as regular files under safe names and within the job's caps on
count and bytes (:func:`collect`), as bytes: no link is followed, no device
or FIFO opened, no mode bit carried; text that reaches a terminal or a model
(a crash's last line, a file's name) loses its control characters
(:func:`clean_text`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bus.schema.results import clean_text
from bus.settings import Settings

# The names an output file may have: letters, digits, '.', '_', '-'; not starting with a dot; no '..'.
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
TAIL_BYTES = 64 << 10


def shown_name(name: str) -> str:
    """A name the experiment chose, as it may be shown: quoted, escaped, short."""
    return clean_text(ascii(name), 120)


def safe_name(name: str) -> bool:
    return SAFE_NAME.fullmatch(name) is not None and ".." not in name


class LineClipper:
    """Bytes in, lines out: each at most ``limit`` bytes, a longer one cut with ``… [truncated N bytes]``.

    Never holds more than ``limit`` bytes of a line, however long the line gets.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept = bytearray()
        self._dropped = 0

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._take(data[start:end])
            lines.append(self._line())
            start = end + 1
        self._take(data[start:])
        return lines

    def rest(self) -> list[str]:
        """The last line when it had no newline; nothing when there is none."""
        return [self._line()] if self._kept or self._dropped else []

    def _take(self, part: bytes) -> None:
        room = self.limit - len(self._kept)
        self._kept += part[:room]
        self._dropped += max(0, len(part) - room)

    def _line(self) -> str:
        line = bytes(self._kept).decode(errors="replace").rstrip()
        if self._dropped:
            line += f" … [truncated {self._dropped} bytes]"
        self._kept, self._dropped = bytearray(), 0
        return line


class BoundedLog:
    """A log file that keeps its first ``keep`` bytes as written and its last ``keep`` bytes in memory until closed.

    ``write`` says whether the line went into the head (so it may be shown live too);
    ``close`` writes a marker with what was dropped, then the tail.
    """

    def __init__(self, path: Path, keep: int) -> None:
        self.path, self.keep = path, keep
        self.file: IO[str] = open(path, "a")  # noqa: SIM115 - open for the whole run, closed by close()
        self.written = 0
        self.tail: deque[str] = deque()
        self.tail_bytes = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0

    @property
    def full(self) -> bool:
        return self.written >= self.keep

    def write(self, line: str) -> bool:
        size = len(line.encode(errors="replace")) + 1
        if not self.full:
            self.file.write(line + "\n")
            self.file.flush()
            self.written += size
            return True
        self.tail.append(line)
        self.tail_bytes += size
        while self.tail_bytes > self.keep and len(self.tail) > 1:
            gone = self.tail.popleft()
            self.tail_bytes -= len(gone.encode(errors="replace")) + 1
            self.dropped_lines += 1
            self.dropped_bytes += len(gone.encode(errors="replace")) + 1
        return False

    def close(self) -> None:
        if self.file.closed:
            return
        if self.dropped_lines:
            self.file.write(f"[runner] … {self.dropped_lines} lines ({self.dropped_bytes} bytes) of output dropped here: "
                            f"the log keeps its first and last {self.keep} bytes …\n")
        for line in self.tail:
            self.file.write(line + "\n")
        self.tail.clear()
        self.file.close()

    def last_bytes(self, n: int = TAIL_BYTES) -> bytes:
        """The end of the closed log: at most ``n`` bytes, from a line's start."""
        with open(self.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - n))
            data = f.read(n)
        if size > n and b"\n" in data:
            data = data[data.index(b"\n") + 1 :]
        return data


@dataclass
class Collected:
    """The files to upload (name, bytes), the notes on what was skipped, and why the whole lot is refused (``invalid``)."""

    files: list[tuple[str, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    invalid: str = ""


@dataclass
class Caps:
    total: int
    per_file: int
    count: int

    @classmethod
    def of(cls, s: Settings) -> Caps:
        return cls(total=s.job_output_max_bytes, per_file=s.job_output_file_max_bytes, count=s.job_output_max_files)


def _candidates(folder: Path, suffix: str) -> Iterator[str]:
    try:
        names = sorted(e.name for e in os.scandir(folder))
    except OSError:
        return iter(())
    return (n for n in names if n.endswith(suffix))


def _open_regular(path: Path) -> tuple[int, os.stat_result] | str:
    """An open descriptor on a regular file with its stat, or why it is not one (nothing is opened but a regular file)."""
    try:
        before = os.lstat(path)
    except OSError as e:
        return f"cannot be looked at ({e.strerror})"
    if stat.S_ISLNK(before.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(before.st_mode):
        return "is not a regular file (a FIFO, socket, device or folder)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        return "is a symbolic link" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        return "was replaced while being read"
    return fd, st


def _read(fd: int, limit: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read(limit + 1)


def collect(sources: list[tuple[Path, str, str]], caps: Caps) -> Collected:
    """The output files of ``sources`` ((folder, suffix, label) each), checked one by one against the caps.

    A file with an unsafe name, a link or anything but a regular file is skipped with a note;
    one over a cap makes the whole lot invalid (``invalid`` names the file and the cap) and nothing is taken.
    A file's size is its apparent size or its allocated blocks, whichever is larger: a sparse file counts in full.
    """
    got = Collected()
    total = 0
    for folder, suffix, label in sources:
        for name in _candidates(folder, suffix):
            where = f"{label}/{shown_name(name)}"
            if not safe_name(name):
                got.notes.append(f"not uploading {where}: a name outside [A-Za-z0-9._-] (or leading '.', or '..')")
                continue
            opened = _open_regular(folder / name)
            if isinstance(opened, str):
                got.notes.append(f"not uploading {where}: it {opened}")
                continue
            fd, st = opened
            size = max(st.st_size, st.st_blocks * 512)
            over = _over(where, size, total, len(got.files) + 1, caps)
            if over:
                os.close(fd)
                return Collected(notes=got.notes, invalid=over)
            data = _read(fd, caps.per_file)
            if len(data) > caps.per_file:
                return Collected(notes=got.notes, invalid=f"{where} grew past the per-file cap of {caps.per_file} bytes")
            if st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o111):
                got.notes.append(f"{where} had mode {stat.S_IMODE(st.st_mode):o}: uploaded as plain bytes, no mode kept")
            total += size
            got.files.append((name, data))
    return got


def _over(where: str, size: int, total: int, count: int, caps: Caps) -> str:
    if size > caps.per_file:
        return f"{where} is {size} bytes, over the per-file cap of {caps.per_file} bytes (LAB_JOB_OUTPUT_FILE_MAX_BYTES)"
    if count > caps.count:
        return f"{where} is output file {count}, over the cap of {caps.count} files (LAB_JOB_OUTPUT_MAX_FILES)"
    if total + size > caps.total:
        return (f"{where} ({size} bytes) brings the outputs to {total + size} bytes, over the cap of {caps.total} bytes "
                "(LAB_JOB_OUTPUT_MAX_BYTES)")
    return ""

