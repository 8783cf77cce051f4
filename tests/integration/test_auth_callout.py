"""Per-job runner users through nats-server's auth callout, against the real server.

A runner connects as ``job.<project>.<job>`` with its job's key; the lab's auth
service (services/auth/callout.py) admits it with that job's permissions only.
"""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from bus import natsjwt, subjects
from bus.client import Bus, BusConfig
from bus.errors import ConnectError
from bus.jobkeys import JobKeys, new_secret
from bus.permissions import AUTH, JOB_USER, chunk_prefix, job_of_user, job_user
from bus.schema import Envelope, JobSpec, JobStatus, NatsAccess
from bus.server import EmbeddedServer, new_credentials
from bus.store import Artifacts, CommitRefused
from services.auth.callout import AuthService
from services.host.jobs import ExecutorJobs
from services.runner.runner import Runner
from tests.conftest import config_for
from tests.fakes import RecordingExecutor

REFUSED_S = 1.5


# ---------------------------------------------------------------- the JWT module, on its own

def test_a_jwt_round_trips_and_a_changed_one_does_not_verify():
    seed = natsjwt.new_account_seed()
    issuer = natsjwt.public_key(seed)
    assert issuer.startswith("A") and seed.startswith("SA")
    token = natsjwt.encode({"sub": "UABC", "nats": {"type": "user"}}, seed, now=1000)
    claims = natsjwt.decode(token, issuer=issuer)
    assert claims["iss"] == issuer and claims["iat"] == 1000 and claims["sub"] == "UABC" and len(claims["jti"]) == 52
    head, _, sig = token.split(".")
    forged = json.dumps({**claims, "sub": "UEVIL"}).encode()
    import base64

    tampered = f"{head}.{base64.urlsafe_b64encode(forged).rstrip(b'=').decode()}.{sig}"
    with pytest.raises(natsjwt.JwtError, match="does not verify"):
        natsjwt.decode(tampered)
    with pytest.raises(natsjwt.JwtError, match="expected"):
        natsjwt.decode(token, issuer=natsjwt.public_key(natsjwt.new_account_seed()))
    with pytest.raises(natsjwt.JwtError):
        natsjwt.decode("not.a-jwt")
    with pytest.raises(natsjwt.JwtError):
        natsjwt.public_key("SAnotaseed")


def test_user_jwt_carries_the_permissions_and_an_expiry():
    seed = natsjwt.new_account_seed()
    token = natsjwt.user_jwt(user_nkey="UX", name="job.p.j", seed=seed, publish=["a.>"], subscribe=["_INBOX_job.p.j.>"], expires_s=60)
    claims = natsjwt.decode(token)
    assert claims["aud"] == "$G" and claims["name"] == "job.p.j" and claims["exp"] - claims["iat"] == 60
    assert claims["nats"]["pub"] == {"allow": ["a.>"]} and claims["nats"]["type"] == "user"


def test_only_job_user_names_are_jobs():
    assert job_of_user("job.p1.j1") == ("p1", "j1")
    for name in ("runner", "pi", "job.p1", "job.p1.j1.x", "job.p*.j1", "job..j1", "jobs.p.j"):
        assert job_of_user(name) is None


# ---------------------------------------------------------------- against nats-server

@pytest.fixture
async def lab(tmp_path):
    """A server whose non-static users go to the auth callout, the auth service, and the admin's bus."""
    seed, secret = natsjwt.new_account_seed(), new_secret()
    creds = new_credentials()
    server = EmbeddedServer(tmp_path / "nats", credentials=creds, auth_issuer=natsjwt.public_key(seed)).start()
    server.credentials = creds
    admin = await Bus.connect(config_for(server))
    await admin.ensure_topology()
    auth_bus = await Bus.connect(config_for(server, AUTH))
    service = AuthService(JobKeys(secret), seed)
    await service.serve(auth_bus)
    yield server, admin, JobKeys(secret)
    await auth_bus.close()
    await admin.close()
    server.stop()


async def connect_job(server, project: str, job: str, password: str | None) -> Bus:
    return await Bus.connect(BusConfig(url=server.url, user=job_user(project, job), password=password, name=f"t-{job}"), reconnect=False, timeout=15)


async def test_a_job_with_its_key_is_admitted_and_a_forged_or_absent_key_is_not(lab):
    server, _, keys = lab
    bus = await connect_job(server, "p1", "j1", keys.key("p1", "j1"))
    await bus.close()
    for password in (None, "0" * 64, keys.key("p1", "j2"), keys.key("p2", "j1")):
        with pytest.raises(ConnectError, match="refused"):
            await connect_job(server, "p1", "j1", password)
    with pytest.raises(ConnectError, match="refused"):  # not a job name, not a static user: the callout says no
        await Bus.connect(BusConfig(url=server.url, user="stranger", password=keys.key("p1", "j1")), reconnect=False, timeout=15)
    # The static users still log in as before, without the callout.
    static = await Bus.connect(config_for(server, "engineer"), reconnect=False)
    await static.close()


def status(job: str, project: str = "p1") -> Envelope:
    return Envelope(id=f"s-{project}-{job}", project=project, sender="runner", recipient="engineer",
                    body=JobStatus(job_id=job, experiment_id="e1", state="running"))


async def test_a_job_publishes_on_its_own_subjects_only(lab):
    server, admin, keys = lab
    bus = await connect_job(server, "p1", "j1", keys.key("p1", "j1"))
    try:
        await bus.publish_job(subjects.job_status("p1", "j1"), status("j1"))  # acked by the stream, or it raises
        await bus.nc.publish(subjects.job_log("p1", "j1"), b'{"line": "ok"}')
        js = bus.nc.jetstream(timeout=REFUSED_S)
        for subject, env in ((subjects.job_status("p2", "j9"), status("j9", "p2")), (subjects.job_status("p1", "j2"), status("j2"))):
            with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error)):
                await js.publish(subject, env.model_dump_json().encode())
        await bus.nc.publish(subjects.job_log("p2", "j9"), b'{"line": "noise"}')
        await bus.nc.publish(subjects.convo("p1", "engineer", "pi"), b"{}")
        await bus.nc.flush()
        await asyncio.sleep(0.3)
        assert any("j9" in e and "ermission" in e for e in bus.errors)
        assert any("lab.convo" in e for e in bus.errors)
    finally:
        await bus.close()
    held = (await admin.js.stream_info(subjects.JOBS_STREAM, subjects_filter="lab.jobs.>")).state.subjects or {}
    assert set(held) == {subjects.job_status("p1", "j1"), subjects.job_log("p1", "j1")}


async def test_a_job_reads_artifacts_and_writes_only_its_own_projects(lab):
    server, admin, keys = lab
    shared = await Artifacts.open(admin)
    await shared.put("p1/bundles/t.tar.gz", b"bundle")
    await shared.put("p2/paper.pdf", b"%PDF p2")
    bus = await connect_job(server, "p1", "j1", keys.key("p1", "j1"))
    try:
        mine = await Artifacts.open_for_job(bus, "lab.files.p1.j1", chunk_prefix("p1", "j1"))
        assert await mine.get("p1/bundles/t.tar.gz") == b"bundle"
        big = bytes(range(256)) * 2000  # several chunks
        assert await mine.put("p1/runs/j1/log.txt", big) == "p1/runs/j1/log.txt"
        assert await mine.put("p1/runs/j1/log.txt", big) == "p1/runs/j1/log.txt"  # same bytes: nothing new
        assert await mine.put("p1/runs/j1/log.txt", b"other") == "p1/runs/j1/log~2.txt"
        assert await shared.get("p1/runs/j1/log.txt") == b"other"  # the latest version
        assert (await shared.obs.get("p1/runs/j1/log.txt")).data == big  # the first, exactly as written
        with pytest.raises(CommitRefused, match="only names under p1/"):
            await mine.put("p2/paper.pdf", b"forged")
        # The raw object-store API (nats-py's own put) cannot write a meta record at all.
        js = bus.nc.jetstream(timeout=REFUSED_S)
        obs = await js.object_store("lab_artifacts")
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error)):
            await obs.put("p2/paper.pdf", b"forged")
        # Nor may it ask for another job's commits: its commit subject is its own.
        with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
            await bus.nc.request("lab.files.p2.j9", json.dumps({"name": "p2/x"}).encode(), timeout=REFUSED_S)
        # An object whose name already holds other bytes is not replaced through the service either.
        info = await mine.obs.put("p1/runs/j1/log.txt", b"replace")  # bypass Artifacts' versioning
    except CommitRefused as e:
        assert "never replaced" in str(e)
    else:
        raise AssertionError(f"replacing an object was committed: {info}")
    finally:
        await bus.close()
    assert await shared.get("p2/paper.pdf") == b"%PDF p2"
    assert (await shared.obs.get("p1/runs/j1/log.txt")).data == big


async def test_a_commit_must_name_chunks_that_are_there(lab):
    server, admin, keys = lab
    bus = await connect_job(server, "p1", "j1", keys.key("p1", "j1"))
    try:
        info = {"name": "p1/runs/j1/x.json", "bucket": "lab_artifacts", "nuid": "p1.j1.NOSUCHNUID", "size": 3, "chunks": 1,
                "digest": "SHA-256=abc", "mtime": "2026-01-01T00:00:00+00:00"}
        reply = json.loads((await bus.nc.request("lab.files.p1.j1", json.dumps(info).encode(), timeout=15)).data)
        assert "1 chunks announced, 0 stored" in reply["error"]
        reply = json.loads((await bus.nc.request("lab.files.p1.j1", b"not json", timeout=15)).data)
        assert "error" in reply
    finally:
        await bus.close()
    assert await (await Artifacts.open(admin)).list("p1/") == []


# ---------------------------------------------------------------- how the engineer and the runner use it

def spec(job: str = "j1", project: str = "p1") -> JobSpec:
    return JobSpec(job_id=job, project=project, experiment_id="e1", template="t", bundle_object="p1/b.tar.gz", seeds=[0],
                   wall_time_s=60, memory_mb=256)


async def test_the_engineer_gives_each_job_its_own_user_only_in_callout_mode():
    secret = new_secret()
    executor = RecordingExecutor()
    jobs = ExecutorJobs(executor, NatsAccess(url="nats://x:4222", user=JOB_USER), secret)
    await jobs.submit(spec("j1"))
    await jobs.submit(spec("j2", "p2"))
    key = JobKeys(secret).key
    assert [(j.nats.user, j.nats.password) for j in executor.submitted] == [("job.p1.j1", key("p1", "j1")), ("job.p2.j2", key("p2", "j2"))]
    assert all(j.status_key == j.nats.password for j in executor.submitted)
    shared = RecordingExecutor()
    await ExecutorJobs(shared, NatsAccess(url="nats://x:4222", user="runner", password="pw"), secret).submit(spec())
    assert (shared.submitted[0].nats.user, shared.submitted[0].nats.password) == ("runner", "pw")


def test_a_runner_with_its_own_user_ignores_a_mounted_shared_credential(monkeypatch):
    monkeypatch.setenv("LAB_NATS_USER", "runner")
    monkeypatch.setenv("LAB_NATS_PASSWORD", "shared")
    assert Runner.credential(NatsAccess(url="nats://x", user="job.p1.j1", password="k")) == ("job.p1.j1", "k")
    assert Runner.credential(NatsAccess(url="nats://x", user=None, password=None)) == ("runner", "shared")


async def test_a_job_writes_only_its_own_chunks_and_commits_only_them(lab):
    """Another object's chunks (their nuid is in its readable meta) can be neither appended to nor rolled up, nor committed."""
    server, admin, keys = lab
    shared = await Artifacts.open(admin)
    await shared.put("p2/paper.pdf", b"%PDF p2")
    theirs = (await shared.obs.get_info("p2/paper.pdf")).nuid
    bus = await connect_job(server, "p1", "j1", keys.key("p1", "j1"))
    try:
        js = bus.nc.jetstream(timeout=REFUSED_S)
        for headers in (None, {"Nats-Rollup": "sub"}):
            with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error)):
                await js.publish(f"$O.lab_artifacts.C.{theirs}", b"garbage", headers=headers)
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error)):
            await js.publish("$O.lab_artifacts.C.p1.j2.NUID", b"another job's prefix")
        # A commit naming chunks outside its own prefix (here the other project's object's) is refused.
        info = {"name": "p1/runs/j1/copy.pdf", "bucket": "lab_artifacts", "nuid": theirs, "size": 7, "chunks": 1,
                "digest": "SHA-256=abc", "mtime": "2026-01-01T00:00:00+00:00"}
        reply = json.loads((await bus.nc.request("lab.files.p1.j1", json.dumps(info).encode(), timeout=15)).data)
        assert "must be the job's own" in reply["error"]
    finally:
        await bus.close()
    assert await shared.get("p2/paper.pdf") == b"%PDF p2"
    assert await shared.list("p1/") == []
