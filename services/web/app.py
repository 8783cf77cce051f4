"""The web view's Starlette app: pages rendered on the server, the conversation live over server-sent events.

One NATS connection per app (opened in the lifespan, as the ``web`` user on
a lab that has one); each open project page holds one ordered consumer on
the conversation — replay from the first message, then follow. Actions (a
co-PI note, stop) need the co-PI token (see ``auth``); a page opened
without it has no co-PI box and every POST is refused with 403.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus import metrics, subjects
from bus.client import Bus, BusConfig
from bus.errors import ArtifactMissing, BusFailure, ConnectError, InvalidToken
from bus.replay import read
from bus.schema import ROLES
from services.read.projects import NoteRefused, project_state, project_states, send_approval, send_note
from services.web import feeds, views
from services.web.auth import COOKIE, CoPIToken

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
STOP_NOTE = "stop the project now (sent with the stop button of the web view)"  # the PI's minds read "stop … now" as stop


def _project(request: Request) -> str:
    try:
        return subjects.token(request.path_params["project"], "project")
    except InvalidToken:
        raise HTTPException(404, "no such project") from None


NOT_RUNNING_PAGE = "lab is not running: the web view reconnects by itself when it is back (`lab up --detach` starts it)"


def _bus(request: Request) -> Bus:
    """The app's connection; a page asked while NATS is away is a readable 503, never a hang or a traceback."""
    bus: Bus = request.app.state.bus  # set by the lifespan
    if not bus.connected:
        raise HTTPException(503, NOT_RUNNING_PAGE)
    return bus


def _login(request: Request) -> Response | None:
    """``?token=…`` in the URL: trade it for the cookie and drop it from the address bar; a wrong one is refused."""
    offered = request.query_params.get("token")
    if offered is None:
        return None
    if not request.app.state.token.matches(offered):
        return PlainTextResponse("wrong co-PI token", status_code=403)
    resp = RedirectResponse(request.url.path, status_code=303)
    resp.set_cookie(COOKIE, offered, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return resp


def _may_act(request: Request) -> None:
    """Refuse an action without the co-PI token, or posted from another site's page."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.url.netloc:
        raise HTTPException(403, "an action from another site's page")
    if not request.app.state.token.allows(request):
        raise HTTPException(403, "actions need the co-PI token that `lab web` printed")


async def index(request: Request) -> Response:
    if (resp := _login(request)) is not None:
        return resp
    projects = [views.summary(s) for s in await project_states(_bus(request))]
    return templates.TemplateResponse(request, "index.html", {"projects": projects, "can_act": request.app.state.token.allows(request)})


async def ideas(request: Request) -> Response:
    """The idea archive: what every project tried on each template and what came of it (``?template=T``: one template)."""
    from services.read.ideas import archive_records

    if (resp := _login(request)) is not None:
        return resp
    chosen = request.query_params.get("template") or None
    records = await archive_records(_bus(request), chosen)
    ctx = {"archives": views.archive(records), "template": chosen, "can_act": request.app.state.token.allows(request)}
    return templates.TemplateResponse(request, "ideas.html", ctx)


async def _page_context(request: Request, project: str) -> dict[str, Any]:
    page = await feeds.project_page(_bus(request), project)
    paper_html = ""
    if page.paper is not None:
        try:
            text = (await feeds.artifact(_bus(request), page.paper.markdown)).decode(errors="replace")
            paper_html = feeds.render_markdown(text, f"/p/{project}/a/{page.paper.folder.removeprefix(project + '/')}")
        except ArtifactMissing:
            paper_html = ""
    return {"page": page, "paper_html": paper_html, "can_act": request.app.state.token.allows(request), "roles": ROLES}


async def project(request: Request) -> Response:
    if (resp := _login(request)) is not None:
        return resp
    name = _project(request)
    ctx = await _page_context(request, name)
    if ctx["page"].summary is None and not ctx["page"].experiments and not ctx["page"].notes:
        raise HTTPException(404, f"no project named {name!r}")
    return templates.TemplateResponse(request, "project.html", ctx)


async def sections(request: Request) -> Response:
    return templates.TemplateResponse(request, "_sections.html", await _page_context(request, _project(request)))


async def events(request: Request) -> Response:
    """The conversation as server-sent events: every message from the first, then each new one as it comes."""
    name = _project(request)
    try:
        after = int(request.headers.get("last-event-id") or 0)  # a reconnecting browser says what it has
    except ValueError:
        after = 0
    fragment = templates.get_template("_message.html")

    async def stream() -> AsyncIterator[dict[str, str]]:
        async for entry in read(_bus(request), subjects.convo_all(name), follow=True):
            if entry.seq > after:
                yield {"event": "message", "id": str(entry.seq), "data": fragment.render(m=views.message_view(entry))}

    return EventSourceResponse(stream(), ping=10)


async def artifact(request: Request) -> Response:
    name = f"{_project(request)}/{request.path_params['name']}"
    try:
        data = await feeds.artifact(_bus(request), name)
    except ArtifactMissing:
        raise HTTPException(404, f"no artifact {name!r}") from None
    return Response(data, media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")


async def _note(request: Request, text: str, to: str) -> Response:
    name = _project(request)
    if await project_state(_bus(request), name) is None:
        raise HTTPException(404, f"no project named {name!r}")
    try:
        note = await send_note(_bus(request), name, text, to)
    except NoteRefused as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    return JSONResponse({"id": note.id, "to": note.to, "text": note.text})


async def post_note(request: Request) -> Response:
    _may_act(request)
    form = await request.form()
    return await _note(request, str(form.get("text", "")), str(form.get("to", "pi")))


async def post_stop(request: Request) -> Response:
    _may_act(request)
    return await _note(request, STOP_NOTE, "pi")


async def post_approve(request: Request) -> Response:
    """Approve the project's estimate, or (``decision=refuse`` with a ``reason``) refuse it; back to its page after."""
    _may_act(request)
    name = _project(request)
    form = await request.form()
    refused = str(form.get("decision", "")) == "refuse"
    reason = str(form.get("reason", ""))
    if refused and not reason.strip():
        return JSONResponse({"error": "say why the project is refused"}, status_code=400)
    try:
        env = await send_approval(_bus(request), await project_states(_bus(request)), name, not refused, reason)
    except NoteRefused as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"id": env.id, "approved": not refused})
    return RedirectResponse(f"/p/{name}", status_code=303)


async def healthz(request: Request) -> Response:
    bus: Bus = request.app.state.bus
    return PlainTextResponse("ok" if bus.connected else "no NATS connection", status_code=200 if bus.connected else 503)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if request.method == "POST" or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
    return PlainTextResponse(exc.detail, status_code=exc.status_code)


async def _bus_error(request: Request, exc: Exception) -> Response:
    """A bus failure mid-request (the lab went away while a page was read): the same 503 as a page asked after."""
    bus: Bus = request.app.state.bus
    detail = NOT_RUNNING_PAGE if not bus.connected else f"the lab did not answer: {exc}"
    return await _http_error(request, HTTPException(503, detail))


LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


class ServedHosts(TrustedHostMiddleware):
    """Starlette's TrustedHostMiddleware (a foreign Host: 400), but for ``/healthz``, which says nothing and which
    Kubernetes probes ask by the pod's address."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == "/healthz":
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class RequestMetrics:
    """Counts each HTTP request by its route's template (never a project's name), method and status (bus/metrics.py).

    The outermost middleware, so a foreign Host's 400 counts too; the seconds are those until the response
    started, so a live feed open for an hour counts as quickly as it answered.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "seconds": None}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"], seen["seconds"] = message["status"], time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"  # no route matched: a 404, or a refused Host
            seconds = seen["seconds"] if seen["seconds"] is not None else time.perf_counter() - started
            metrics.web_request(template, scope.get("method", "GET"), seen["status"], seconds)


def served_names(hosts: Iterable[str] = ()) -> list[str]:
    """The Host names the web view answers: loopback's, and ``hosts`` (its --host, LAB_WEB_HOSTS); never a wildcard."""
    names = [*LOCAL_NAMES]
    for h in hosts:
        h = h.strip().lower()
        if h and h not in names and h not in ("0.0.0.0", "::", "*"):  # a listen-everywhere address names no host
            names.append(h)
    return names


def create_app(
    token: str, *, bus: Bus | None = None, config: BusConfig | None = None, copi_password: str | None = None, hosts: Iterable[str] = (),
) -> Starlette:
    """The web view over an open ``bus`` (kept open: its owner closes it), or one it opens from ``config``.

    Actions need ``token``, or the co-PI's NATS login when ``copi_password`` is given. Requests whose Host
    header is not one of ``served_names(hosts)`` get 400.
    """
    if (bus is None) == (config is None):
        raise ValueError("give the web view either a bus or a bus config")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if bus is not None:
            app.state.bus = bus
            yield
            return
        assert config is not None
        app.state.bus = await Bus.connect(config, reconnect=True, timeout=10)
        try:
            yield
        finally:
            await app.state.bus.close()

    routes = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/ideas", ideas),
        Route("/p/{project}", project),
        Route("/p/{project}/sections", sections),
        Route("/p/{project}/events", events),
        Route("/p/{project}/a/{name:path}", artifact),
        Route("/p/{project}/note", post_note, methods=["POST"]),
        Route("/p/{project}/stop", post_stop, methods=["POST"]),
        Route("/p/{project}/approve", post_approve, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    # A page answers only to the names it is served under: a foreign Host (DNS rebinding: a site whose name
    # resolves to 127.0.0.1) gets 400, so another site's script cannot read the pages and papers.
    middleware = [Middleware(RequestMetrics), Middleware(ServedHosts, allowed_hosts=served_names(hosts))]
    handlers = {HTTPException: _http_error, BusFailure: _bus_error, ConnectError: _bus_error}
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware, exception_handlers=handlers)
    app.state.token = CoPIToken(token, copi_password)
    return app
