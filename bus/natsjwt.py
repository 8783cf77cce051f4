"""NATS JWTs, just what the auth callout needs: user claims and authorization responses, signed with an nkey.

nats-server's auth callout (2.10+) sends an ``authorization_request`` JWT on
``$SYS.REQ.USER.AUTH`` and takes back an ``authorization_response`` JWT that
carries a user JWT; both answers are signed by the account nkey named as the
callout's ``issuer`` in the server config. A NATS JWT is a plain JWT
(base64url, no padding) whose header says ``"alg": "ed25519-nkey"`` and whose
signature is the issuer's ed25519 signature over ``header.claims``; ``jti`` is
the base32 SHA-256 of the claims without it, as nats-io/jwt (v2) computes it.

The formats were checked against nats-server 2.15 (tests/integration/test_auth_callout.py
runs the real server): a user JWT whose ``aud`` is ``$G`` places the user in
the global account of a config-file (non-operator) server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from typing import Any

import nkeys  # type: ignore[import-untyped]
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from bus.errors import LabBusError

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
GLOBAL_ACCOUNT = "$G"
REQUEST_AUDIENCE = "nats-authorization-request"


class JwtError(LabBusError, ValueError):
    """A token that is not a well-formed, correctly signed NATS JWT."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_account_seed() -> str:
    """A fresh account nkey seed (``SA...``): the callout issuer's private key."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT)
    return seed.decode()


def public_key(seed: str) -> str:
    """The public nkey (``A...`` for an account) of ``seed``; JwtError for something that is not a seed."""
    try:
        kp = nkeys.from_seed(seed.encode())
    except (nkeys.NkeysError, ValueError) as e:  # ErrInvalidSeed, or a binascii.Error on garbage
        raise JwtError(f"not an nkey seed: {type(e).__name__}") from None
    key: bytes = kp.public_key
    return key.decode()


def _verify_key(public: str) -> VerifyKey:
    """The ed25519 key inside a public nkey: base32 of (prefix byte, 32-byte key, crc16)."""
    try:
        raw = base64.b32decode(public + "=" * (-len(public) % 8))
    except (binascii.Error, ValueError):
        raise JwtError(f"not a public nkey: {public[:12]!r}") from None
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]):
        raise JwtError(f"not a public nkey: {public[:12]!r}")
    return VerifyKey(raw[1:33])


def encode(claims: dict[str, Any], seed: str, *, now: float | None = None) -> str:
    """``claims`` signed by ``seed``: ``iss`` (its public key), ``iat`` and ``jti`` are filled in."""
    kp = nkeys.from_seed(seed.encode())
    body = {**claims, "iss": kp.public_key.decode(), "iat": int(now if now is not None else time.time())}
    body.pop("jti", None)
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).digest()).decode().rstrip("=")
    head = _b64(json.dumps(HEADER, separators=(",", ":")).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signature: bytes = kp.sign(f"{head}.{payload}".encode())
    return f"{head}.{payload}.{_b64(signature)}"


def decode(token: str, *, issuer: str | None = None) -> dict[str, Any]:
    """The claims of ``token`` after checking its header and its signature by its ``iss`` (and that ``iss`` is ``issuer``)."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise JwtError("not a JWT: expected header.claims.signature")
    try:
        header, claims, signature = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1])), _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise JwtError("not a JWT: a part is not base64url JSON") from None
    if not isinstance(header, dict) or header.get("alg") != HEADER["alg"] or not isinstance(claims, dict):
        raise JwtError(f"not a NATS JWT: algorithm {header.get('alg') if isinstance(header, dict) else None!r}")
    iss = claims.get("iss")
    if not isinstance(iss, str) or (issuer is not None and iss != issuer):
        raise JwtError(f"JWT issued by {iss!r}, expected {issuer!r}")
    try:
        _verify_key(iss).verify(f"{parts[0]}.{parts[1]}".encode(), signature)
    except BadSignatureError:
        raise JwtError("JWT signature does not verify") from None
    return claims


def user_jwt(
    *, user_nkey: str, name: str, seed: str, publish: list[str], subscribe: list[str], expires_s: float, account: str = GLOBAL_ACCOUNT,
) -> str:
    """A user JWT for the connection ``user_nkey`` (the server's per-connection key), allowed exactly these subjects."""
    now = time.time()
    claims = {
        "sub": user_nkey,
        "aud": account,
        "name": name,
        "exp": int(now + expires_s),
        "nats": {
            "pub": {"allow": publish},
            "sub": {"allow": subscribe},
            "subs": -1, "data": -1, "payload": -1,
            "type": "user",
            "version": 2,
        },
    }
    return encode(claims, seed, now=now)


def auth_response(*, request: dict[str, Any], seed: str, jwt: str | None = None, error: str | None = None) -> str:
    """The answer to an authorization request: a user JWT to admit the client, or an error to refuse it."""
    nats = request.get("nats") or {}
    body: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if jwt is not None:
        body["jwt"] = jwt
    else:
        body["error"] = error or "not authorized"
    claims = {"sub": nats.get("user_nkey", ""), "aud": (nats.get("server_id") or {}).get("id", ""), "nats": body}
    return encode(claims, seed)
