"""Hostile experiment: try each escape from the issue, record what happened, never crash.

Each attack is recorded as {"worked": bool, "detail": str}. ``worked`` is the
attacker's own view (the read returned bytes, the connect succeeded, the
write landed); the test also checks from outside that no secret leaked into
anything recorded here and that no child outlived the job.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--out_dir")
p.add_argument("--seeds")
p.add_argument("--targets", default="{}")
a = p.parse_args()
targets = json.loads(a.targets)
attacks = {}


def attempt(name, fn):
    try:
        worked, detail = fn()
    except Exception as e:  # a refused attack is the expected outcome
        worked, detail = False, f"{type(e).__name__}: {e}"
    attacks[name] = {"worked": bool(worked), "detail": str(detail)[:2000]}


def read(path):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")


def read_lab_json():
    text = read(os.path.join(targets["lab_home"], "lab.json"))
    return True, text


CREDENTIAL_WORDS = ("LAB_", "PASSWORD", "TOKEN", "SECRET", "NATS")


def credential_in(environ):
    """An environment block holding anything credential-like (the test also greps for the real secrets)."""
    return any(w in k for k in (e.partition("=")[0] for e in environ.split("\0")) for w in CREDENTIAL_WORDS)


def read_job_spec():
    """The runner's own job file: it carries the job's NATS credential."""
    return True, read(targets["job_spec"])


def other_environ():
    """Every /proc/*/environ that is not our own: the agents', the runner's, the server's."""
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != me:
            try:
                env = read(f"/proc/{pid}/environ")
            except OSError:
                continue
            found.append(f"{pid}: {env}")
    return any(credential_in(e) for e in found), "\n".join(found)


def parent_environ():
    env = read(f"/proc/{os.getppid()}/environ")
    return credential_in(env), env


def own_environment():
    """Credentials handed down in our own environment count as a leak too."""
    leaked = [k for k in os.environ if k.startswith("LAB_") or "PASSWORD" in k or "TOKEN" in k]
    return bool(leaked), json.dumps(dict(os.environ))


def connect_nats():
    with socket.create_connection(("127.0.0.1", int(targets["nats_port"])), timeout=3) as s:
        banner = s.recv(200)
    return True, banner.decode(errors="replace")


def use_nats_unauthenticated():
    """Talk to NATS with no credential: the port may be reachable (a pod shares one network), the bus must not be."""
    with socket.create_connection(("127.0.0.1", int(targets["nats_port"])), timeout=3) as s:
        s.recv(4096)  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        s.settimeout(3)
        reply = b""
        while b"PONG" not in reply and b"-ERR" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return b"PONG" in reply, reply.decode(errors="replace")


def write_into(folder):
    def fn():
        path = os.path.join(folder, f"hostile-was-here-{os.getpid()}")
        with open(path, "w") as f:
            f.write("pwned")
        return True, path

    return fn


def see_processes():
    """Processes beyond our own sandbox: the runner, the nats-server, the test itself."""
    seen = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                seen[pid] = read(f"/proc/{pid}/cmdline").split("\0")
            except OSError:
                continue
    foreign = [pid for pid, args in seen.items()
               if "services.runner.runner" in args or "pytest" in args or any(a.endswith("nats-server") for a in args)]
    return bool(foreign), f"{len(seen)} processes visible; foreign: {foreign}"


def forge_pgid():
    path = os.path.join(os.path.dirname(os.path.abspath(a.out_dir)), "child.pgid")
    with open(path, "w") as f:
        f.write("0")  # 0 would be the caller's own process group
    return True, path


def root_inside():
    return os.getuid() == 0 or os.geteuid() == 0, f"uid={os.getuid()} euid={os.geteuid()}"


def setns_runner_net():
    """Join the network namespace of pid 1 or our parent, as a root experiment once could."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for pid in (os.getppid(), 1):
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        if libc.setns(fd, 0) == 0:
            return connect_nats()[0], f"joined the net namespace of {pid}"
    return False, f"setns refused (errno {ctypes.get_errno()})"


def outlive():
    """A child in its own session that would hold memory and sleep far past the job."""
    token = targets.get("outlive_token", "hostile-outlive")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(50 << 20); time.sleep(600)", token],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return True, f"started pid {child.pid} (the test checks from outside that it died with the job)"


attempt("read_lab_json", read_lab_json)
attempt("read_job_spec", read_job_spec)
attempt("read_other_environ", other_environ)
attempt("read_parent_environ", parent_environ)
attempt("credential_in_own_environment", own_environment)
attempt("connect_nats", connect_nats)
attempt("use_nats_without_credential", use_nats_unauthenticated)
attempt("setns_into_runner_network", setns_runner_net)
attempt("write_lab_home", write_into(targets["lab_home"]))
attempt("write_template_source", write_into(targets["template_source"]))
attempt("write_template_copy", write_into(os.path.dirname(os.path.abspath(__file__))))
attempt("write_lab_source", write_into(targets["lab_source"]))
attempt("see_other_processes", see_processes)
attempt("forge_pgid_file", forge_pgid)
attempt("root_inside", root_inside)
attempt("outlive_the_job", outlive)

seeds = [int(s) for s in a.seeds.split(",")]
worked = float(sum(v["worked"] for k, v in attacks.items() if k != "outlive_the_job"))
info = {
    "metrics": {"attacks_that_worked": {"mean": worked, "stderr": 0.0, "values": [worked] * len(seeds)}},
    "seeds": seeds,
    "config": {},
    "attacks": attacks,
}
with open(os.path.join(a.out_dir, "final_info.json"), "w") as f:
    json.dump(info, f, indent=1)
print(f"hostile: {int(worked)} attacks worked", flush=True)
time.sleep(1)  # give the setsid child time to settle, as a real escapee would
