"""Reading a lab that is not running: its store on LAB_HOME, opened by a transient server of our own.

`lab status`, `lab logs`, `lab export`, `lab ideas` and `lab web` read what the
lab stored; none of that needs the lab's agents. When no lab runs for LAB_HOME
(and no NATS URL was given), :func:`lab_connection` starts a nats-server on a
private loopback port over the stored JetStream folder, with credentials of its
own that nobody else learns, and stops it when the command ends (it dies with
the command even on SIGKILL). Commands that write (`lab say`, `lab run
--attach`) need the running lab and say so in one line: which lab they looked
for (LAB_HOME and URL) and the command that starts it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bus.client import BusConfig
from bus.errors import LabError
from bus.server import EmbeddedCluster, EmbeddedServer, new_credentials
from bus.settings import settings
from services.common.config import bus_config, lab_home, read_local_lab
from services.common.process import alive

NOT_RUNNING = "lab is not running; showing what is stored"


@dataclass(frozen=True)
class Connection:
    config: BusConfig
    stored: bool  # True: a transient server over the stopped lab's store, not the lab itself


def lab_is_running(home: Path) -> bool:
    """A lab's supervisor lives for ``home``: it runs (``lab.json``) or is starting (``run/lab.pids``)."""
    info = read_local_lab(home)
    if info and alive(info.supervisor_pid):
        return True
    try:
        return alive(json.loads((home / "run" / "lab.pids").read_text()).get("supervisor"))
    except (OSError, ValueError, AttributeError):
        return False


def _explicit(nats: str | None) -> bool:
    """Whether the user named a server (--nats, LAB_NATS_URL): then that server is the lab, running or not."""
    return nats is not None or settings().nats_url is not None


def not_running(home: Path, url: str | None = None) -> LabError:
    where = f" at {url}" if url else ""
    return LabError(f"no lab is running for LAB_HOME={home}{where}; start it with `lab up --detach` (or pass --nats URL)")


def unreachable(url: str, error: BaseException) -> LabError:
    """A write command's one line when the lab's server does not answer: where it looked, why, and how to start it."""
    reason = str(error).split(": ", 1)[-1] if f"at {url}" in str(error) else str(error)
    return LabError(f"no lab answers at {url} for LAB_HOME={lab_home()} ({reason}); start it with `lab up --detach` (or pass --nats URL)")


def store_nodes(home: Path) -> int:
    """How many nats-server stores the lab at ``home`` left: 1 (``nats/jetstream``), N for a cluster (``nats/n*/``), 0 for none."""
    nodes = [d for d in (home / "nats").glob("n*") if (d / "jetstream").is_dir()]
    if nodes:
        return len(nodes)
    return 1 if (home / "nats" / "jetstream").is_dir() else 0


@contextmanager
def lab_connection(user: str, nats: str | None, name: str, write: bool = False) -> Iterator[Connection]:
    """How a command reaches the lab: the running one, else (reads only) its store through a transient server."""
    home = lab_home()
    if _explicit(nats) or lab_is_running(home):
        yield Connection(bus_config(user, nats, name=name), stored=False)
        return
    if write:
        raise not_running(home)
    nodes = store_nodes(home)
    if nodes == 0:
        raise LabError(f"no lab has run with LAB_HOME={home}: nothing is stored there; start one with `lab up --detach` or `lab run`")
    credentials = new_credentials()
    server: EmbeddedServer | EmbeddedCluster
    if nodes > 1:
        server = EmbeddedCluster(home / "nats", nodes, credentials=credentials, max_store_bytes=settings().max_store, die_with_parent=True)
    else:
        server = EmbeddedServer(home / "nats", credentials=credentials, max_store_bytes=settings().max_store, die_with_parent=True)
    server.start()
    try:
        yield Connection(BusConfig(url=server.url, user=user, password=credentials[user], name=name, replicas=nodes), stored=True)
    finally:
        server.stop()
