"""Who may say what: one table of allowed senders per message kind, checked against the subject a message came on."""

from __future__ import annotations

import pytest

from bus import subjects
from bus.permissions import SENDERS, sender_refusal
from bus.schema import ROLES, CoPINote, CoPINoteMsg, Envelope, JobStatus, NoteAck
from bus.schema.messages import MESSAGE_KINDS
from services.host.wiring import envelope_mismatch
from tests.web_convo import draft, review

EVERYONE = (*ROLES, "copi", "runner")


def test_every_kind_has_its_allowed_senders():
    assert set(SENDERS) == set(MESSAGE_KINDS)
    assert all(set(allowed) <= set(EVERYONE) for allowed in SENDERS.values())


def test_the_copi_speaks_notes_starts_and_approves_projects_only():
    assert {k for k, allowed in SENDERS.items() if "copi" in allowed} == {"start_project", "copi_note", "project_approval"}
    assert SENDERS["project_approval"] == {"copi"} and SENDERS["project_estimate"] == {"pi"}  # no role approves for the co-PI
    assert {k for k, allowed in SENDERS.items() if "runner" in allowed} == {"job_status"}
    assert SENDERS["draft_ready"] == {"writer"} and SENDERS["review_done"] == {"reviewer"}
    assert SENDERS["job_status"] == {"runner", "engineer"} and SENDERS["experiment_result"] == {"engineer"}


@pytest.mark.parametrize("sender", EVERYONE)
def test_the_host_refuses_what_a_sender_may_not_say(sender):
    for body in (draft(1), review(1, "accept", [])):
        env = Envelope(project="p1", sender=sender, recipient="pi", body=body)
        why = envelope_mismatch(subjects.convo("p1", sender, "pi"), env)
        assert (why is None) == (sender in SENDERS[body.type]), (sender, body.type, why)
        if why:
            assert why == sender_refusal(body.type, sender) and why.startswith(f"{sender} may not send {body.type}")


def test_allowed_messages_pass_and_unknown_subjects_vouch_for_nobody():
    note = Envelope(project="p1", sender="copi", recipient="pi", body=CoPINoteMsg(note=CoPINote(id="n", text="stop the project now")))
    assert envelope_mismatch(subjects.convo("p1", "copi", "pi"), note) is None
    ack = Envelope(project="p1", sender="writer", recipient="copi", body=NoteAck(note_id="n", understood="ok"))
    assert envelope_mismatch(subjects.convo("p1", "writer", "copi"), ack) is None
    status = Envelope(project="p1", sender="runner", recipient="engineer", body=JobStatus(job_id="j1", experiment_id="x", state="failed"))
    assert envelope_mismatch(subjects.job_status("p1", "j1"), status) is None
    assert "vouches for no sender" in envelope_mismatch(subjects.job_log("p1", "j1"), status)
    assert "vouches for no sender" in envelope_mismatch("lab.other.p1", note)
