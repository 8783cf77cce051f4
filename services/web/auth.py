"""The co-PI credential of the web view: a random token, printed by `lab web`, that actions need.

A browser shows it once in the URL (``?token=…``, as Jupyter does); the page
swaps it for an HttpOnly, SameSite=Strict cookie and drops it from the
address bar. Scripts may send it as ``Authorization: Bearer …``. Without it
the page is read-only and every action is refused with 403.
"""

from __future__ import annotations

import secrets

from starlette.requests import Request

COOKIE = "lab_copi"


def new_token() -> str:
    return secrets.token_urlsafe(24)


class CoPIToken:
    def __init__(self, token: str):
        if len(token) < 16:
            raise ValueError("the co-PI token must be at least 16 characters")
        self._token = token

    def matches(self, offered: str | None) -> bool:
        return bool(offered) and secrets.compare_digest(offered.encode(), self._token.encode())  # type: ignore[union-attr]

    def offered(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(COOKIE)

    def allows(self, request: Request) -> bool:
        return self.matches(self.offered(request))
