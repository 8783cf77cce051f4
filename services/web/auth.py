"""The co-PI credential of the web view: a random token, printed by `lab web`, that actions need.

A browser shows it once in the URL (``?token=…``, as Jupyter does); the page
swaps it for an HttpOnly, SameSite=Strict cookie and drops it from the
address bar. Scripts may send it as ``Authorization: Bearer …``, or log in as
the co-PI's NATS user (``Authorization: Basic`` copi:PASSWORD) where the web
view knows that password. Without either the page is read-only and every
action is refused with 403.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from starlette.requests import Request

COOKIE = "lab_copi"


def new_token() -> str:
    return secrets.token_urlsafe(24)


class CoPIToken:
    def __init__(self, token: str, copi_password: str | None = None):
        if len(token) < 16:
            raise ValueError("the co-PI token must be at least 16 characters")
        self._token = token
        self._copi_password = copi_password

    def matches(self, offered: str | None) -> bool:
        if not offered:
            return False
        return secrets.compare_digest(offered.encode(), self._token.encode())

    def offered(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(COOKIE)

    def _copi_login(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        if not self._copi_password or not auth.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == "copi" and secrets.compare_digest(password.encode(), self._copi_password.encode())

    def allows(self, request: Request) -> bool:
        return self.matches(self.offered(request)) or self._copi_login(request)
