"""`lab up --detach --web`: no token in supervisor.log, LAB_HOME 0700 and its secrets 0600, a foreign Host gets 400."""

from __future__ import annotations

import re
import stat
import subprocess

import httpx
import pytest

from tests.conftest import lab_cmd

pytestmark = pytest.mark.integration


def lab(env, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_detached_lab_with_web_keeps_its_token_and_home_private(lab_env):
    home, env = lab_env
    home.mkdir(mode=0o755)  # a home an older lab made, open to all, with a log open to all
    home.chmod(0o755)
    (home / "supervisor.log").write_text("an older lab's line\n")
    (home / "supervisor.log").chmod(0o644)
    r = lab(env, "up", "--detach", "--web", "--web-port", "0")
    assert r.returncode == 0, r.stderr + r.stdout
    try:
        m = re.search(r"^web view: (http://127\.0\.0\.1:\d+/)\?token=(\S+)$", r.stdout, re.M)
        assert m, r.stdout  # printed once, to the terminal of the user who started the lab
        url, token = m.groups()
        log = (home / "supervisor.log").read_text()
        assert "lab web: http://127.0.0.1" in log and token not in log
        for f in (home / "logs").glob("*.log"):
            assert token not in f.read_text(errors="replace"), f
        assert mode(home) == 0o700 and mode(home / "supervisor.log") == 0o600
        assert mode(home / "lab.json") == 0o600 and mode(home / "web.json") == 0o600
        assert mode(home / "secrets") == 0o700 and all(mode(f) == 0o600 for f in (home / "secrets").iterdir())
        # DNS rebinding: a page asked for under another name is refused; the served names answer.
        port = url.rsplit(":", 1)[1].strip("/")
        assert httpx.get(url, headers={"Host": f"evil.example:{port}"}).status_code == 400
        assert httpx.get(f"{url}p/none/a/paper.pdf", headers={"Host": "rebind.attacker.example"}).status_code == 400
        assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
        assert httpx.get(url).status_code == 200
        assert httpx.get(f"{url}healthz", headers={"Host": "10.1.2.3:8765"}).status_code == 200  # a probe by the pod's address
    finally:
        down = lab(env, "down")
        assert down.returncode == 0, down.stderr
