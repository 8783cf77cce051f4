"""The sandbox's command line and its start-up gate without bubblewrap, and credentials handed to agents as files, never values."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.runner import sandbox

needs_bwrap = pytest.mark.skipif(sandbox.tool() is None, reason="needs bubblewrap (CI installs it)")


def policy(tmp_path: Path, **kw) -> sandbox.Policy:
    return sandbox.Policy(
        binds=[sandbox.Bind(source=tmp_path / "work" / "code", name="code"),
               sandbox.Bind(source=tmp_path / "work" / "out", name="out", writable=True)],
        env={"OMP_NUM_THREADS": "1"}, **kw,
    )


def test_the_command_line_hides_host_paths_and_isolates_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_NATS_PASSWORD", "s3cret")
    argv = [sys.executable, str(tmp_path / "work" / "code" / "experiment.py"), "--out_dir", str(tmp_path / "work" / "out")]
    cmd = sandbox.wrap(argv, policy(tmp_path), "/usr/bin/bwrap")
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent", "--clearenv"):
        assert flag in cmd
    assert cmd[cmd.index("--uid") + 1] == str(sandbox.SANDBOX_UID) != "0"
    tail = cmd[cmd.index("--") + 1 :]
    assert tail == [sys.executable, "/job/code/experiment.py", "--out_dir", "/job/out"]
    binds = {cmd[i + 2]: (cmd[i], cmd[i + 1]) for i, a in enumerate(cmd) if a in ("--bind", "--ro-bind")}
    assert binds["/job/out"] == ("--bind", str(tmp_path / "work" / "out"))
    assert binds["/job/code"][0] == "--ro-bind"
    assert [d for d, (flag, _) in binds.items() if flag == "--bind"] == ["/job/out"]  # the only writable place
    assert "s3cret" not in " ".join(cmd) and not any(a.startswith("LAB_") for a in cmd)


def test_a_job_that_asks_for_the_network_keeps_it():
    cmd = sandbox.wrap(["true"], sandbox.Policy(network=True), "/usr/bin/bwrap")
    assert "--unshare-net" not in cmd and "--unshare-pid" in cmd


def test_without_bubblewrap_model_code_is_refused_unless_the_risk_is_accepted(monkeypatch):
    monkeypatch.setenv(sandbox.BWRAP_ENV, "no-such-bwrap")
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    with pytest.raises(sandbox.SandboxUnavailable, match="--unsafe-no-sandbox"):
        sandbox.check_start("llm", "local")
    assert "no-such-bwrap" in sandbox.check_start("llm", "local", unsafe=True)
    assert sandbox.check_start("offline", "local").startswith("warning: no sandbox")
    assert sandbox.check_start("llm", "kubernetes") is None  # containers are the boundary there


@needs_bwrap
def test_with_bubblewrap_nothing_is_said():
    assert sandbox.check_start("llm", "local") is None


def test_agents_get_credential_files_not_values(tmp_path, monkeypatch):
    from bus.permissions import JOB_USER
    from bus.server import new_credentials
    from services.common.config import bus_config
    from services.lab.supervisor import LabOptions, Supervisor

    sup = Supervisor(LabOptions(home=tmp_path / "home"))
    sup.credentials = new_credentials()
    env = sup._agent_env("engineer")
    assert not set(sup.credentials.values()) & set(env.values())
    path = Path(env["LAB_NATS_PASSWORD_FILE"])
    assert path.read_text() == sup.credentials["engineer"] and path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    # Its job runners log in each as a user of its own (the auth service admits them by their job's key):
    # the engineer holds no shared runner password, in a file or otherwise.
    assert env["LAB_RUNNER_USER"] == JOB_USER
    assert not {"LAB_RUNNER_PASSWORD", "LAB_RUNNER_PASSWORD_FILE"} & set(env)
    assert not (tmp_path / "home" / "secrets" / "runner").exists()
    assert not (tmp_path / "home" / "secrets" / "lab").exists()  # the admin's password is written nowhere
    monkeypatch.delenv("LAB_NATS_PASSWORD", raising=False)
    monkeypatch.setenv("LAB_NATS_USER", "engineer")
    monkeypatch.setenv("LAB_NATS_PASSWORD_FILE", env["LAB_NATS_PASSWORD_FILE"])
    config = bus_config("engineer", "nats://127.0.0.1:4222")
    assert (config.user, config.password) == ("engineer", sup.credentials["engineer"])
    # The lab job secret: the engineers' alone, the same file for every replica, never in an environment.
    secret = Path(env["LAB_JOB_SECRET_FILE"])
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text()) >= 32 and secret.read_text() not in env.values()
    assert sup._agent_env("engineer", "engineer-2")["LAB_JOB_SECRET_FILE"] == str(secret)
    assert "LAB_JOB_SECRET_FILE" not in sup._agent_env("analyst")
