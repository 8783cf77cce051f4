"""LAB_HOME is its user's alone: 0700 from creation, an older home's modes narrowed, its secrets and logs 0600."""

from __future__ import annotations

import os

from services.lab.lifecycle import private_home, private_log
from services.web.app import served_names


def mode(path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_home_is_0700(tmp_path):
    home = tmp_path / "a" / "home"
    private_home(home)
    assert mode(home) == 0o700


def test_an_existing_homes_modes_are_narrowed(tmp_path):
    home = tmp_path / "home"
    (home / "secrets").mkdir(parents=True)
    (home / "logs").mkdir()
    home.chmod(0o755)
    (home / "secrets").chmod(0o755)
    for f in (home / "lab.json", home / "web.json", home / "supervisor.log", home / "secrets" / "pi.password"):
        f.write_text("x")
        f.chmod(0o644)
    private_home(home)
    assert mode(home) == 0o700 and mode(home / "secrets") == 0o700 and mode(home / "logs") == 0o700
    assert all(mode(f) == 0o600 for f in (home / "lab.json", home / "web.json", home / "supervisor.log", home / "secrets" / "pi.password"))


def test_a_log_is_0600_from_creation_and_narrowed_when_it_exists(tmp_path):
    old = os.umask(0)  # even with a umask that would leave it open to all
    try:
        fd = private_log(tmp_path / "new.log")
        os.close(fd)
        (tmp_path / "old.log").write_text("kept\n")
        (tmp_path / "old.log").chmod(0o666)
        fd = private_log(tmp_path / "old.log")
        os.write(fd, b"appended\n")
        os.close(fd)
    finally:
        os.umask(old)
    assert mode(tmp_path / "new.log") == 0o600 and mode(tmp_path / "old.log") == 0o600
    assert (tmp_path / "old.log").read_text() == "kept\nappended\n"


def test_the_web_view_answers_only_the_names_it_is_served_under():
    assert served_names() == ["127.0.0.1", "localhost", "[::1]", "::1"]
    assert served_names(["0.0.0.0", "Lab.Example.org ", "*", ""])[-1] == "lab.example.org"
    assert "*" not in served_names(["*"]) and "0.0.0.0" not in served_names(["0.0.0.0"])
