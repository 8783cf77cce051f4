"""The bus holds against the co-PI's, a role's and the runner's own credentials: each attempt is refused and the lab keeps working."""

from __future__ import annotations

import json

import nats
import pytest

from bus import partitions, subjects
from bus.client import Bus
from bus.consumer import consumer_config, pull
from bus.ledger import LEDGER_KEY
from bus.replay import read
from bus.schema import CoPINote, CoPINoteMsg, Envelope
from bus.schema.constants import ARTIFACTS_BUCKET
from bus.store import Artifacts, StateStore
from tests.conftest import config_for

REFUSED_S = 1.5  # a refused JetStream API request gets no answer; wait this long, not the default 10 s


async def refused(coro) -> bool:
    try:
        await coro
    except (nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error):
        return True
    return False


async def lab_still_whole(admin: Bus) -> None:
    """Every stream, bucket and durable an attack went for is still there, as it was."""
    names = {s.config.name for s in await admin.js.streams_info()}
    assert {"LAB_CONVO", "LAB_JOBS", "KV_lab_state", "OBJ_lab_artifacts"} <= names
    for stream, durable, f in partitions.consumers("pi"):
        config = (await admin.js.consumer_info(stream, durable)).config
        assert (config.filter_subject, config.filter_subjects) == (f, None)
    assert await (await Artifacts.open(admin)).get("p1/paper.pdf") == b"%PDF-1.5 paper"
    doc, _ = await StateStore(await admin.js.key_value("lab_state")).read("pi.p1")
    assert doc == {"state": {"stage": "draft"}}


@pytest.fixture
async def lab(admin_bus):
    """A lab with a role durable, a state document and an artifact worth attacking."""
    for stream, durable, f in partitions.consumers("pi"):
        await admin_bus.js.add_consumer(stream, config=consumer_config(durable, f))
    await (await Artifacts.open(admin_bus)).put("p1/paper.pdf", b"%PDF-1.5 paper")
    states = StateStore(await admin_bus.js.key_value("lab_state"))
    await states.write("pi.p1", {"state": {"stage": "draft"}}, 0)
    return admin_bus


async def connect(server, user: str) -> tuple[Bus, nats.js.JetStreamContext]:
    bus = await Bus.connect(config_for(server, user), reconnect=False)
    return bus, bus.nc.jetstream(timeout=REFUSED_S)


async def test_the_copi_may_note_start_and_read_but_not_destroy(lab, nats_server):
    copi, js = await connect(nats_server, "copi")
    try:
        assert await refused(js.delete_stream(subjects.CONVO_STREAM))
        assert await refused(js.delete_stream(subjects.JOBS_STREAM))
        assert await refused(js.delete_key_value("lab_state"))
        assert await refused(js.purge_stream("OBJ_lab_artifacts"))
        assert await refused(js.delete_object_store(ARTIFACTS_BUCKET))
        assert await refused((await js.key_value("lab_state")).put("pi.p1", b'{"state": {"stage": "decision"}}'))
        assert await refused(js.delete_consumer("LAB_WORK_PI", "role-pi-p00"))
        # A durable of its own on a role's work stream, or re-filtering the PI's, to read (and divert) its mail.
        assert await refused(js.add_consumer("LAB_WORK_PI", config=consumer_config("role-pi-p00", "lab.work.pi.>")))
        assert await refused(js.add_consumer("LAB_WORK_PI", config=consumer_config("copi", "lab.work.pi.>")))
        await lab_still_whole(lab)
        # What the co-PI is for still works.
        await copi.publish(Envelope(project="p1", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n1", text="try a smaller lr"))))
        assert [e.envelope.body.note.text async for e in read(copi)] == ["try a smaller lr"]
        art = await Artifacts.open(copi)
        assert await art.get("p1/paper.pdf") == b"%PDF-1.5 paper"
        await art.put("p2/template.tar.gz", b"bundle")
        doc, _ = await StateStore(await copi.js.key_value("lab_state")).read("pi.p1")
        assert doc == {"state": {"stage": "draft"}}
    finally:
        await copi.close()


async def test_the_copi_writes_no_state_not_even_the_capacity_ledger(lab, nats_server):
    """`lab evolve` is a project the engineer schedules, so no co-PI takes capacity: the ledger is the engineers' alone.

    Before evolve ran through the engineer, the co-PI could write the ledger key, and so could forge holds that
    starve every project (or clear the engineers' own)."""
    copi, js = await connect(nats_server, "copi")
    try:
        kv = await js.key_value("lab_state")
        assert await refused(kv.put(LEDGER_KEY, b'{"held": {}, "waiting": {}}'))
        # Another engineer key (a project's state), a key next to the ledger's, or a wildcard's worth: refused.
        assert await refused(kv.put("engineer.p1", b'{"state": {}}'))
        assert await refused(kv.put("engineer._capacity2", b"{}"))
        assert await refused(kv.put("engineer._capacity.x", b"{}"))
        assert await refused(kv.put("pi.p1", b'{"state": {"stage": "decision"}}'))
        admin_states = StateStore(await lab.js.key_value("lab_state"))
        assert [k for k in await admin_states.keys("engineer.") if k != LEDGER_KEY] == []
        await lab_still_whole(lab)
    finally:
        await copi.close()


@pytest.mark.parametrize("user", ["analyst", "runner"])
async def test_a_role_or_the_runner_cannot_delete_streams_or_buckets(lab, nats_server, user):
    bus, js = await connect(nats_server, user)
    try:
        assert await refused(js.delete_stream(subjects.CONVO_STREAM))
        assert await refused(js.delete_key_value("lab_state"))
        assert await refused(js.delete_object_store(ARTIFACTS_BUCKET))
        assert await refused(js.purge_stream("OBJ_lab_artifacts"))
        assert await refused(js.purge_stream("OBJ_lab_artifacts", subject="$O.lab_artifacts.C.>"))
        assert await refused(js.delete_consumer("LAB_WORK_PI", "role-pi-p00"))
        await lab_still_whole(lab)
        # Writing the paper's name again adds a version; the paper itself is untouched.
        art = await Artifacts.open(bus)
        assert await art.put("p1/paper.pdf", b"%PDF forged") == "p1/paper~2.pdf"
        assert (await (await Artifacts.open(lab)).obs.get("p1/paper.pdf")).data == b"%PDF-1.5 paper"
    finally:
        await bus.close()


async def test_a_role_cannot_forge_a_job_status(lab, nats_server):
    analyst, js = await connect(nats_server, "analyst")
    try:
        assert await refused(js.publish(subjects.job_status("p1", "j1"), b'{"state": "succeeded"}', timeout=REFUSED_S))
    finally:
        await analyst.close()
    info = await lab.js.stream_info(subjects.JOBS_STREAM)
    assert info.state.messages == 0


def test_the_host_checks_the_sender_on_job_subjects_too():
    from bus.schema import JobStatus
    from services.host.wiring import envelope_mismatch

    def status(sender: str, project: str = "p1", job: str = "j1") -> Envelope:
        return Envelope(project=project, sender=sender, recipient="engineer", body=JobStatus(job_id=job, experiment_id="x", state="succeeded"))

    subject = subjects.job_status("p1", "j1")
    assert envelope_mismatch(subject, status("runner")) is None
    assert envelope_mismatch(subject, status("engineer")) is None
    assert "does not match" in envelope_mismatch(subject, status("analyst"))
    assert "does not match" in envelope_mismatch(subject, status("runner", project="p2"))
    assert "does not match" in envelope_mismatch(subject, status("runner", job="j2"))
    assert "but came on" in envelope_mismatch(subjects.convo("p1", "pi", "engineer"), status("runner"))


async def test_a_role_cannot_re_filter_its_own_durable(lab, nats_server):
    """The PI's own credential creates its partition durables with their one filter; any other filter, or several, is refused."""
    pi, js = await connect(nats_server, "pi")
    stream, durable, own = partitions.consumers("pi")[0]
    try:
        wide = consumer_config(durable, "lab.work.pi.>")
        assert await refused(js.add_consumer(stream, config=wide))
        several = consumer_config(durable, own)
        several.filter_subject, several.filter_subjects = None, [own, "lab.work.pi.1.>"]
        assert await refused(js.add_consumer(stream, config=several))
        # The filter named in the create subject, but a wider one in the request: the server refuses it.
        req = {"stream_name": stream, "config": wide.as_dict()}
        reply = await pi.nc.request(f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{own}", json.dumps(req).encode(), timeout=REFUSED_S)
        assert "did not match filtered subject" in json.loads(reply.data)["error"]["description"]
        # The legacy and subject-less creates carry no filter: not allowed at all.
        for subject in (f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}", f"$JS.API.CONSUMER.CREATE.{stream}.{durable}"):
            assert await refused(pi.nc.request(subject, json.dumps(req).encode(), timeout=REFUSED_S))
        # Another role's work stream, or the conversation itself: no durable of the PI's there.
        eng_stream, eng_durable, eng_filter = partitions.consumers("engineer")[0]
        assert await refused(js.add_consumer(eng_stream, config=consumer_config(eng_durable, eng_filter)))
        assert await refused(js.add_consumer(subjects.CONVO_STREAM, config=consumer_config("role-pi", "lab.convo.*.*.pi")))
        await lab_still_whole(lab)
        # What the PI is for still works: its durables, bound, pulled and acked with its own credential.
        await lab.publish(Envelope(project="p1", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n1", text="hi"))))
        await lab.publish(Envelope(project="p1", sender="copi", recipient="engineer", body=CoPINoteMsg(note=CoPINote(id="n2", text="not for the pi"))))
        got = []
        sub = await pull(pi, *partitions.consumers("pi")[partitions.partition("p1")])
        try:
            for msg in await sub.fetch(5, timeout=2):
                got.append(partitions.origin(msg.subject))
                await msg.ack_sync()
        except TimeoutError:  # nats-py raises asyncio's (or its own subclass of it) when fewer than 5 came
            pass
        assert got == [subjects.convo("p1", "copi", "pi")]
    finally:
        await pi.close()


async def test_a_durable_left_with_two_filters_is_narrowed_in_place(admin_bus, nats_server):
    """A partition durable left with several filters becomes the one-filter durable on start, keeping its place."""
    stream, durable, f = partitions.consumers("pi")[0]
    old = consumer_config(durable, "x")
    old.filter_subject, old.filter_subjects = None, [f, "lab.work.pi.1.>"]
    await admin_bus.js.add_consumer(stream, config=old)
    pi = await Bus.connect(config_for(nats_server, "pi"))
    try:
        await pull(pi, stream, durable, f)
        config = (await admin_bus.js.consumer_info(stream, durable)).config
        assert (config.filter_subject, config.filter_subjects) == (f, None)
    finally:
        await pi.close()


async def test_the_result_cache_is_the_engineers_alone(lab, nats_server):
    """The engineer claims, stores, reads and deletes cache entries as itself; another role or a runner can forge none."""
    from bus.resultcache import ResultCache
    from bus.schema import JobStatus

    engineer, ejs = await connect(nats_server, "engineer")
    try:
        cache = ResultCache(await ejs.key_value("lab_results"))
        assert (await cache.claim("k1", "p1/x01/j1", "p1/x01/", stale_after_s=60)).kind == "run"
        assert (await cache.lookup("k1", "p2/x01/")).kind == "wait"
        await cache.release("k1", "p1/x01/")
        assert (await cache.read("k1"))[0] is None
        await cache.store_result("k2", "p1/x01/j1", JobStatus(job_id="j1", experiment_id="x01", state="succeeded"))
        assert (await cache.lookup("k2", "p2/x01/")).kind == "hit"
    finally:
        await engineer.close()
    for user in ("analyst", "runner"):
        bus, js = await connect(nats_server, user)
        try:
            assert await refused(js.publish("$KV.lab_results.k2", b'{"state": "done"}'))
            assert await refused(js.publish("$KV.lab_results.k3", b'{"state": "done"}'))
            if user != "runner":  # a role may see the bucket exists (it creates the lab's streams), never read an entry
                assert await refused((await js.key_value("lab_results")).get("k2"))
        finally:
            await bus.close()
    entry, _ = await ResultCache(await lab.js.key_value("lab_results")).read("k2")
    assert entry is not None and entry.owner == "p1/x01/j1"
