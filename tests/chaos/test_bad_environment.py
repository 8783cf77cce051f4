"""Bad environments at the CLI: each is one line naming what is at fault, a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bus.permissions import ADMIN
from bus.schema.constants import STATE_BUCKET
from tests.conftest import lab_cmd


def one_line_failure(args: list[str], env: dict, timeout: float = 120) -> str:
    r = subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lab: error: "), r.stderr
    return lines[0]


@pytest.fixture
def mount_point(tmp_path: Path):
    """Mount tmpfs file systems under tmp_path (the test runs as root: chmod would not stop it), and unmount them after."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) to make a read-only or tiny file system")
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount tmpfs here: {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_read_only_lab_home(lab_env, mount_point):
    _, env = lab_env
    ro = mount_point("ro", "ro,size=256m")
    for home in (ro, ro / "lab"):  # the home itself, and one that would have to be created there
        env = {**env, "LAB_HOME": str(home)}
        for args in (["up", "--detach"], ["run", "--template", "grokking", "--fast"]):
            line = one_line_failure(args, env)
            assert f"LAB_HOME {home} is not writable: Read-only file system" in line, line
        assert not (ro / "lab").exists()


def test_a_full_disk_under_lab_home(lab_env, mount_point):
    _, env = lab_env
    tiny = mount_point("tiny", "size=1m")
    with open(tiny / "filler", "wb") as f:  # fill it to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    env = {**env, "LAB_HOME": str(tiny / "lab")}
    for args in (["up", "--detach"], ["run", "--template", "grokking", "--fast"]):
        line = one_line_failure(args, env)
        assert f"the disk under {tiny / 'lab'} is full:" in line and "used of 1.0 MiB, 0.0 MiB free" in line, line
    assert not any(p.name == "nats" for p in tiny.rglob("*")), "no server was started on a full disk"


def test_the_supervisor_logs_a_disk_that_fills_and_frees(mount_point, monkeypatch, capsys):
    from services.lab.supervisor import LabOptions, Supervisor

    monkeypatch.setenv("LAB_MIN_FREE_MB", "0.5")  # read when the disk is checked (bus.settings)
    disk = mount_point("disk", "size=1m")
    sup = Supervisor(LabOptions(home=disk / "lab"))
    sup._watch_disk()
    assert capsys.readouterr().err == ""
    (disk / "filler").write_bytes(b"\0" * (900 << 10))
    sup._disk_checked = 0.0
    sup._watch_disk()
    sup._watch_disk(every=0)  # said once, not on every look
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"lab: the disk under {disk / 'lab'} is full: ") and "used of 1.0 MiB" in err[0], err
    (disk / "filler").unlink()
    sup._watch_disk(every=0)
    assert capsys.readouterr().err == "lab: the disk under LAB_HOME has room again\n"


def test_a_template_that_is_not_utf8(lab_env, tmp_path):
    _, env = lab_env
    folder = tmp_path / "latin"
    folder.mkdir()
    (folder / "template.yaml").write_bytes("name: latin\ntitle: caf\xe9\n".encode("latin-1"))
    line = one_line_failure(["run", "--template", str(folder)], env)
    assert line == f"lab: error: {folder / 'template.yaml'}: not UTF-8 text (invalid continuation byte at byte 22)"


def lab_on(server, env: dict) -> dict:
    return {**env, "LAB_NATS_URL": server.url, "LAB_NATS_USER": ADMIN, "LAB_NATS_PASSWORD": server.credentials[ADMIN]}


async def test_logs_of_an_unknown_project_is_an_error_like_say(lab_env, admin_bus, nats_server):
    _, env = lab_env
    env = lab_on(nats_server, env)
    logs = one_line_failure(["logs", "--project", "nosuch"], env)
    say = one_line_failure(["say", "--project", "nosuch", "hello"], env)
    assert logs == say == "lab: error: unknown project 'nosuch'"
    assert one_line_failure(["export", "nosuch"], env) == "lab: error: unknown project 'nosuch': nothing on the bus names it"
    assert one_line_failure(["run", "--attach", "nosuch"], env) == "lab: error: unknown project 'nosuch': the PI holds no state for it"
    assert "--template NAME to start a project, or --attach PROJECT" in one_line_failure(["run"], env)


async def test_status_with_the_state_bucket_gone(lab_env, admin_bus, nats_server):
    _, env = lab_env
    await admin_bus.js.delete_key_value(STATE_BUCKET)
    line = one_line_failure(["status"], lab_on(nats_server, env))
    assert f"has no {STATE_BUCKET!r} bucket" in line, line
