"""The PWNED name through each way in: put, a job's commit through the auth service, a raw put, and `lab export`."""

from __future__ import annotations

import json

import pytest

from bus import natsjwt
from bus.client import Bus, BusConfig
from bus.jobkeys import JobKeys, new_secret
from bus.permissions import AUTH, chunk_prefix, job_user
from bus.schema import CoPINote, CoPINoteMsg, Envelope
from bus.schema.constants import ARTIFACTS_BUCKET
from bus.server import EmbeddedServer, new_credentials
from bus.store import Artifacts, CommitRefused, InvalidObjectName
from services.auth.callout import AuthService
from services.read.export import export_project
from tests.conftest import config_for

pytestmark = pytest.mark.integration

PWNED = "p1/runs/zz/../../../../../../../../{}/PWNED"


@pytest.fixture
async def lab(tmp_path):
    seed, secret = natsjwt.new_account_seed(), new_secret()
    creds = new_credentials()
    server = EmbeddedServer(tmp_path / "nats", credentials=creds, auth_issuer=natsjwt.public_key(seed)).start()
    server.credentials = creds
    admin = await Bus.connect(config_for(server))
    await admin.ensure_topology()
    auth_bus = await Bus.connect(config_for(server, AUTH))
    await AuthService(JobKeys(secret), seed).serve(auth_bus)
    yield server, admin, JobKeys(secret)
    await auth_bus.close()
    await admin.close()
    server.stop()


async def test_the_pwned_name_is_refused_at_put_and_at_a_jobs_commit(lab, tmp_path):
    server, admin, keys = lab
    name = PWNED.format(str(tmp_path).lstrip("/"))
    with pytest.raises(InvalidObjectName, match="'..' segment"):
        await (await Artifacts.open(admin)).put(name, b"x")
    copi = await Bus.connect(config_for(server, "copi"))
    try:
        with pytest.raises(InvalidObjectName):
            await (await Artifacts.open(copi)).put(name, b"x")
    finally:
        await copi.close()
    job = await Bus.connect(BusConfig(url=server.url, user=job_user("p1", "zz"), password=keys.key("p1", "zz"), name="t-zz"), reconnect=False, timeout=15)
    try:
        mine = await Artifacts.open_for_job(job, "lab.files.p1.zz", chunk_prefix("p1", "zz"))
        with pytest.raises(InvalidObjectName):
            await mine.put(name, b"x")
        # Past the runner's own check (a runner that skips it): the auth service refuses the commit itself.
        with pytest.raises(CommitRefused, match="'..' segment"):
            await mine.obs.put(name, b"x")
        for bad in ("p1/runs/zz/\x1b]0;t\x07", "p1//x", "p1/runs/zz/a\\..\\b"):
            with pytest.raises(CommitRefused):
                await mine.obs.put(bad, b"x")
    finally:
        await job.close()
    assert await (await Artifacts.open(admin)).list("p1/") == []


async def test_export_writes_nothing_outside_out_and_reports_the_object(lab, tmp_path):
    server, admin, _ = lab
    victim = tmp_path / "victim"
    victim.mkdir()
    name = PWNED.format(str(victim).lstrip("/"))
    copi = await Bus.connect(config_for(server, "copi"))
    try:
        # The co-PI's credential may add objects; nats-py's own put skips the lab's name check.
        raw = await copi.js.object_store(ARTIFACTS_BUCKET)
        await raw.put(name, b"PWNED")
        await raw.put("p1/runs/zz/ok.txt", b"fine")
        await copi.publish(Envelope(project="p1", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n", text="hi"))))
    finally:
        await copi.close()
    out = tmp_path / "deep" / "er" / "out"
    done = await export_project(admin, "p1", out)
    assert not (victim / "PWNED").exists()
    assert [p for p in tmp_path.rglob("PWNED")] == []
    assert (out / "results" / "zz" / "ok.txt").read_bytes() == b"fine"
    assert [n for n, _ in done.refused] == [name]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["refused"][0]["object"] == name and "'..'" in manifest["refused"][0]["reason"]
