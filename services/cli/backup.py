"""`lab backup` and `lab restore`: the lab's store to one archive and back (services/read/backup.py, services/lab/restore.py).

Both connect as the lab's admin (``lab``), the one user that reads and writes every stream:
on a stopped lab through a private transient server over its store (services/read/stored.py), on
a lab `lab up` (or `lab run`'s embedded lab) runs here with the admin password it wrote to
``$LAB_HOME/secrets/lab`` (0600, removed by `lab down`), on a lab given by ``--nats``/``LAB_NATS_URL``
with ``LAB_NATS_USER``/``LAB_NATS_PASSWORD_FILE`` (the Kubernetes CronJob, k8s/components/backup).
`lab restore` never writes into a running lab's store: it goes into a stopped or fresh LAB_HOME.
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
    """Run ``work`` on the lab's store as its admin: a stopped lab's through a private server, a running one's, or ``--nats``'s.

    A lab `lab up` runs here is reached with the admin password in ``secrets/lab``; one started before
    `lab up` wrote that file (an older version) is refused in one line.
    """
    from services.common.config import read_local_lab, secrets_dir
    from services.read.stored import lab_connection, lab_is_running

    home = lab_home()
    if not _explicit(nats) and lab_is_running(home):
        local = read_local_lab(home)
        if local is None:
            fail(f"the lab for LAB_HOME={home} is still starting: {what} once `lab up` has returned")
        if local.credentials and not (secrets_dir(home) / ADMIN).is_file():
            fail(f"the lab running for LAB_HOME={home} left its admin credential in no file (started by an older `lab up`): "
                 f"{what} after `lab down` and `lab up` again, or give --nats with LAB_NATS_USER/LAB_NATS_PASSWORD_FILE")

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
    failed_days: float = typer.Option(7.0, "--failed-days", min=0,
                                      help="Delete the outputs of finished projects' failed jobs written this many days ago or more."),
    orphan_grace_hours: float = typer.Option(1.0, "--orphan-grace-hours", min=0.05,
                                             help="Purge object chunks no object names (a put killed halfway) once this many hours old."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be deleted; delete nothing."),
    nats: str | None = typer.Option(None, "--nats", help="The lab's NATS server (with LAB_NATS_USER/LAB_NATS_PASSWORD_FILE of its admin)."),
) -> None:
    """Retention: finished projects' checkpoints and failed jobs' outputs after an age, orphaned chunks; results and papers stay."""
    from services.lab.prune import prune

    gone = _as_admin(nats, "lab-prune", "prune", lambda bus: prune(
        bus, checkpoint_age_s=checkpoints_days * 86400, failed_age_s=failed_days * 86400,
        orphan_grace_s=orphan_grace_hours * 3600, dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    checkpoints = [p for p in gone if p.kind == "checkpoint"]
    failed = [p for p in gone if p.kind == "failed output"]
    orphans = [p for p in gone if p.kind == "orphan chunks"]
    console.print(f"{verb} {len(checkpoints)} checkpoints ({sum(p.size for p in checkpoints)} bytes, {checkpoints_days:g} days old or more) "
                  f"and {len(failed)} failed jobs' outputs ({sum(p.size for p in failed)} bytes, {failed_days:g} days old or more) "
                  f"of finished projects, and {sum(p.chunks for p in orphans)} orphaned chunks", markup=False)
    for p in gone:
        size = f"{p.chunks} chunks" if p.kind == "orphan chunks" else f"{p.size} bytes"
        console.print(f"  {p.kind:<13}  {p.name}  {size}  {p.age_s / 86400:.1f} days", markup=False)
