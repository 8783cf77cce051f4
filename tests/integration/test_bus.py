"""The bus against a real nats-server: round trips, dead letters, permissions, de-duplication."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from bus import partitions, subjects
from bus.client import MAX_ENVELOPE_BYTES, Bus
from bus.consumer import messages, pull
from bus.errors import InvalidToken, MessageTooLarge, StateConflict
from bus.schema import (
    MESSAGE_KINDS,
    AnalysisReport,
    Budget,
    Comparison,
    CoPINote,
    CoPINoteMsg,
    DraftReady,
    Envelope,
    FinalInfo,
    Idea,
    MetaReview,
    MetricStat,
    Review,
    ReviewScores,
    RevisionItem,
    RunRecord,
    decode,
)
from bus.store import Artifacts, StateStore
from tests.conftest import config_for
from tests.fakes import TOY_SPEC

IDEA = Idea(id="wd-0p1", title="t", hypothesis="h", falsification="f", changes={"weight_decay": 0.1})
FI = FinalInfo(metrics={"val_acc": MetricStat(mean=0.9, stderr=0.01, values=[0.89, 0.9, 0.91])}, seeds=[0, 1, 2])
RUN = RunRecord(job_id="j1", experiment_id="x01-baseline", idea_id="baseline", overrides={}, seeds=[0, 1, 2], status="succeeded", final_info=FI)
COMP = Comparison(
    idea_id="wd-0p1", metric="val_acc", direction="higher", baseline_mean=0.9, baseline_stderr=0.01, idea_mean=0.95,
    idea_stderr=0.01, n_baseline=3, n_idea=3, diff=0.05, improvement=0.05, ci_low=0.01, ci_high=0.09, p_value=0.02,
    effect_size=1.5, better=True, verdict="better",
)
REPORT = AnalysisReport(project="p1", primary_metric="val_acc", comparisons=[COMP], runs=[RUN])
DRAFT = DraftReady(round=0, tex="p1/paper.tex", markdown="p1/paper.md", bib="p1/references.bib")
SCORES = ReviewScores(originality=2, quality=3, clarity=3, significance=2, soundness=3, presentation=3, contribution=2, overall=6, confidence=3)
REVIEW = Review(reviewer="r0", summary="s", strengths=["a"], weaknesses=["b"], questions=[], limitations="l", ethics="none", scores=SCORES, decision="accept")
ITEM = RevisionItem(id="r0-1", kind="more_seeds", text="more seeds", target="wd-0p1")


def example_bodies() -> list[dict]:
    """One valid body of every kind."""
    return [
        {"type": "start_project", "template": "grokking", "template_object": "p1/template.tar.gz", "spec": TOY_SPEC, "budget": Budget().model_dump()},
        {"type": "copi_note", "note": CoPINote(id="n1", text="only vary weight decay").model_dump()},
        {"type": "note_ack", "note_id": "n1", "understood": "ok"},
        {"type": "novelty_check", "idea": IDEA.model_dump(), "template": "grokking"},
        {"type": "novelty_verdict", "idea_id": "wd-0p1", "novel": True, "justification": "none found"},
        {"type": "reference_search", "item_id": "r0-1", "queries": ["grokking"], "known": ["power2022grokking"]},
        {"type": "references_found", "item_id": "r0-1", "references": [], "reason": "nothing new"},
        {"type": "experiment_request", "experiment_id": "x01", "seeds": [0, 1, 2], "template": "grokking", "template_object": "o", "spec": TOY_SPEC},
        {"type": "experiment_planned", "experiment_id": "x01", "idea_id": "baseline", "overrides": {}, "job_ids": ["j1"]},
        {"type": "experiment_result", "experiment_id": "x01", "idea_id": "baseline", "runs": [RUN.model_dump()]},
        {"type": "job_status", "job_id": "j1", "experiment_id": "x01", "state": "running"},
        {"type": "analysis_request", "round": 0, "spec": TOY_SPEC, "runs": [RUN.model_dump()]},
        {"type": "analysis_done", "report": REPORT.model_dump()},
        {"type": "draft_request", "round": 0, "spec": TOY_SPEC, "direction": "", "ideas": [IDEA.model_dump()], "report": REPORT.model_dump(), "references": []},
        {"type": "draft_ready", **DRAFT.model_dump()},
        {"type": "review_request", "round": 0, "draft": DRAFT.model_dump(), "report": REPORT.model_dump(), "references": []},
        {"type": "review_done", "round": 0, "reviews": [REVIEW.model_dump()],
         "meta": MetaReview(summary="m", overall=6, decision="revise", revision_items=[ITEM]).model_dump()},
        {"type": "rebuttal", "round": 0, "responses": [{"item_id": "r0-1", "action": "act", "text": "running"}]},
        {"type": "decision", "accepted": True, "reason": "good", "rounds": 1},
        {"type": "step_failed", "step": "experiment", "reason": "boom"},
        {"type": "usage_report", "usage": {"prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.1}},
        {"type": "project_estimate", "estimate": {"runs": 12, "job_s": 60.0, "job_s_from": "the time budget of profile gpu, an upper bound",
                                                  "gpus_per_job": 1, "cpus_per_job": 1.0, "gpu_hours": 0.2, "cpu_hours": 0.2,
                                                  "needs_approval": True, "why": "0.20 GPU-h is over the lab's approval threshold"}},
        {"type": "project_approval", "approved": False, "reason": "no GPUs this week"},
    ]


def test_every_kind_has_an_example():
    assert sorted(b["type"] for b in example_bodies()) == sorted(MESSAGE_KINDS)


def test_subject_tokens_are_validated():
    assert subjects.convo("p-1", "pi", "all") == "lab.convo.p-1.pi.all"
    for bad in ("a.b", "*", ">", "a b", "", "x\ty"):
        with pytest.raises(InvalidToken):
            subjects.convo(bad, "pi", "all")


async def _partition(admin: Bus, role: str, project: str) -> int:
    """The partition NATS put a project in (``partition(16, project)``), read from the role's work stream's subjects."""
    for _ in range(50):  # the copy from the conversation stream is asynchronous
        info = await admin.js.stream_info(partitions.work_stream(role), subjects_filter=f"lab.work.{role}.*.*.{project}.>")
        if info.state.subjects:
            [part] = {partitions.partition_of(s) for s in info.state.subjects}
            assert part is not None
            return part
        await asyncio.sleep(0.1)
    raise AssertionError(f"no message of {project} reached {partitions.work_stream(role)}")


async def test_the_server_s_partitions_are_the_ones_the_lab_computes(admin_bus):
    """NATS's partition() mapping (the authority) and bus.partitions.partition agree, so the bench finds its durables."""
    projects = [f"proj-{i}" for i in range(24)] + ["a", "grokking-s1-aaaaaa"]
    for p in projects:
        await admin_bus.publish(Envelope(project=p, sender="copi", recipient="all", body=CoPINoteMsg(note=CoPINote(id="n", text="x"))))
    got = {p: await _partition(admin_bus, "writer", p) for p in projects}
    assert got == {p: partitions.partition(p) for p in projects}
    assert len(set(got.values())) > 8  # spread over the partitions


async def test_every_kind_round_trips(admin_bus, nats_server):
    """Each kind, published by the right role, arrives intact at its recipient's consumer."""
    sent = []
    for i, body in enumerate(example_bodies()):
        env = Envelope.model_validate({"project": "p1", "sender": "copi", "recipient": "analyst", "body": body, "id": f"m{i:02d}"})
        await admin_bus.publish(env)
        sent.append(env)
    reader = await Bus.connect(config_for(nats_server, "analyst"))
    # The analyst reads its work stream; every message of project p1 is in one partition, in the order sent.
    stream, durable, f = partitions.consumers("analyst")[partitions.partition("p1")]
    sub = await pull(reader, stream, durable, f)
    got = []
    stop = asyncio.Event()
    async for msg in messages(sub, stop, wait=0.5):
        got.append(decode(msg.data))
        await msg.ack()
        if len(got) == len(sent):
            stop.set()
    await reader.close()
    assert [g.model_dump() for g in got] == [s.model_dump() for s in sent]


async def test_duplicate_ids_are_dropped(admin_bus):
    env = Envelope(project="p1", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n", text="x")))
    for _ in range(3):
        await admin_bus.publish(env)
    info = await admin_bus.js.stream_info(subjects.CONVO_STREAM)
    assert info.state.messages == 1


async def test_publish_many_sends_all_once(admin_bus):
    envs = [Envelope(id=f"b{i}", project="p1", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id=f"n{i}", text="x"))) for i in range(5)]
    await admin_bus.publish_many(envs)
    await admin_bus.publish_many(envs)  # a redelivered handler republishes: dropped as duplicates
    info = await admin_bus.js.stream_info(subjects.CONVO_STREAM)
    assert info.state.messages == 5


async def test_oversized_envelope_is_refused_on_send(admin_bus):
    env = Envelope(project="p1", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n", text="x" * (MAX_ENVELOPE_BYTES + 10))))
    with pytest.raises(MessageTooLarge):
        await admin_bus.publish(env)


async def test_a_role_cannot_publish_as_another(admin_bus, nats_server):
    pi = await Bus.connect(config_for(nats_server, "pi"))
    env = Envelope(project="p1", sender="engineer", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n", text="spoof")))
    with pytest.raises(TimeoutError):  # the server drops a denied publish: no PubAck comes
        await asyncio.wait_for(pi.publish(env), 3)
    await asyncio.sleep(0.2)
    assert any("permissions violation" in e.lower() for e in pi.errors)
    # Speaking as itself works.
    ok = Envelope(project="p1", sender="pi", recipient="engineer", body=CoPINoteMsg(note=CoPINote(id="n", text="fine")))
    await pi.publish(ok)
    await pi.close()
    info = await admin_bus.js.stream_info(subjects.CONVO_STREAM)
    assert info.state.messages == 1


async def test_state_compare_and_set(admin_bus):
    states = await StateStore.open(admin_bus)
    rev = await states.write("pi.p1", {"stage": "ideas"}, 0)
    rev2 = await states.write("pi.p1", {"stage": "experiments"}, rev)
    with pytest.raises(StateConflict):
        await states.write("pi.p1", {"stage": "lost update"}, rev)
    doc, now = await states.read("pi.p1")
    assert doc == {"stage": "experiments"} and now == rev2


async def test_artifacts_round_trip(admin_bus):
    art = await Artifacts.open(admin_bus)
    data = bytes(range(256)) * 1000
    await art.put("p1/runs/j1/final_info.json", data)
    assert await art.get("p1/runs/j1/final_info.json") == data
    assert await art.list("p1/runs/") == ["p1/runs/j1/final_info.json"]


async def test_artifacts_are_write_once_a_new_write_is_a_new_version(admin_bus, nats_server):
    """Writing a name again never replaces it (nothing to purge): a role's credential writes the next version."""
    writer = await Bus.connect(config_for(nats_server, "writer"))
    art = await Artifacts.open(writer)
    assert await art.put("p1/draft/paper.tex", b"round 1") == "p1/draft/paper.tex"
    assert await art.put("p1/draft/paper.tex", b"round 1") == "p1/draft/paper.tex"  # same bytes again: nothing written
    assert await art.put("p1/draft/paper.tex", b"round 2") == "p1/draft/paper~2.tex"
    assert await art.put("p1/figures/acc.tar.gz", b"x") == "p1/figures/acc.tar.gz"
    assert await art.put("p1/figures/acc.tar.gz", b"y") == "p1/figures/acc~2.tar.gz"
    assert await art.get("p1/draft/paper.tex") == b"round 2"  # the latest
    assert await art.get("p1/draft/paper~2.tex") == b"round 2"
    assert await art.get("p1/figures/acc.tar.gz") == b"y"
    assert await art.list("p1/") == ["p1/draft/paper.tex", "p1/figures/acc.tar.gz"]
    admin = await Artifacts.open(admin_bus)
    assert (await admin.obs.get("p1/draft/paper.tex")).data == b"round 1"  # the first version is still whole
    with pytest.raises(ValueError):
        await art.put("p1/draft/paper~3.tex", b"forged version")
    await writer.close()


async def _dlq_records(bus: Bus, n: int) -> list[dict]:
    sub = await bus.js.pull_subscribe("lab.dlq.>", stream=subjects.DLQ_STREAM)
    out = []
    for _ in range(20):
        try:
            for m in await sub.fetch(n - len(out), timeout=1):
                out.append(json.loads(m.data))
                await m.ack()
        except Exception:
            pass
        if len(out) >= n:
            break
    return out


async def test_bad_messages_go_to_the_dead_letter_subject(admin_bus, nats_server, tmp_path):
    """Malformed JSON, an unknown kind, a spoofed sender and an oversized message each end in lab.dlq.pi with a reason."""
    from services.host.agent import AgentHost

    host = AgentHost("pi", config_for(nats_server, "pi"), home=tmp_path)
    js = admin_bus.js
    good_note = Envelope(project="p1", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n", text="x")))
    spoof = good_note.model_copy(update={"sender": "engineer", "id": "spoof"})
    await js.publish("lab.convo.p1.copi.pi", b"{not json")
    await js.publish("lab.convo.p1.copi.pi", json.dumps({**json.loads(good_note.model_dump_json()), "id": "u1", "body": {"type": "make_coffee"}}).encode())
    await js.publish("lab.convo.p1.copi.pi", spoof.model_dump_json().encode())
    await js.publish("lab.convo.p1.copi.pi", b" " * (MAX_ENVELOPE_BYTES + 100))
    runner = asyncio.create_task(host.run())
    records = await _dlq_records(admin_bus, 4)
    host.stop.set()
    await runner
    reasons = [r["reason"] for r in records]
    assert len(records) == 4, reasons
    assert "invalid message" in reasons[0]
    assert "make_coffee" in reasons[1] or "does not match" in reasons[1] or "tag" in reasons[1]
    assert "came on lab.convo.p1.copi.pi" in reasons[2]
    assert "exceeds the limit" in reasons[3]
    assert base64.b64decode(records[0]["data_b64"]) == b"{not json"
    assert all(r["role"] == "pi" and r["subject"] == "lab.convo.p1.copi.pi" for r in records)
    # Nothing is lost from the conversation: the stream still holds all four.
    assert (await js.stream_info(subjects.CONVO_STREAM)).state.messages == 4


async def test_a_message_whose_handler_keeps_failing_ends_in_the_dead_letters(admin_bus, nats_server, tmp_path, monkeypatch):
    """After MaxDeliver failed attempts the message is parked with the reason, not retried forever."""
    import services.host.agent as host_module
    from bus.consumer import MAX_DELIVER
    from services.host.agent import AgentHost

    monkeypatch.setattr(host_module, "retry_delay", lambda delivered: 0.1)
    host = AgentHost("analyst", config_for(nats_server, "analyst"), home=tmp_path)
    calls = []

    async def broken(env, ctx):
        calls.append(env.id)
        raise RuntimeError("disk full")

    monkeypatch.setattr(host.role, "handle", broken)
    # From a sender allowed to send it (bus.permissions.SENDERS): the host dispatches it, and the handler fails.
    env = Envelope.model_validate({"project": "p1", "sender": "engineer", "recipient": "analyst", "body": example_bodies()[9]})
    await admin_bus.publish(env)
    runner = asyncio.create_task(host.run())
    records = await _dlq_records(admin_bus, 1)
    host.stop.set()
    await runner
    assert len(calls) == MAX_DELIVER
    assert records[0]["reason"] == f"handler failed {MAX_DELIVER} times: RuntimeError: disk full"
    assert records[0]["num_delivered"] == MAX_DELIVER


async def test_a_note_for_a_project_the_pi_never_started_is_dead_lettered_at_once(admin_bus, nats_server, tmp_path):
    from services.host.agent import AgentHost

    host = AgentHost("pi", config_for(nats_server, "pi"), home=tmp_path)
    await admin_bus.publish(Envelope(project="ghost", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n", text="hi"))))
    runner = asyncio.create_task(host.run())
    records = await _dlq_records(admin_bus, 1)
    host.stop.set()
    await runner
    assert records[0]["num_delivered"] == 1 and "no project 'ghost'" in records[0]["reason"]


async def test_a_job_runner_reaches_only_artifacts_and_job_subjects(admin_bus, nats_server):
    """The runner's credential can store results and report status, but not read the conversation or write state."""
    runner = await Bus.connect(config_for(nats_server, "runner"))
    art = await Artifacts.open(runner)
    await art.put("p1/runs/j1/final_info.json", b"{}")
    assert await art.get("p1/runs/j1/final_info.json") == b"{}"
    await runner.js.publish(subjects.job_status("p1", "j1"), b"{}")
    # A denied request goes unanswered: a timeout (the bus's own BusTimeout is one too).
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(runner.js.pull_subscribe("lab.convo.>", stream=subjects.CONVO_STREAM), 3)
    with pytest.raises(TimeoutError):
        states = await StateStore.open(runner)
        await asyncio.wait_for(states.write("pi.p1", {"stage": "hijacked"}, 0), 3)
    await runner.close()
    doc, _ = await (await StateStore.open(admin_bus)).read("pi.p1")
    assert doc is None


async def test_a_role_reads_only_its_own_consumer_and_state(admin_bus, nats_server):
    """The engineer can use its own consumer, keys and acks, but not read the PI's messages or state."""
    eng = await Bus.connect(config_for(nats_server, "engineer"))
    states = await StateStore.open(eng)
    rev = await states.write("engineer.p1", {"jobs": 1}, 0)
    assert await states.read("engineer.p1") == ({"jobs": 1}, rev)
    assert await states.keys("engineer.") == ["engineer.p1"]
    await (await StateStore.open(admin_bus)).write("pi.p1", {"stage": "draft"}, 0)
    for attempt in (
        states.read("pi.p1"),
        states.write("pi.p1", {"stage": "hijacked"}, 1),
        states.keys("pi."),
        pull(eng, *partitions.consumers("pi")[0]),
        pull(eng, subjects.CONVO_STREAM, "role-engineer", subjects.convo_for("engineer")[0]),
        eng.js.pull_subscribe("lab.convo.>", stream=subjects.CONVO_STREAM),
    ):
        with pytest.raises(TimeoutError):  # denied: unanswered
            await asyncio.wait_for(attempt, 3)
    # Its own conversation consumer works, acks included.
    await admin_bus.publish(Envelope(project="p1", sender="copi", recipient="engineer", body=CoPINoteMsg(note=CoPINote(id="n", text="x"))))
    stream, durable, f = partitions.consumers("engineer")[partitions.partition("p1")]
    sub = await pull(eng, stream, durable, f)
    msg = (await sub.fetch(1, timeout=3))[0]
    assert partitions.origin(msg.subject) == subjects.convo("p1", "copi", "engineer")
    await msg.ack_sync()
    await eng.close()
    assert (await admin_bus.js.consumer_info(stream, durable)).num_ack_pending == 0
    assert (await (await StateStore.open(admin_bus)).read("pi.p1"))[0] == {"stage": "draft"}
