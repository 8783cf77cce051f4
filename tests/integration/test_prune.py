"""`lab prune`: a finished project's checkpoints and failed jobs' outputs go after their age, orphaned chunks after a grace;
nothing else does, and a running project keeps all.

Against a real nats-server with the lab's topology. The object's age is its store mtime, written at put (a chunk's,
the server's stamp), so the test moves "now" forward instead of waiting days. (`lab backup` and `lab prune` of a
running `lab up`: tests/e2e/test_stopped_lab.py.)
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

from bus.schema import Envelope, ExperimentResult
from bus.schema.constants import ARTIFACTS_BUCKET
from bus.snapshot import chunk_subjects
from bus.store import Artifacts, StateStore
from services.lab.prune import prune, prune_orphans
from services.read.export import PRUNED, export_project
from tests.conftest import lab_cmd
from tests.web_convo import run


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


async def test_a_finished_projects_failed_job_outputs_go_after_their_age_and_the_export_says_so(admin_bus, tmp_path):
    states = await StateStore.open(admin_bus)
    await states.write("pi.done2", project("done2", "done"), 0)
    await states.write("pi.live2", project("live2", "experiments"), 0)
    for p in ("done2", "live2"):  # a failed job and a succeeded one in each, as the engineer reports them
        runs = [run("j-bad", "x01-baseline", "baseline", 0.0, ok=False), run("j-ok", "x02-wd", "wd", 0.9)]
        await admin_bus.publish(Envelope(project=p, sender="engineer", recipient="pi", body=ExperimentResult(
            experiment_id="x01-baseline", idea_id="baseline", runs=runs)))
    art = await Artifacts.open(admin_bus)
    names = ["done2/runs/j-bad/stderr.txt", "done2/runs/j-bad/final_info.json", "done2/runs/j-ok/final_info.json",
             "live2/runs/j-bad/stderr.txt"]
    for name in names:
        await art.put(name, b"y" * 50)
    later = datetime.now(UTC) + timedelta(days=8)
    assert await prune(admin_bus, checkpoint_age_s=7 * 86400, failed_age_s=9 * 86400, now=later) == []  # younger than its age
    gone = await prune(admin_bus, checkpoint_age_s=7 * 86400, failed_age_s=7 * 86400, now=later)
    assert sorted((p.name, p.kind, p.size) for p in gone) == [(n, "failed output", 50) for n in sorted(names[:2])]
    assert await stored_names(admin_bus) == sorted(names[2:])  # the succeeded job's, and the running project's failed one, stay

    done = await export_project(admin_bus, "done2", tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest["pruned"] == [
        {"object": "done2/runs/j-bad/final_info.json", "path": "results/x01-baseline/final_info.json", "reason": PRUNED},
        {"object": "done2/runs/j-bad/stderr.txt", "path": "results/x01-baseline/stderr.txt", "reason": PRUNED},
    ]
    assert [p.name for p in (tmp_path / "out" / "results").iterdir()] == ["x02-wd"] and len(done.pruned) == 2


async def test_chunks_no_object_names_are_purged_after_the_grace_and_an_upload_in_flight_is_not(admin_bus):
    art = await Artifacts.open(admin_bus)
    await art.put("p1/runs/j1/kept.bin", b"k" * 300_000)  # three chunks, its meta record written
    prefix = f"$O.{ARTIFACTS_BUCKET}.C."
    for orphan in ("killedput1", "p1.j2.killedput2"):  # a put killed before its meta: nats-py's and a job runner's (project.job.id)
        for _ in range(2):
            await admin_bus.js.publish(prefix + orphan, b"z" * 1000)
    assert len(await chunk_subjects(admin_bus, ARTIFACTS_BUCKET)) == 3
    assert await prune_orphans(admin_bus, grace_s=3600) == []  # just written: it may be a put in flight
    later = datetime.now(UTC) + timedelta(hours=2)
    planned = await prune_orphans(admin_bus, grace_s=3600, dry_run=True, now=later)
    assert sorted((p.name, p.chunks) for p in planned) == [(prefix + "killedput1", 2), (prefix + "p1.j2.killedput2", 2)]
    assert len(await chunk_subjects(admin_bus, ARTIFACTS_BUCKET)) == 3
    gone = await prune(admin_bus, checkpoint_age_s=7 * 86400, orphan_grace_s=3600, now=later)
    assert [p.name for p in gone] == [p.name for p in planned]
    [left] = await chunk_subjects(admin_bus, ARTIFACTS_BUCKET)
    assert await art.get("p1/runs/j1/kept.bin") == b"k" * 300_000 and left.startswith(prefix)
