"""Who may publish and read what on the bus.

Each role connects as its own NATS user. It may publish conversation messages
only with itself as sender, so a compromised or buggy agent cannot speak as
another; it reads replies only on its own inbox prefix. Reading through
JetStream is held to the same line: a role may create and pull only its own
durable consumers (one per partition of its work stream, bus/partitions), each
with the one filter its create subject names (so it cannot re-filter them to
read others' mail), read and write only its own keys
in the state bucket, and ack only its own consumers' messages — so it cannot read the conversation
addressed to others, or rewrite their state. Acks are allowed in both the old
``$JS.ACK.<stream>.<consumer>...`` and the nats-server 2.14+
``$JS.ACK.<domain>.<account>.<stream>.<consumer>...`` forms.

Artifacts are shared by design (a writer reads the analyst's figures), so the
object store is open to every lab user for reading and adding objects; purging its
stream is the admin's alone. (nats-py purges an object's old chunks when its name is
written again, and the purge API cannot be limited to one object: the lab never
replaces a name, see bus.store.Artifacts.) What permissions cannot hold, because an
object's subject is its base64 name: a role that publishes raw object-store
messages can still add a newer meta record for a name it did not write.

Job runners are users of their own, ``job.<project>.<job>``, which no static
user list names: the auth callout (services/auth/callout.py) admits each with
``job_permissions``: its own job's subjects, reads of the artifact store, and
object chunks, but no meta record (the auth service commits those, for names
under the job's project only). The static ``runner`` user stays for a NATS
server without the callout (Docker Compose, ``lab up --nats-url``).

The idea archive (what each project tried on each template) is written by the
PI alone and read by the PI, the co-PI and the web view. The result cache
(``lab_results``, bus/resultcache.py) is the engineers' alone.

The co-PI (the human, through the CLI) may publish notes as itself, start
projects, and read the log, the agents' heartbeats, the roles' state, the idea
archive and the artifacts: nothing more (``lab evolve`` is a project like any other, so its candidates take
capacity through the engineer; the co-PI writes no state, not even the slot ledger). It creates only unnamed (ephemeral) consumers on the
conversation and job streams, so it cannot re-filter a role's durable; it
cannot write any other state, delete or purge a stream or bucket, or delete a role's consumer.

Who may say what (``SENDERS``): NATS permissions bind a message's *subject* to its publisher
(``lab.convo.<project>.<sender>.<recipient>`` only as oneself; ``lab.jobs.<project>.<job>.status`` only by
a runner or the engineer), and the host believes an envelope only where its claimed sender is the
subject's (services/host/wiring.envelope_mismatch). On top of that, each message kind has its allowed
senders, checked by the host before any role sees the message: the co-PI starts projects, sends notes
(a stop is a note) and approves or refuses a project's estimate, never drafts, reviews, analyses or job events; only the writer sends drafts, only the
reviewer reviews, only the engineer and the runners job events. A message from any other sender goes to
the dead letters with the reason and is never dispatched.
"""

from __future__ import annotations

from typing import Any

from bus.partitions import WORK_STREAMS, consumers
from bus.schema import ROLES, Sender
from bus.schema.constants import (
    AGENTS_BUCKET,
    ARTIFACTS_BUCKET,
    CACHE_BUCKET,
    CONVO_STREAM,
    DLQ_STREAM,
    IDEAS_BUCKET,
    JOBS_STREAM,
    RESULTS_BUCKET,
    STATE_BUCKET,
    kv_stream,
    object_stream,
)
from bus.subjects import token

STATE_KV, AGENTS_KV, CACHE_KV = kv_stream(STATE_BUCKET), kv_stream(AGENTS_BUCKET), kv_stream(CACHE_BUCKET)
ARTIFACTS_OBJ = object_stream(ARTIFACTS_BUCKET)
IDEAS_KV = kv_stream(IDEAS_BUCKET)
RESULTS_KV = kv_stream(RESULTS_BUCKET)

ADMIN = "lab"  # sets up streams and buckets; used by `lab up` and tests
COPI = "copi"  # the human, through the CLI
RUNNER = "runner"  # job runners
WEB = "web"  # the web view (`lab web`): reads what its pages show, speaks only as the co-PI
AUTH = "auth"  # the auth callout (services/auth/callout.py): admits each job's runner with that job's permissions
USERS: tuple[str, ...] = (*ROLES, COPI, RUNNER, WEB, ADMIN, AUTH)
JOB_USER = "job"  # runners connect as ``job.<project>.<job>``, admitted by the auth callout, never a static user
CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"

_ANY_ROLE: frozenset[Sender] = frozenset(ROLES)
# Who may send each message kind (the one table; the host enforces it before dispatch, services/host/wiring).
SENDERS: dict[str, frozenset[Sender]] = {
    "start_project": frozenset({"copi"}),
    "project_approval": frozenset({"copi"}),  # approving or refusing a project's estimate: the co-PI alone (CLI or web view)
    "project_estimate": frozenset({"pi"}),
    "copi_note": frozenset({"copi"}),  # notes, stop included (the web view's stop button sends a note)
    "note_ack": _ANY_ROLE,
    "novelty_check": frozenset({"pi"}),
    "novelty_verdict": frozenset({"literature"}),
    "reference_search": frozenset({"pi"}),
    "references_found": frozenset({"literature"}),
    "experiment_request": frozenset({"pi"}),
    "experiment_planned": frozenset({"engineer"}),
    "experiment_result": frozenset({"engineer"}),
    "job_status": frozenset({"runner", "engineer"}),  # the runner, or the engineer's job watch for a runner that never started
    "analysis_request": frozenset({"pi"}),
    "analysis_done": frozenset({"analyst"}),
    "draft_request": frozenset({"pi"}),
    "draft_ready": frozenset({"writer"}),
    "review_request": frozenset({"pi"}),
    "review_done": frozenset({"reviewer"}),
    "rebuttal": frozenset({"pi"}),
    "decision": frozenset({"pi"}),
    "step_failed": _ANY_ROLE,  # the host reports any role's failed step
    "usage_report": _ANY_ROLE,  # the host reports what any role's mind spent
}


def sender_refusal(kind: str, sender: str) -> str | None:
    """Why ``sender`` may not send a message of ``kind`` (``SENDERS``), or None when it may."""
    allowed = SENDERS.get(kind, frozenset())  # tests/unit/test_senders.py: every kind of MESSAGE_KINDS is here
    if sender in allowed:
        return None
    return f"{sender} may not send {kind} (allowed: {', '.join(sorted(allowed)) or 'nobody'})"


def convo_refusal(subject: str, env: Any) -> str | None:
    """Why a conversation envelope read from ``subject`` is not to be believed, or None.

    NATS lets each user publish only with itself as the subject's sender, so the subject names the
    publisher; the envelope must claim the same (project, sender, recipient), and the sender must be
    allowed to send its kind. The host checks it before dispatch; readers of the log (`lab run`,
    `lab export`, the web view) check it before believing a decision, a draft or a review.
    """
    parts = subject.split(".")
    if len(parts) != 5 or parts[:2] != ["lab", "convo"]:
        return f"{env.kind} from {env.sender} came on {subject}, which vouches for no sender"
    if (parts[2], parts[3], parts[4]) != (env.project, env.sender, env.recipient):
        return f"envelope claims {env.project}/{env.sender}->{env.recipient} but came on {subject}"
    return sender_refusal(env.kind, env.sender)


STREAMS = (CONVO_STREAM, JOBS_STREAM, DLQ_STREAM, *WORK_STREAMS, STATE_KV, AGENTS_KV, CACHE_KV, ARTIFACTS_OBJ, IDEAS_KV, RESULTS_KV)


def _bucket_reads(stream: str, subjects: str = ">") -> list[str]:
    """Read access to a KV/object bucket's stream, limited to ``subjects`` where the API subject names them."""
    return [
        f"$JS.API.DIRECT.GET.{stream}.{subjects}",
        f"$JS.API.CONSUMER.CREATE.{stream}.*.{subjects}",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",  # pulls from a consumer created under the rule above
    ]


def _artifacts() -> list[str]:
    stream = ARTIFACTS_OBJ
    return [
        f"$O.{ARTIFACTS_BUCKET}.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",  # nats-py reads and lists objects through unnamed consumers
        *_bucket_reads(stream),
    ]


def _copi() -> list[str]:
    """The human's CLI: `lab say`, `lab run` (starts a project, uploads its template), `lab logs`, `lab status`, `lab evolve --nats`."""
    # Unnamed creates (ordered consumers) only: replays of the log, and the listing of agents' heartbeats
    # (`lab status`: nats-py's KV keys() is an ordered push consumer); heartbeats hold nothing secret.
    logs = [f"$JS.API.CONSUMER.CREATE.{s}" for s in (CONVO_STREAM, JOBS_STREAM, AGENTS_KV)]
    obj = ARTIFACTS_OBJ
    artifacts = [  # reading and adding objects; never purging (that is the admin's)
        f"$O.{ARTIFACTS_BUCKET}.>",
        f"$JS.API.STREAM.MSG.GET.{obj}",
        f"$JS.API.DIRECT.GET.{obj}",
        f"$JS.API.DIRECT.GET.{obj}.>",
        f"$JS.API.CONSUMER.CREATE.{obj}",
        f"$JS.API.CONSUMER.CREATE.{obj}.*.>",
        f"$JS.API.CONSUMER.INFO.{obj}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{obj}.*",
    ]
    return [
        "lab.convo.*.copi.*",
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.INFO.*",
        "$JS.FC.>",
        *logs,
        *_bucket_reads(STATE_KV),
        *_bucket_reads(AGENTS_KV),
        *_bucket_reads(IDEAS_KV),  # `lab ideas`
        *artifacts,
        # No state key: `lab evolve` is a project the engineer schedules, so the co-PI takes no capacity itself.
    ]


def _consumer(stream: str, name: str, filter_subject: str) -> list[str]:
    """Create (or update) one durable with its one filter, bind, pull and ack it.

    The filter is pinned in the create subject: nats-server refuses a request whose config names
    another filter (or several) than the subject does, and the subject-less and legacy
    ``DURABLE.CREATE`` forms, which carry no filter, are not allowed.
    """
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter_subject}",
        f"$JS.API.CONSUMER.INFO.{stream}.{name}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
        f"$JS.ACK.*.*.{stream}.{name}.>",
    ]


def _role(role: str) -> list[str]:
    allow = [
        f"lab.convo.*.{role}.*",
        f"lab.dlq.{role}",
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.FC.>",
        # Whoever starts first creates the lab's streams; the server refuses one that overlaps an existing stream.
        *(f"$JS.API.STREAM.{op}.{s}" for s in STREAMS for op in ("INFO", "CREATE")),
        # The role reads its work stream (bus/partitions) by partition: one durable each, its one filter pinned.
        *(rule for stream, name, f in consumers(role) for rule in _consumer(stream, name, f)),
        f"$KV.{STATE_BUCKET}.{role}.>",
        *_bucket_reads(STATE_KV, f"$KV.{STATE_BUCKET}.{role}.>"),
        f"$KV.{AGENTS_BUCKET}.{role}",
        f"$KV.{AGENTS_BUCKET}.{role}.*",  # replicas' heartbeats (pi.2, …)
        f"$KV.{CACHE_BUCKET}.{role}.>",
        *_bucket_reads(CACHE_KV, f"$KV.{CACHE_BUCKET}.{role}.>"),
        *_artifacts(),
    ]
    if role == "pi":
        # The idea archive: the PI records what each project tried and reads what earlier ones did.
        allow += [f"$KV.{IDEAS_BUCKET}.>", *_bucket_reads(IDEAS_KV)]
    if role == "engineer":
        # The engineer reads job outcomes, and reports failures the runner could not (a pod that never started).
        allow += ["lab.jobs.*.*.status"]  # its job outcomes it reads in its work stream
        # The lab-wide result cache (bus/resultcache.py): claims, stored results, deletes of its own claims.
        allow += [f"$KV.{RESULTS_BUCKET}.>", *_bucket_reads(RESULTS_KV)]
    return allow


def _web() -> list[str]:
    """The web view: replays the conversation and job output, reads project state and artifacts, sends co-PI notes.

    It writes no state and no artifact, creates no stream or durable consumer
    (only the unnamed ordered consumers of a replay), and speaks only as the co-PI.
    """
    reads = []
    for stream in (CONVO_STREAM, JOBS_STREAM, STATE_KV, AGENTS_KV, IDEAS_KV):
        reads += [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}", *_bucket_reads(stream)]
    artifacts = ARTIFACTS_OBJ
    return [
        "lab.convo.*.copi.*",
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.FC.>",
        *reads,
        f"$JS.API.STREAM.INFO.{artifacts}",
        f"$JS.API.STREAM.MSG.GET.{artifacts}",
        f"$JS.API.DIRECT.GET.{artifacts}",
        f"$JS.API.CONSUMER.CREATE.{artifacts}",
        *_bucket_reads(artifacts),
    ]


def _artifact_reads() -> list[str]:
    """Reading objects of the artifact store (everything ``_artifacts`` allows but writing)."""
    return _artifacts()[1:]


def files_subject(project: str = "*", job: str = "*") -> str:
    """Where a job asks the auth service to commit an object it wrote (core NATS request, outside every stream)."""
    return f"lab.files.{project}.{job}"


def job_user(project: str, job: str) -> str:
    """The NATS user name of one job's runner; its tokens are checked where the job's subjects are built."""
    return f"{JOB_USER}.{token(project, 'project')}.{token(job, 'job')}"


def job_of_user(user: str | None) -> tuple[str, str] | None:
    """(project, job) of a runner's user name ``job.<project>.<job>``; None for any other name."""
    parts = (user or "").split(".")
    if len(parts) != 3 or parts[0] != JOB_USER:
        return None
    try:
        return token(parts[1]), token(parts[2])
    except ValueError:
        return None


def chunk_prefix(project: str, job: str) -> str:
    """Where a job's runner writes object chunks: ``$O.<bucket>.C.<project>.<job>``, then a fresh nuid.

    The object store's stream takes ``$O.<bucket>.C.>``, and a reader builds the chunk subject from
    the object's recorded ``nuid``, so a nuid of ``<project>.<job>.<random>`` reads like any other
    while the runner's permission names its own job's chunk subjects alone.
    """
    return f"$O.{ARTIFACTS_BUCKET}.C.{token(project, 'project')}.{token(job, 'job')}"


def job_permissions(project: str, job: str) -> dict[str, Any]:
    """What one job's runner may do (the auth callout puts it in the runner's user JWT).

    Publish only on its own job's subjects (status and log) and its own commit subject, read the
    artifact store (its bundle, its checkpoint), and write its own objects' chunks; an object becomes
    visible only when the auth service commits its meta record, for a name under the job's
    project (services/auth/callout.py). Replies come only to its own inbox.
    """
    publish = [
        f"lab.jobs.{project}.{job}.>",
        files_subject(project, job),
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.FC.>",
        f"{chunk_prefix(project, job)}.>",  # its own objects' chunks only: it cannot append to or roll up another's
        *_artifact_reads(),
    ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"{inbox_prefix(job_user(project, job))}.>"]}}


def inbox_prefix(user: str) -> str:
    return f"_INBOX_{user}"


def permissions(user: str) -> dict[str, Any] | None:
    """nats-server permissions for a user; None means unrestricted (the admin)."""
    if user == ADMIN:
        return None
    inbox = f"{inbox_prefix(user)}.>"
    if user == RUNNER:
        # Its bundle in, its results and status out: nothing of the conversation or anyone's state.
        publish = ["lab.jobs.>", "$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.FC.>", *_artifacts()]
    elif user == COPI:
        publish = _copi()
    elif user == WEB:
        publish = _web()
    elif user == AUTH:
        # Answers the server's authorization requests, and commits the objects jobs wrote (their meta records).
        publish = ["$JS.API.INFO", "$JS.FC.>", *_artifacts()]
        subscribe = [inbox, CALLOUT_SUBJECT, files_subject()]
        return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}, "allow_responses": True}
    else:
        publish = _role(user)
    return {"publish": {"allow": publish}, "subscribe": {"allow": [inbox]}}
