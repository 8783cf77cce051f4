"""`lab prune`: a finished project's checkpoints go after their age; nothing else does, and a running project keeps all.

Against a real nats-server with the lab's topology. The object's age is its store mtime, written at put, so the
test moves "now" forward instead of waiting days.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

from bus.store import Artifacts, StateStore
from services.lab.prune import prune
from tests.conftest import lab_cmd


def project(name: str, stage: str) -> dict:
    return {"state": {"project": name, "template": "sleep", "stage": stage, "budget": {}, "started_at": 0.0}}


async def stored_names(bus) -> list[str]:
    art = await Artifacts.open(bus)
    return await art.list("")


async def seed(bus) -> None:
    states = await StateStore.open(bus)
    await states.write("pi.done1", project("done1", "done"), 0)
    await states.write("pi.failed1", project("failed1", "failed"), 0)
    await states.write("pi.live1", project("live1", "experiments"), 0)
    art = await Artifacts.open(bus)
    for name in ("done1/checkpoints/x01-baseline.tar.gz", "done1/results/x01-baseline/final_info.json", "done1/paper/paper.pdf",
                 "failed1/checkpoints/x02-wd.tar.gz", "live1/checkpoints/x01-baseline.tar.gz",
                 "done1-not-a-project/checkpoints/x.tar.gz"):
        await art.put(name, b"x" * 100)


async def test_only_finished_projects_checkpoints_older_than_the_age_are_deleted(admin_bus):
    await seed(admin_bus)
    before = await stored_names(admin_bus)
    # Younger than the age: nothing goes, dry run or not.
    assert await prune(admin_bus, checkpoint_age_s=7 * 86400) == []
    later = datetime.now(UTC) + timedelta(days=8)
    planned = await prune(admin_bus, checkpoint_age_s=7 * 86400, dry_run=True, now=later)
    assert sorted(p.name for p in planned) == ["done1/checkpoints/x01-baseline.tar.gz", "failed1/checkpoints/x02-wd.tar.gz"]
    assert all(p.size == 100 and p.age_s > 7 * 86400 for p in planned)
    assert await stored_names(admin_bus) == before  # a dry run deletes nothing
    gone = await prune(admin_bus, checkpoint_age_s=7 * 86400, now=later)
    assert [p.name for p in gone] == [p.name for p in planned]
    left = await stored_names(admin_bus)
    assert sorted(set(before) - set(left)) == sorted(p.name for p in planned)
    # The running project's checkpoint, the finished project's results and paper, and a name outside any project: kept.
    assert "live1/checkpoints/x01-baseline.tar.gz" in left and "done1/paper/paper.pdf" in left
    assert "done1/results/x01-baseline/final_info.json" in left and "done1-not-a-project/checkpoints/x.tar.gz" in left
    assert await prune(admin_bus, checkpoint_age_s=7 * 86400, now=later) == []  # nothing twice


def test_lab_prune_where_no_lab_is_stored_is_one_line(lab_env):
    """The CLI on a LAB_HOME with no store: one line naming LAB_HOME, nothing created."""
    home, env = lab_env
    home.mkdir(parents=True)
    run = subprocess.run(lab_cmd("prune", "--dry-run", "--checkpoints-days", "0"), env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert f"LAB_HOME={home}" in run.stderr and "nothing is stored there" in run.stderr
    assert not (home / "nats").exists()
