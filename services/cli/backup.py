"""`lab backup` and `lab restore`: the lab's store to one archive and back (services/read/backup.py, services/lab/restore.py).

Both connect as the lab's admin (``lab``), the one user that reads and writes every stream:
on a stopped lab through a private transient server over its store (services/read/stored.py), on
a lab given by ``--nats``/``LAB_NATS_URL`` with ``LAB_NATS_USER``/``LAB_NATS_PASSWORD_FILE``
(the Kubernetes CronJob, k8s/components/backup). A lab `lab up` runs here keeps its admin
credential in no file, so it is backed up after `lab down`, or through ``--nats`` with one.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from bus.client import Bus, BusConfig
from bus.permissions import ADMIN
from bus.settings import settings
from services.cli.errors import fail
from services.cli.terminal import SafeConsole
from services.common.config import bus_config, lab_home

console = SafeConsole(stderr=False, highlight=False)


def _explicit(nats: str | None) -> bool:
    return nats is not None or settings().nats_url is not None


def _as_admin(nats: str | None, name: str, what: str, work: Callable[[Bus], Awaitable[Any]]) -> Any:
    """Run ``work`` on the lab's store as its admin: a stopped lab's through a private server, or the one ``--nats`` names.

    A lab `lab up` runs here is refused in one line: it keeps its admin credential in no file.
    """
    from services.read.stored import lab_connection, lab_is_running

    home = lab_home()
    if not _explicit(nats) and lab_is_running(home):
        fail(f"the lab running for LAB_HOME={home} keeps its admin credential in no file: {what} after `lab down`, "
             "or give --nats with LAB_NATS_USER/LAB_NATS_PASSWORD_FILE of a user that reads every stream")

    async def main(config: BusConfig) -> Any:
        bus = await Bus.connect(config, reconnect=False, timeout=5)
        try:
            return await work(bus)
        finally:
            await bus.close()

    with lab_connection(ADMIN, nats, name) as conn:
        return asyncio.run(main(conn.config))


def backup_cmd(
    out: Path | None = typer.Option(None, "--out", help="The archive to write (.tar.gz), or a folder to write a time-stamped one in."),
    keep: int = typer.Option(0, "--keep", min=0, help="With a folder: keep only the newest N archives there (0: keep all)."),
    nats: str | None = typer.Option(None, "--nats", help="The lab's NATS server (with LAB_NATS_USER/LAB_NATS_PASSWORD_FILE of its admin)."),
) -> None:
    """Write every stream, KV bucket and object store of the lab into one archive, with a manifest (docs/backup.md)."""
    from services.read.backup import archive_path, backup, prune

    if keep and (out is None or not (out.is_dir() or str(out).endswith("/"))):
        fail("--keep needs --out FOLDER (the folder whose older archives it removes)")
    path = archive_path(out)
    saved = _as_admin(nats, "lab-backup", "back up its store", lambda bus: backup(bus, path))
    kept = sum(s.messages for s in saved)
    console.print(f"backed up {len(saved)} streams ({kept} messages) to {path}", markup=False)
    for s in saved:
        console.print(f"  {s.name:<22} {s.kind:<7} {s.messages if s.restored else 'not kept':>9}", markup=False)
    if keep:
        for old in prune(path.parent, keep):
            console.print(f"  removed older archive {old}", markup=False)


@contextmanager
def _target(nats: str | None, force: bool) -> Iterator[BusConfig]:
    """The server to restore into: the one ``--nats`` names, or a private one over a fresh ``$LAB_HOME`` store."""
    from bus.server import EmbeddedServer, new_credentials
    from services.lab.lifecycle import private_home
    from services.read.stored import lab_is_running, store_nodes

    if _explicit(nats):
        yield bus_config(ADMIN, nats, name="lab-restore")
        return
    home = lab_home()
    if lab_is_running(home):
        fail(f"a lab is running for LAB_HOME={home}: stop it with `lab down` first (restore replaces its store)")
    if store_nodes(home) and not force:
        fail(f"LAB_HOME={home} already holds a lab's store: restore into a fresh LAB_HOME, or add --force to replace it")
    if force:
        shutil.rmtree(home / "nats", ignore_errors=True)
    private_home(home)
    credentials = new_credentials()
    with EmbeddedServer(home / "nats", credentials=credentials, max_store_bytes=settings().max_store, die_with_parent=True) as server:
        yield BusConfig(url=server.url, user=ADMIN, password=credentials[ADMIN], name="lab-restore", replicas=1)


def restore_cmd(
    archive: Path = typer.Argument(..., help="An archive `lab backup` wrote."),
    force: bool = typer.Option(False, "--force", help="Replace the lab data already there (LAB_HOME's store, or every stream at --nats)."),
    nats: str | None = typer.Option(None, "--nats", help="Restore into this NATS server (its admin user) instead of LAB_HOME's store."),
) -> None:
    """Restore a `lab backup` archive into a fresh LAB_HOME (or --nats server); `lab up` then starts on it."""
    from bus import snapshot
    from services.lab.restore import opened, restore

    async def main(config: BusConfig, manifest: dict[str, Any], folder: Path) -> list[tuple[str, int]]:
        bus = await Bus.connect(config, reconnect=False, timeout=5)
        try:
            existing = await snapshot.stream_names(bus)
            if existing and not force:
                fail(f"the NATS server at {config.url} already holds lab streams ({', '.join(existing[:3])}…): add --force to replace them")
            for name in existing:
                await snapshot.delete_stream(bus, name)
            return await restore(bus, manifest, folder, config.replicas)
        finally:
            await bus.close()

    with opened(archive) as (manifest, folder), _target(nats, force) as config:  # the archive is checked whole before anything is touched
        done = asyncio.run(main(config, manifest, folder))
    where = f"the NATS server at {nats or settings().nats_url}" if _explicit(nats) else f"LAB_HOME={lab_home()}"
    console.print(f"restored {len(done)} streams ({sum(n for _, n in done)} messages) from {archive} into {where}", markup=False)


def prune_cmd(
    checkpoints_days: float = typer.Option(7.0, "--checkpoints-days", min=0,
                                           help="Delete the checkpoints of finished projects written this many days ago or more."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted; delete nothing."),
    nats: str | None = typer.Option(None, "--nats", help="The lab's NATS server (with LAB_NATS_USER/LAB_NATS_PASSWORD_FILE of its admin)."),
) -> None:
    """Retention: delete finished projects' checkpoints after an age; results, papers and logs stay (docs/backup.md)."""
    from services.lab.prune import prune

    gone = _as_admin(nats, "lab-prune", "prune", lambda bus: prune(bus, checkpoint_age_s=checkpoints_days * 86400, dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {len(gone)} checkpoints of finished projects ({sum(p.size for p in gone)} bytes), "
                  f"{checkpoints_days:g} days old or more", markup=False)
    for p in gone:
        console.print(f"  {p.name}  {p.size} bytes  {p.age_s / 86400:.1f} days", markup=False)
