"""`python -m services.auth`: the lab's auth service — each job's runner gets a NATS user of its own.

nats-server (2.10+, config-file mode) hands every connection that is not one
of the lab's static users (``auth_users``: the roles, the co-PI, the web
view, the admin, this service) to this service as an ``authorization_request``
on ``$SYS.REQ.USER.AUTH``. A runner connects as ``job.<project>.<job>`` with
its job's key as password (``HMAC(lab job secret, "<project>/<job>")``, the
same key that signs its statuses, bus/jobkeys.py); the service recomputes the
key and answers with a user JWT, signed by the callout issuer nkey, whose
permissions are that job's alone (``bus.permissions.job_permissions``): publish
on ``lab.jobs.<project>.<job>.>``, read the artifact store, replies to its own
inbox. A missing or wrong key, or any other user name, is refused.

Artifacts: an object store keeps an object's name (base64) in one subject
token, so permissions cannot scope object names by project. A job may write
object *chunks* (fresh random subjects) but not meta records; it asks this
service to commit the meta record on ``lab.files.<project>.<job>``, and the
service writes it only for a name under the job's project that does not
already hold other bytes (never replacing an object, like bus.store.Artifacts).
A job writes chunks only under its own prefix (``$O.<bucket>.C.<project>.<job>.<nuid>``,
bus.permissions.chunk_prefix), and a commit must name chunks there, so it cannot
append to or roll up another object's chunks, nor commit a name over them.

The service holds the lab job secret and the issuer seed, so it runs next to
nats-server (`lab up` starts it; on Kubernetes its own Deployment), never in a
job. The user JWT expires after ``LAB_JOB_TOKEN_TTL_S`` (default a day); a
runner still running then is re-admitted by the same check when it reconnects.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from bus import metrics, natsjwt
from bus.client import Bus, BusConfig
from bus.errors import BusFailure, LabError
from bus.jobkeys import JobKeys
from bus.permissions import (
    AUTH,
    CALLOUT_SUBJECT,
    JOB_USER,
    chunk_prefix,
    files_subject,
    job_of_user,
    job_permissions,
)
from bus.schema.constants import ARTIFACTS_BUCKET
from bus.settings import settings
from bus.store import CommitRefused, ObjectCommits, object_name_refusal
from services.common.config import read_secret

log = structlog.get_logger()
_NUID = re.compile(r"^[A-Za-z0-9]{1,64}$")
QUEUE = "lab-auth"  # several replicas answer each request once


class AuthConfigError(LabError):
    """The auth service cannot start: a missing secret or seed."""


@dataclass
class Decision:
    """What the service answered for one connection: the response token, and who or why (for the log)."""

    token: str
    user: str
    refusal: str | None


class AuthService:
    """Answers authorization requests for job runners, and commits the objects they wrote."""

    def __init__(self, keys: JobKeys, issuer_seed: str, ttl_s: float | None = None) -> None:
        self.keys = keys
        self.seed = issuer_seed
        self.issuer = natsjwt.public_key(issuer_seed)
        self.ttl_s = settings().job_token_ttl_s if ttl_s is None else ttl_s  # LAB_JOB_TOKEN_TTL_S
        self.objects: ObjectCommits | None = None

    def decide(self, request_token: str) -> Decision:
        """The signed answer to one ``authorization_request`` JWT."""
        try:
            request = natsjwt.decode(request_token)
        except natsjwt.JwtError as e:
            return Decision(natsjwt.auth_response(request={}, seed=self.seed, error=str(e)), "?", str(e))
        nats_claims = request.get("nats") or {}
        opts = nats_claims.get("connect_opts") or {}
        user, password = str(opts.get("user") or ""), str(opts.get("pass") or "")
        refusal = self._refusal(request, user, password)
        if refusal is not None:
            return Decision(natsjwt.auth_response(request=request, seed=self.seed, error=refusal), user, refusal)
        project, job = job_of_user(user) or ("", "")
        perms = job_permissions(project, job)
        jwt = natsjwt.user_jwt(
            user_nkey=str(nats_claims.get("user_nkey", "")), name=user, seed=self.seed,
            publish=perms["publish"]["allow"], subscribe=perms["subscribe"]["allow"], expires_s=self.ttl_s,
        )
        return Decision(natsjwt.auth_response(request=request, seed=self.seed, jwt=jwt), user, None)

    def _refusal(self, request: dict[str, Any], user: str, password: str) -> str | None:
        if request.get("aud") != natsjwt.REQUEST_AUDIENCE or (request.get("nats") or {}).get("type") != "authorization_request":
            return "not an authorization request"
        who = job_of_user(user)
        if who is None:
            return f"unknown user {user[:80]!r}: runners connect as {JOB_USER}.<project>.<job>"
        if not password:
            return f"no key for {user}"
        if not hmac.compare_digest(self.keys.key(*who), password):
            return f"wrong key for {user}"
        return None

    async def on_request(self, subject: str, data: bytes) -> bytes:
        started = time.perf_counter()
        decision = self.decide(data.decode(errors="replace"))
        metrics.auth_request(decision.refusal is None, time.perf_counter() - started)
        if decision.refusal:
            log.warning("runner refused", user=decision.user, reason=decision.refusal)
        else:
            log.info("runner admitted", user=decision.user)
        return decision.token.encode()

    async def commit(self, project: str, job: str, info: dict[str, Any]) -> str:
        """Write the meta record of an object job ``project/job`` wrote the chunks of; the name written.

        Raises CommitRefused with the reason when the record is not the job's to write.
        """
        assert self.objects is not None
        name = info.get("name")
        if not isinstance(name, str) or not name.startswith(f"{project}/") or len(name) > 1024:
            raise CommitRefused(f"job {project}/{job} may write only names under {project}/, not {str(name)[:120]!r}")
        if (why := object_name_refusal(name)) is not None:  # `<project>/runs/x/../../..` is under the prefix, and escapes
            raise CommitRefused(why)
        if info.get("bucket") != ARTIFACTS_BUCKET:
            raise CommitRefused(f"unknown bucket {info.get('bucket')!r}")
        nuid, chunks, size = info.get("nuid"), info.get("chunks"), info.get("size")
        if not isinstance(nuid, str) or not isinstance(chunks, int) or not isinstance(size, int) or min(chunks, size) < 0:
            raise CommitRefused("malformed object info (nuid, chunks, size)")
        own = chunk_prefix(project, job).removeprefix(f"$O.{ARTIFACTS_BUCKET}.C.") + "."
        if not nuid.startswith(own) or not _NUID.match(nuid.removeprefix(own)):
            raise CommitRefused(f"{name}: its chunks must be the job's own ({own}<nuid>), not {nuid[:120]!r}")
        if not isinstance(info.get("digest"), str) or info.get("deleted"):
            raise CommitRefused("malformed object info (digest)")
        stored = await self.objects.chunks_stored(nuid)
        if stored != chunks:
            raise CommitRefused(f"{name}: {chunks} chunks announced, {stored} stored")
        old = await self.objects.meta(name)
        if old is not None:
            if old.get("digest") == info["digest"] and not old.get("deleted"):
                return name  # the same bytes again (a retried upload): already there
            raise CommitRefused(f"{name} already holds other bytes: objects are never replaced (write the next version)")
        await self.objects.write_meta(name, info)  # refused if another writer got there first
        return name

    async def on_commit(self, subject: str, data: bytes) -> bytes:
        _, _, project, job = subject.split(".")
        try:
            info = json.loads(data)
            if not isinstance(info, dict):
                raise CommitRefused("object info is not a JSON object")
            reply: dict[str, Any] = {"name": await self.commit(project, job, info)}
            outcome = "committed"
        except (CommitRefused, ValueError) as e:
            log.warning("object commit refused", job=f"{project}/{job}", reason=str(e))
            reply, outcome = {"error": str(e)}, "refused"
        except BusFailure as e:  # the reply carries what NATS itself said, as it always has
            reply, outcome = {"error": f"the store did not take the record: {e.__cause__ or e}"}, "error"
        metrics.auth_commit(outcome)
        return json.dumps(reply).encode()

    async def serve(self, bus: Bus) -> None:
        """Serve both services on ``bus``; returns once the server will route requests here."""
        self.objects = ObjectCommits(bus)
        await bus.serve(CALLOUT_SUBJECT, self.on_request, queue=QUEUE)
        await bus.serve(files_subject(), self.on_commit, queue=QUEUE)


def issuer_seed() -> str:
    seed = read_secret("auth_issuer_seed")
    if not seed:
        raise AuthConfigError("no callout issuer seed: set LAB_AUTH_ISSUER_SEED_FILE (written by `lab up`, or a mounted Secret)")
    return seed


async def run(ready_file: Path | None = None) -> int:
    secret = read_secret("job_secret")
    if not secret:
        raise AuthConfigError("no lab job secret: set LAB_JOB_SECRET_FILE (the engineers' job secret)")
    service = AuthService(JobKeys(secret), issuer_seed())
    s = settings()
    config = BusConfig(url=s.nats_url or "nats://127.0.0.1:4222", user=s.nats_user or AUTH, password=s.secret("nats_password"), name="lab-auth")
    bus = await Bus.connect(config)
    metrics.prepare_auth()
    metrics.serve_or_log(s.metrics_port, "lab-auth")  # LAB_METRICS_PORT; unset: none
    await service.serve(bus)
    if ready_file is not None:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.write_text(str(os.getpid()))
    log.info("auth service ready", issuer=service.issuer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await bus.close()
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)
    return 0


def main() -> None:
    try:
        sys.exit(asyncio.run(run(settings().auth_ready_file)))
    except LabError as e:
        print(f"auth: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
