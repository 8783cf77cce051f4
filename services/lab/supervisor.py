"""`lab up` / `lab down`: one machine's lab — an embedded nats-server and six agent processes.

The supervisor owns the server and the agents: it restarts an agent that
dies (with a growing pause), and on SIGTERM or Ctrl-C stops the agents first
(they finish the message in hand) and the server last. `lab up --detach`
starts the same supervisor in the background and returns once every agent
reported ready; `lab down` signals it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus import natsjwt
from bus.client import Bus, BusConfig
from bus.errors import LabError, ServerStartError
from bus.jobkeys import new_secret
from bus.partitions import PARTITIONS
from bus.permissions import ADMIN, AUTH, COPI, JOB_USER, WEB
from bus.retry import backoff_delay
from bus.schema import ROLES, ExecutorKind, MindKind
from bus.schema.formats import LabFile
from bus.server import EmbeddedCluster, EmbeddedServer, new_credentials
from bus.settings import Settings, env_name, settings
from services.common.config import read_local_lab, secrets_dir, state_file, write_lab_file, write_secret
from services.common.process import alive
from services.host.wiring import wiring_class
from services.lab.lifecycle import (
    StoreFull,
    Terminated,
    check_disk,
    forget_pids,
    max_store_bytes,
    private_home,
    private_log,
    reap_stale,
    record_pids,
    stop_job_runners,
    stop_on_signals,
    supervisor_alive,
)

__all__ = ["LabError", "LabOptions", "Supervisor", "Terminated", "down", "refuse_if_full", "running_lab", "stop_on_signals", "up_detached"]


def refuse_if_full(home: Path) -> None:
    """LabError, with the numbers, when the disk under ``home`` has no room for a lab."""
    try:
        check_disk(home)
    except StoreFull as e:
        raise LabError(str(e)) from None


def running_lab(home: Path) -> LabFile | None:
    """The lab recorded in ``lab.json`` if its supervisor still lives."""
    info = read_local_lab(home)
    if info and alive(info.supervisor_pid):
        return info
    return None


@dataclass
class LabOptions:
    home: Path
    port: int = 0
    nats_url: str | None = None  # an existing server instead of the embedded one
    mind: MindKind = "offline"
    executor: ExecutorKind = "local"
    sync_always: bool = False
    ready_timeout: float = field(default_factory=lambda: settings().ready_timeout_s)  # a loaded machine may need more
    cluster: int = 1  # nats-server nodes; >1: a JetStream cluster on loopback, streams replicated on every node
    replicas: dict[str, int] = field(default_factory=dict)  # role -> agent processes (default 1 each)

    def instances(self) -> list[tuple[str, str]]:
        """(instance name, role) of every agent process: ``pi``, and ``pi-2``… for extra replicas."""
        return [(role if i == 0 else f"{role}-{i + 1}", role) for role in ROLES for i in range(self.replicas.get(role, 1))]


def parse_replicas(specs: list[str]) -> dict[str, int]:
    """``ROLE=N`` pairs (``all=N`` for every role) from the command line; LabError names a bad one."""
    out: dict[str, int] = {}
    for spec in specs:
        role, sep, n = spec.partition("=")
        if not sep or not n.isdigit() or not 1 <= int(n) <= PARTITIONS:
            raise LabError(f"bad --replicas {spec!r}: expected ROLE=N with N from 1 to {PARTITIONS} (e.g. engineer=2, all=2)")
        if role != "all" and role not in ROLES:
            raise LabError(f"bad --replicas {spec!r}: unknown role {role!r}; choose one of {', '.join(ROLES)} or all")
        for r in ROLES if role == "all" else (role,):
            out[r] = int(n)
    return out


@dataclass
class Supervisor:
    opts: LabOptions
    server: EmbeddedServer | EmbeddedCluster | None = None
    credentials: dict[str, str] | None = None
    job_secret: str | None = None  # a new one each `lab up`, like the passwords
    issuer_seed: str | None = None  # the auth callout's signing key (services/auth/callout.py), new each `lab up`
    auth: subprocess.Popen[bytes] | None = None  # the auth service: admits each job's runner as its own user
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    url: str = ""
    stopping: bool = False
    _next_try: dict[str, float] = field(default_factory=dict)
    _disk_checked: float = 0.0
    _disk_full: str = ""

    def start(self) -> LabFile:
        """Bring the lab up (server, topology, auth service, agents) and record it in ``lab.json``; stop it all on failure."""
        home = self.opts.home
        self._prepare_home(home)
        self._start_server(home)
        try:
            self._write_pids()
            asyncio.run(self._setup_topology())
            if self.credentials:
                self._secret(WEB)  # for `lab web` (or `lab up --web`) on this machine, read by bus_config
                # For `lab backup` / `lab prune` of this running lab (services/cli/backup.py): the server's own nats.conf
                # (0600) holds it already; this 0600 file is only where the CLI finds it, and `lab down` removes it.
                self._secret(ADMIN)
                self._spawn_auth()
                self._wait_auth()
            for name, role in self.opts.instances():
                self._spawn(name, role)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        info = self._info(home)
        write_lab_file(info, home)
        return info

    def _prepare_home(self, home: Path) -> None:
        """Refuse a home a lab runs (or starts) in, or whose disk is full; clear what a killed lab left."""
        if running_lab(home):
            raise LabError(f"a lab is already running for {home} (stop it with `lab down`)")
        if pid := supervisor_alive(home):
            raise LabError(f"a lab is starting for {home} (supervisor pid {pid}); wait for it or stop it")
        private_home(home)  # 0700, an existing home's modes narrowed: its logs and store are the lab user's alone
        refuse_if_full(home)
        for pid in reap_stale(home):  # what a SIGKILLed lab left behind must not hold the store
            print(f"lab: stopped process {pid} left running by a lab that was killed", file=sys.stderr, flush=True)
        (home / "run").mkdir(exist_ok=True)
        for f in (home / "run").glob("*.ready"):
            f.unlink()

    def _start_server(self, home: Path) -> None:
        """Start the embedded server (or cluster) with new credentials, or use the one ``nats_url`` names as it is."""
        if self.opts.nats_url:
            self.url = self.opts.nats_url
            self.credentials = None
            return
        self.credentials = new_credentials()
        self.issuer_seed = natsjwt.new_account_seed()
        issuer = natsjwt.public_key(self.issuer_seed)
        store = max_store_bytes()
        if self.opts.cluster > 1:
            self.server = EmbeddedCluster(
                home / "nats", self.opts.cluster, port=self.opts.port, credentials=self.credentials, sync_always=self.opts.sync_always,
                max_store_bytes=store, auth_issuer=issuer,
            )
        else:
            self.server = EmbeddedServer(
                home / "nats", port=self.opts.port, credentials=self.credentials, sync_always=self.opts.sync_always, max_store_bytes=store,
                auth_issuer=issuer,
            )
        self.server.start()
        self.url = self.server.url

    def _info(self, home: Path) -> LabFile:
        """What ``lab.json`` records of the running lab."""
        return LabFile(
            url=self.url,
            home=str(home),
            supervisor_pid=os.getpid(),
            server_pid=self._server_pids()[0] if self._server_pids() else None,
            server_pids=self._server_pids(),
            cluster=self.opts.cluster,
            agents={r: p.pid for r, p in self.procs.items()},
            # Only the co-PI's own credential, for this user's CLI; the roles' and the admin's are in secrets/.
            credentials={COPI: self.credentials[COPI]} if self.credentials else {},
            max_store_bytes=self.server.max_store_bytes if self.server else None,
            mind=self.opts.mind,
            executor=self.opts.executor,
            # How job runners log in: each as its own user through the auth service, or (no credentials) openly.
            runner_user=JOB_USER if self.auth else None,
            started=time.time(),
        )

    async def _setup_topology(self) -> None:
        password = self.credentials.get(ADMIN) if self.credentials else None
        config = BusConfig(url=self.url, user=ADMIN if password else None, password=password, name="lab-setup", replicas=self.opts.cluster)
        bus = await Bus.connect(config, reconnect=False)
        try:
            await bus.ensure_topology()
        finally:
            await bus.close()

    def _server_pids(self) -> list[int]:
        nodes = self.server.nodes if isinstance(self.server, EmbeddedCluster) else [self.server] if self.server else []
        return [n.proc.pid for n in nodes if n.proc is not None]

    def _agent_env(self, role: str, name: str | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            **Settings.environ(
                home=self.opts.home, nats_url=self.url, mind=self.opts.mind, executor=self.opts.executor, nats_replicas=self.opts.cluster,
                instance=name or role,
                # Which partitions of the role's inputs this process reads (bus/partitions): `pi-2` is index 1.
                replica=int((name or role).partition("-")[2] or 1) - 1, replicas=self.opts.replicas.get(role, 1),
            ),
        }
        port = settings().metrics_port
        if port:  # one port per process, in the order `lab status` lists them: LAB_METRICS_PORT, +1, +2…
            env.update(Settings.environ(metrics_port=port + [n for n, _ in self.opts.instances()].index(name or role)))
        for name in ("nats_user", "nats_password", "nats_password_file", "runner_password", "runner_password_file", "job_secret", "job_secret_file"):
            env.pop(env_name(name), None)
        if wiring_class(role).runs_jobs:
            # The engineers' alone (all replicas the same): each job's status key derives from it (bus/jobkeys.py).
            env.update(Settings.environ(job_secret_file=self._job_secret()))
        if self.credentials:
            # Files, not values: another process's environ is readable by any process of this user.
            env.update(Settings.environ(nats_user=role, nats_password_file=self._secret(role)))
            if wiring_class(role).runs_jobs:
                # It starts job runners: each gets a user of its own (job.<project>.<job>, its job's key as
                # password), admitted by the auth service with that job's permissions alone.
                env.update(Settings.environ(runner_user=JOB_USER))
        return env

    def _spawn_auth(self) -> None:
        """Start the auth service (services/auth/callout.py): it holds the job secret and the issuer seed."""
        assert self.credentials is not None and self.issuer_seed is not None
        seed = secrets_dir(self.opts.home) / "auth-issuer-seed"
        write_secret(seed, self.issuer_seed, private_folder=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LAB_NATS_", "LAB_RUNNER_", "LAB_JOB_SECRET", "LAB_AUTH_"))}
        env.update(Settings.environ(
            home=self.opts.home, nats_url=self.url, nats_user=AUTH, nats_password_file=self._secret(AUTH),
            job_secret_file=self._job_secret(), auth_issuer_seed_file=seed, auth_ready_file=self.opts.home / "run" / "auth.ready",
        ))
        if port := settings().metrics_port:  # the next port after the agents' (LAB_METRICS_PORT, +1…); 0: any free one
            env.update(Settings.environ(metrics_port=port + len(self.opts.instances())))
        logs = self.opts.home / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        with open(private_log(logs / "auth.log"), "ab") as out:
            self.auth = subprocess.Popen(
                [sys.executable, "-m", "services.auth"], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self._write_pids()

    def _wait_auth(self, timeout: float = 30.0) -> None:
        ready = self.opts.home / "run" / "auth.ready"
        deadline = time.monotonic() + timeout
        while not ready.is_file():
            if self.auth is not None and self.auth.poll() is not None:
                log = self.opts.home / "logs" / "auth.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
                raise LabError(f"the auth service exited at start: {tail[0] if tail else 'no output'}")
            if time.monotonic() > deadline:
                raise LabError(f"the auth service was not ready after {timeout:.0f}s (see logs/auth.log)")
            time.sleep(0.05)

    def _job_secret(self) -> Path:
        path = secrets_dir(self.opts.home) / "job-secret"
        if self.job_secret is None:
            self.job_secret = new_secret()
            write_secret(path, self.job_secret, private_folder=True)
        return path

    def _secret(self, user: str) -> Path:
        path = secrets_dir(self.opts.home) / user
        assert self.credentials is not None
        if not path.is_file() or path.read_text() != self.credentials[user]:
            write_secret(path, self.credentials[user], private_folder=True)
        return path

    def _children(self) -> dict[str, int]:
        """The agents' pids, and the auth service's (recorded with them, so a killed lab's is reaped too)."""
        return {r: p.pid for r, p in self.procs.items()} | ({"auth": self.auth.pid} if self.auth else {})

    def _write_pids(self) -> None:
        record_pids(self.opts.home, self._server_pids(), self._children())

    def _spawn(self, name: str, role: str | None = None) -> None:
        role = role or name.split("-")[0]
        logs = self.opts.home / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        with open(private_log(logs / f"{name}.log"), "ab") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "agent", role],
                env=self._agent_env(role, name),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._write_pids()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.opts.ready_timeout
        run = self.opts.home / "run"
        while time.monotonic() < deadline:
            missing = [n for n, _ in self.opts.instances() if not (run / f"{n}.ready").is_file()]
            dead = [r for r, p in self.procs.items() if p.poll() is not None]
            if dead:
                log = self.opts.home / "logs" / f"{dead[0]}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
                raise LabError(f"agent {dead[0]} exited at start: {tail[0] if tail else 'no output'}")
            if not missing:
                return
            time.sleep(0.1)
        raise LabError(f"agents not ready after {self.opts.ready_timeout:.0f}s: {', '.join(missing)}")

    def supervise_forever(self, poll: float = 0.5) -> int:
        """Restart agents that die, until SIGTERM, SIGINT or SIGHUP (a closed terminal); the signal that stopped it."""
        got: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            self.stopping = True
            got.append(signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        while not self.stopping:
            self.tick()
            time.sleep(poll)
        self.stop()
        return got[0] if got else 0

    def tick(self) -> None:
        """One look at the agents and the server: restart what died, after a growing pause."""
        next_try = self._next_try
        for role, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            now = time.monotonic()
            if role not in next_try:
                n = self.restarts.get(role, 0)
                next_try[role] = now + backoff_delay(n + 1, base_s=0.5, max_s=30.0)
                print(f"lab: agent {role} exited with {proc.returncode}; restarting", file=sys.stderr, flush=True)
            if now >= next_try[role]:
                self.restarts[role] = self.restarts.get(role, 0) + 1
                self._spawn(role)
                next_try.pop(role)
                self._record_pids()
        if self.auth is not None and self.auth.poll() is not None and not self.stopping:
            # Without it no runner can connect: restart it at once (it holds no state).
            print(f"lab: the auth service exited with {self.auth.returncode}; restarting", file=sys.stderr, flush=True)
            self._spawn_auth()
        self._watch_disk()
        nodes = self.server.nodes if isinstance(self.server, EmbeddedCluster) else [self.server] if self.server else []
        for node in nodes:
            if node.proc and node.proc.poll() is not None:
                print(f"lab: nats-server {node.home.name} exited; restarting it on its store", file=sys.stderr, flush=True)
                try:
                    node.proc = None
                    node.start()
                    self._write_pids()
                except ServerStartError as e:
                    print(f"lab: {e}", file=sys.stderr, flush=True)

    def _watch_disk(self, every: float = 30.0) -> None:
        """Say in the supervisor's log, once, when the disk under LAB_HOME fills (and when it has room again)."""
        now = time.monotonic()
        if now - self._disk_checked < every:
            return
        self._disk_checked = now
        try:
            check_disk(self.opts.home)
            full = ""
        except (StoreFull, OSError) as e:
            full = str(e)
        if full != self._disk_full:
            print(f"lab: {full}" if full else "lab: the disk under LAB_HOME has room again", file=sys.stderr, flush=True)
            self._disk_full = full

    def _record_pids(self) -> None:
        info = (read_local_lab(self.opts.home) or LabFile()).model_copy(
            update={"agents": {r: p.pid for r, p in self.procs.items()}, "server_pids": self._server_pids()}
        )
        write_lab_file(info, self.opts.home)

    def stop(self, timeout: float = 30.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        children = [*self.procs.values(), *([self.auth] if self.auth else [])]
        if self.auth is not None and self.auth.poll() is None:
            self.auth.terminate()
        for proc in children:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The job runners the engineer started, each with its experiment: found by the pid files the local
        # executor recorded, after the agents (no engineer starts another) and before the server they talk to.
        for pid in stop_job_runners(self.opts.home):
            print(f"lab: stopped job runner {pid} (and its experiment) with the lab", file=sys.stderr, flush=True)
        if self.server:
            self.server.stop()
        if self.credentials or self.job_secret:
            shutil.rmtree(secrets_dir(self.opts.home), ignore_errors=True)  # this run's passwords and job secret die with it
        forget_pids(self.opts.home)
        path = state_file(self.opts.home)
        info = read_local_lab(self.opts.home)
        if info and info.supervisor_pid == os.getpid():
            path.unlink(missing_ok=True)


def up_detached(opts: LabOptions, argv: list[str]) -> LabFile:
    """Start the supervisor in the background; return once it has written lab.json."""
    if running_lab(opts.home):
        raise LabError(f"a lab is already running for {opts.home} (stop it with `lab down`)")
    private_home(opts.home)
    refuse_if_full(opts.home)
    state_file(opts.home).unlink(missing_ok=True)
    # The supervisor's (and a detached `lab web`'s) output: 0600 from creation; `lab web` writes no token to it (not a terminal).
    log = private_log(opts.home / "supervisor.log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", *argv],
        env={**os.environ, **Settings.environ(home=opts.home)},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(log)
    deadline = time.monotonic() + opts.ready_timeout + 15
    while time.monotonic() < deadline:
        info = running_lab(opts.home)
        if info and info.supervisor_pid == proc.pid:
            return info
        if proc.poll() is not None:
            tail = (opts.home / "supervisor.log").read_text(errors="replace").strip().splitlines()[-1:]
            if tail:
                raise LabError(tail[0].removeprefix("lab: error: "))
            refuse_if_full(opts.home)  # a full disk cannot even take the supervisor's log
            raise LabError(f"the lab exited at start (code {proc.returncode}) and wrote nothing to {opts.home / 'supervisor.log'}")
        time.sleep(0.1)
    proc.terminate()
    raise LabError("the lab did not become ready in time (see supervisor.log in LAB_HOME)")


def down(home: Path, timeout: float = 60.0) -> bool:
    info = running_lab(home)
    if not info:
        # No supervisor: stop what a killed one left behind (its server and agents), if anything.
        return bool(reap_stale(home))
    pid = info.supervisor_pid
    assert pid is not None  # running_lab found it alive
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True
