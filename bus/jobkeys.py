"""Signed job statuses: a status counts only if it carries its own job's signature.

A runner may publish on its own job's subjects only (its own NATS user,
``job.<project>.<job>``, admitted by the auth callout, services/auth/callout.py),
or, on a NATS server without the callout, on the whole ``lab.jobs.>`` space
(the shared ``runner`` user); either way the subject alone must not be
believed, and with the shared user any job could publish a result for any
project's job. So the engineer gives each job its own key at submit,
``HMAC-SHA256(lab job secret, "<project>/<job_id>")`` (``JobSpec.status_key``,
like ``JobSpec.nats`` never kept in the engineer's state), the runner signs
every status it publishes with it, and the engineer checks the signature
before it believes a status (``services/wiring.EngineerWiring.admit``); one
that is missing or wrong is dead-lettered with the reason. A job's key signs
only that job's statuses: with it one can lie about one's own job, never
another's. The same key is the job's NATS password (the auth service
recomputes it from the secret). The lab job secret is the engineers' and the
auth service's alone (a 0600 file from `lab up`, a Secret mounted into the
engineer and lab-auth on Kubernetes).

The signature covers the project and the whole status but the signature
itself, as canonical JSON (sorted keys, no spaces), so what the engineer
checks is what it decoded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from bus.schema import JobStatus


def new_secret() -> str:
    return secrets.token_hex(32)


def signed_bytes(project: str, status: JobStatus) -> bytes:
    body = status.model_dump(mode="json", exclude={"signature"})
    return json.dumps({"project": project, "status": body}, sort_keys=True, separators=(",", ":")).encode()


def sign(key: str, project: str, status: JobStatus) -> JobStatus:
    """``status`` with its signature under the job's key."""
    mac = hmac.new(key.encode(), signed_bytes(project, status), hashlib.sha256).hexdigest()
    return status.model_copy(update={"signature": mac})


class JobKeys:
    """The engineer's side: per-job keys derived from the lab job secret, and the check of a status."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("the lab job secret is too short (at least 16 characters)")
        self._secret = secret.encode()

    def key(self, project: str, job_id: str) -> str:
        return hmac.new(self._secret, f"{project}/{job_id}".encode(), hashlib.sha256).hexdigest()

    def sign(self, project: str, status: JobStatus) -> JobStatus:
        return sign(self.key(project, status.job_id), project, status)

    def refusal(self, project: str, status: JobStatus) -> str | None:
        """Why ``status`` is not to be believed (no or a wrong signature), or None."""
        if not status.signature:
            return f"unsigned job status for {project}/{status.job_id}: only the job's own runner may report it"
        expected = self.sign(project, status).signature
        if not hmac.compare_digest(expected, status.signature):
            return f"job status for {project}/{status.job_id} has a wrong signature: not from that job's runner"
        return None
