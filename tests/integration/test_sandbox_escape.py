"""The red team's second round, each a hostile experiment run by the local executor in the real sandbox.

A setuid copy of bash in /job/out, 1 GiB in /dev/shm, 2,001 threads, a nested user namespace and the
syscalls the seccomp filter refuses: none gives more than the job's own unprivileged uid and its limits.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from bus.schema import JobPhase, JobSpec, NatsAccess
from services.executors.local import LocalExecutor
from services.runner import sandbox
from tests.integration.test_runner_limits import template

pytestmark = [pytest.mark.skipif(sandbox.tool() is None, reason="needs bubblewrap (CI installs it)")]


async def run_local(admin_bus, nats_server, tmp_path, monkeypatch, experiment: str, *, memory_mb: int = 512, wall: float = 60,
                    watch=None) -> tuple[JobPhase, Path, float]:
    """Run ``experiment`` as job j1 through the local executor; ``watch(job_folder)`` is called at each poll while it runs."""
    from bus.store import Artifacts

    home = tmp_path / "labhome"
    home.mkdir()
    monkeypatch.setenv("LAB_HOME", str(home))
    art = await Artifacts.open(admin_bus)
    await art.put("p1/tpl.tar.gz", template(tmp_path, experiment))
    job = JobSpec(job_id="j1", project="p1", experiment_id="x01", template="tpl", bundle_object="p1/tpl.tar.gz", seeds=[0],
                  wall_time_s=wall, memory_mb=memory_mb,
                  nats=NatsAccess(url=nats_server.url, user="runner", password=nats_server.credentials["runner"]))
    ex = LocalExecutor(jobs_dir=str(home / "jobs"), capacity=1)
    started = time.monotonic()
    await ex.submit(job)
    d = home / "jobs" / "j1"
    for _ in range(int(wall * 20) + 600):
        phase = await ex.poll("j1")
        if phase.state not in ("pending", "running"):
            break
        if watch is not None:
            watch(d)
        time.sleep(0.05)
    await ex.close()
    return phase, d, time.monotonic() - started


def final_info(experiment_body: str) -> str:
    return textwrap.dedent(experiment_body) + textwrap.dedent("""
    import argparse, json as _json, os as _os
    _p = argparse.ArgumentParser(); _p.add_argument("--out_dir"); _p.add_argument("--seeds"); _a, _ = _p.parse_known_args()
    _json.dump({"metrics": {"score": {"mean": 1.0, "stderr": 0.0, "values": [1.0]}}, "seeds": [0], "config": {}, "found": found},
               open(_os.path.join(_a.out_dir, "final_info.json"), "w"))
    """)


def no_setuid_under(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID)]


async def test_a_setuid_bash_in_out_is_never_on_the_host_and_is_gone_after_the_job(admin_bus, nats_server, tmp_path, monkeypatch):
    """The experiment's outputs live in the runner's private tmpfs (services/runner/box.py), mounted nosuid.

    The host never sees the setuid copy at all (the job folder's ``box`` is empty from outside), the runner
    sees it in its own mount namespace (read through /proc/PID/root, which enters it) on a nosuid mount,
    owned by the sandbox's unprivileged uid; nothing of it is left after the job.
    """
    experiment = final_info("""
    import os, shutil, sys, time
    out = sys.argv[sys.argv.index("--out_dir") + 1]
    shutil.copy("/usr/bin/bash", os.path.join(out, "rootsh"))
    os.chmod(os.path.join(out, "rootsh"), 0o4755)
    found = {"mode": oct(os.stat(os.path.join(out, "rootsh")).st_mode)}
    time.sleep(4)  # the test looks at the host and the runner's view meanwhile
    """)
    seen: dict[str, object] = {"on_host": []}

    def watch(d: Path) -> None:
        seen["on_host"] = [*seen["on_host"], *no_setuid_under(d)]  # type: ignore[misc]
        pid = (d / "pid").read_text().strip() if (d / "pid").is_file() else ""
        inside = Path(f"/proc/{pid}/root") / str(d / "work" / "box" / "out" / "rootsh").lstrip("/")
        try:
            st = inside.lstat()
            mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        except OSError:
            return
        if "owner" in seen or not st.st_mode & stat.S_ISUID:
            return
        box = [line.split() for line in mounts if line.split()[4] == str(d / "work" / "box")]
        seen.update(owner=st.st_uid, box_options=box[-1][5] if box else "", folders={p.name: oct(p.stat().st_mode & 0o777) for p in (d, d / "work")})

    phase, d, _ = await run_local(admin_bus, nats_server, tmp_path, monkeypatch, experiment, watch=watch)
    assert phase.state == "succeeded", (phase, (d / "runner.log").read_text())
    assert "owner" in seen, "the runner's view never showed the experiment's setuid file"
    assert seen["on_host"] == [], seen["on_host"]
    assert "nosuid" in str(seen["box_options"]).split(","), seen["box_options"]
    assert seen["owner"] != 0 and seen["owner"] == (sandbox.host_ids() or (os.geteuid(),))[0]
    assert seen["folders"] == {"j1": "0o700", "work": "0o700"}
    assert not (d / "work").exists() and no_setuid_under(d) == []
    assert d.stat().st_mode & 0o777 == 0o700
    assert (d / "result.json").is_file() and (d / "log.txt").is_file()  # the runner's own files are kept


async def test_dev_shm_counts_against_the_memory_limit(admin_bus, nats_server, tmp_path, monkeypatch):
    experiment = """
    import time
    chunk = b"x" * (1 << 20)
    with open("/dev/shm/hog", "wb") as f:
        for _ in range(1024):  # 1 GiB, against a 256 MiB job
            try:
                f.write(chunk); f.flush()
            except OSError:
                break  # /dev/shm is capped at the job's memory: full, then it waits to be noticed
    time.sleep(60)
    """
    phase, d, elapsed = await run_local(admin_bus, nats_server, tmp_path, monkeypatch, experiment, memory_mb=256, wall=90)
    assert phase.state == "failed" and phase.reason.startswith("oom: used"), phase
    assert "limit 256 MiB" in phase.reason and "/dev/shm" in phase.reason and elapsed < 60, (phase, elapsed)
    assert not (d / "work").exists()


async def test_two_thousand_threads_pass_no_process_cap(admin_bus, nats_server, tmp_path, monkeypatch):
    experiment = """
    import threading, time
    threading.stack_size(64 << 10)
    for _ in range(2001):
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    time.sleep(60)
    """
    phase, d, elapsed = await run_local(admin_bus, nats_server, tmp_path, monkeypatch, experiment, wall=90)
    assert phase.state == "failed" and phase.reason.startswith("pids:"), phase
    assert "tasks" in phase.reason and "limit 256" in phase.reason and elapsed < 60, (phase, elapsed)


async def test_no_nested_user_namespace_no_denied_syscall_and_a_read_only_dev(admin_bus, nats_server, tmp_path, monkeypatch):
    from bus.store import Artifacts

    experiment = final_info("""
    import ctypes, errno, os, subprocess
    libc = ctypes.CDLL(None, use_errno=True)
    def call(nr, *args):
        ctypes.set_errno(0)
        libc.syscall(nr, *args)
        return errno.errorcode.get(ctypes.get_errno(), "OK")
    found = {"unshare -Ur": subprocess.run(["unshare", "-Ur", "true"], capture_output=True).returncode,
             "unshare(NEWUSER)": call(272, 0x10000000),
             "ptrace": call(101, 16, 1, 0, 0), "keyctl": call(250, 0, 0, 0, 0), "mount": call(165, 0, 0, 0, 0, 0),
             "bpf": call(321, 0, 0, 0), "setns": call(308, 0, 0), "userfaultfd": call(323, 0),
             "perf_event_open": call(298, 0, 0, 0, 0, 0), "open_by_handle_at": call(304, 0, 0, 0),
             "getpid": call(39), "dev": sorted(os.listdir("/dev"))}
    try:
        open("/dev/planted", "w")
        found["write_dev"] = "OK"
    except OSError as e:
        found["write_dev"] = errno.errorcode[e.errno]
    """)
    phase, d, _ = await run_local(admin_bus, nats_server, tmp_path, monkeypatch, experiment)
    assert phase.state == "succeeded", (phase, (d / "log.txt").read_text())
    found = json.loads(await (await Artifacts.open(admin_bus)).get("p1/runs/j1/final_info.json"))["found"]
    assert found["unshare -Ur"] != 0 and found["unshare(NEWUSER)"] == "EPERM"
    denied = ("ptrace", "keyctl", "mount", "bpf", "setns", "userfaultfd", "perf_event_open", "open_by_handle_at")
    assert {k: found[k] for k in denied} == dict.fromkeys(denied, "EPERM") and found["getpid"] == "OK"
    assert found["write_dev"] == "EROFS"
    assert found["dev"] == ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]


async def test_mountinfo_names_no_host_path_of_the_lab(admin_bus, nats_server, tmp_path, monkeypatch):
    """The red team's ask: /proc/self/mountinfo and /proc/self/mounts inside show neither $LAB_HOME's path nor the job folder's."""
    from bus.store import Artifacts

    experiment = final_info("""
    found = {"mountinfo": open("/proc/self/mountinfo").read(), "mounts": open("/proc/self/mounts").read()}
    """)
    phase, d, _ = await run_local(admin_bus, nats_server, tmp_path, monkeypatch, experiment)
    assert phase.state == "succeeded", (phase, (d / "log.txt").read_text())
    found = json.loads(await (await Artifacts.open(admin_bus)).get("p1/runs/j1/final_info.json"))["found"]
    home = str(tmp_path / "labhome")
    for table in ("mountinfo", "mounts"):
        leaked = [line for line in found[table].splitlines() if home in line or str(d) in line or str(tmp_path) in line]
        assert leaked == [], (table, leaked)


UNPRIVILEGED_BOX = textwrap.dedent("""
    import json, os, runpy, subprocess, sys
    work = sys.argv[2]
    box = runpy.run_path(sys.argv[1])["enter"](__import__("pathlib").Path(work), 16)
    os.mkdir(box / "out")
    open(box / "out" / "made-inside", "w").write("x")
    seen = subprocess.run(["bwrap", "--unshare-user", "--uid", "65534", "--gid", "65534", "--ro-bind", "/", "/", "--proc", "/proc", "--tmpfs", "/tmp",
                           "--bind", str(box / "out"), "/tmp/out", "--", "cat", "/proc/self/mountinfo", "/tmp/out/made-inside"],
                          capture_output=True, text=True)
    print(json.dumps({"uid": os.getuid(), "rc": seen.returncode, "out": seen.stdout, "err": seen.stderr}))
""")


def test_a_lab_that_is_not_root_gets_the_private_tmpfs_too():
    """A laptop lab runs as its user: box.enter takes a user namespace mapping only that uid, and bwrap still nests in it.

    Run as uid 65534 (setpriv) when the test runs as root, else as the test's own user. What it cannot show: a
    kernel that refuses unprivileged user namespaces (the runner then says so and binds from the job folder).
    """
    from services.runner import box

    with tempfile.TemporaryDirectory(prefix="lab-box-") as top:  # under /tmp: pytest's own tmp folders are root's alone
        _unprivileged_box(Path(top), box.__file__)


def _unprivileged_box(tmp_path: Path, box_file: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    argv = [os.path.realpath(os.sys.executable), "-I", "-c", UNPRIVILEGED_BOX, box_file, str(work)]
    if os.geteuid() == 0:  # any Python uid 65534 can run (the lab's may sit under /root): the script needs only the stdlib
        argv[0] = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else argv[0]
        os.chown(work, 65534, 65534)
        tmp_path.chmod(0o755)
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout)
    assert got["uid"] != 0 and got["rc"] == 0, got
    job_out = [line.split() for line in got["out"].splitlines() if " /tmp/out " in line]
    assert job_out and job_out[0][3] == "/out", job_out  # the bind's root within its filesystem: the tmpfs's, not the host's
    assert str(tmp_path) not in " ".join(job_out[0])  # (this bwrap binds all of /, the box's mount point too; the lab's does not)
    assert got["out"].rstrip().endswith("x")  # the sandbox sees what the runner wrote in the box
    assert list((work / "box").iterdir()) == []  # and the host sees none of it
