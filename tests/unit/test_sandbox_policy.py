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
    # As root the jail binds each folder at a gate the sandbox uid can walk to, and bwrap binds it from there.
    gates = {cmd[i + 2]: cmd[i + 1] for i, a in enumerate(cmd[: cmd.index("--exec")]) if a == "--gate"}
    flag, source = binds["/job/out"]
    assert flag == "--bind" and gates.get(source, source) == str(tmp_path / "work" / "out")
    assert (source in gates) == (sandbox.host_ids() is not None)
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
    assert not (tmp_path / "home" / "secrets" / "lab").exists()  # no agent is handed the admin's password (only `lab up` writes it, for the CLI)
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


def test_the_seccomp_program_is_well_formed_and_refuses_by_number():
    import struct

    from services.runner import seccomp

    prog = seccomp.program("x86_64")
    assert prog is not None and len(prog) % 8 == 0 and len(prog) // 8 < 256
    code = [struct.unpack("=HBBI", prog[i : i + 8]) for i in range(0, len(prog), 8)]
    assert code[0] == (seccomp.LD_W_ABS, 0, 0, seccomp.OFF_ARCH) and code[1][3] == 0xC000003E  # the arch check comes first
    checked = {k for op, _, _, k in code if op == seccomp.JEQ_K}
    assert {seccomp.X86_64[n] for n in (*seccomp.DENIED, *seccomp.FLAG_CHECKED, *seccomp.NO_SYS)} <= checked
    assert (seccomp.RET_K, 0, 0, seccomp.RET_ERRNO | 1) in code  # EPERM
    assert seccomp.program("aarch64") is not None and seccomp.program("sparc") is None
    assert set(seccomp.X86_64) == set(seccomp.AARCH64)  # both tables name every syscall the filter uses


def test_the_jail_reads_its_arguments_and_refuses_others():
    from services.runner import jail

    drop, gates, program, cmd = jail.parse(["--drop", "65534", "65534", "--gate", "/a", "/dev/shm/0", "rw", "--seccomp", "0aff",
                                            "--exec", "bwrap", "--seccomp", "FD"])
    assert (drop, gates, program, cmd) == ((65534, 65534), [("/a", "/dev/shm/0", "rw")], b"\n\xff", ["bwrap", "--seccomp", "FD"])
    with pytest.raises(jail.JailError):
        jail.parse(["--frob", "--exec", "x"])
    with pytest.raises(jail.JailError):
        jail.parse(["--exec"])
