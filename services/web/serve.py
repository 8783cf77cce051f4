"""`lab web`: serve the web view of a lab, printing the link that carries the co-PI token.

The link (and the token) also go to ``$LAB_HOME/web.json`` (mode 0600 from creation), so
that `lab up --web --detach` can tell the user where the page is. The token is printed only to a
terminal (``WebOptions.show_token``): under `lab up --detach` this process's output is supervisor.log,
and in a pod it is the pod's log, where a token must never be written.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from bus import metrics
from bus.client import Bus, BusConfig
from bus.errors import LabError
from bus.settings import env_name, settings
from services.common.config import read_secret, write_secret
from services.web.app import create_app
from services.web.auth import new_token

TOKEN_ENV = env_name("web_token")  # a fixed token, or a file of one ($LAB_WEB_TOKEN_FILE: a Secret mount); else a new one per start


class WebError(LabError):
    """The web view cannot start; one line for the user (the CLI prints LabErrors so)."""


@dataclass
class WebOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    home: Path | None = None  # where web.json goes
    show_token: bool = False  # print the link with the token (to a terminal only: never into a log file)
    read_only: bool = False  # a stopped lab's store: no actions (the token is new and never written anywhere)


def info_file(home: Path) -> Path:
    return home / "web.json"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise WebError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _announce(opts: WebOptions, url: str, token: str, say: Callable[[str], None]) -> None:
    """Say where the page is; the token only to a terminal (and to web.json), never for a stored lab's read-only page."""
    if opts.read_only:
        say(f"lab web: {url} (read-only: the lab is not running)")
        return
    if opts.home is not None:
        opts.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_secret(info_file(opts.home), json.dumps({"url": url, "token": token, "pid": os.getpid()}))  # 0600 from creation
    if opts.show_token:
        say(f"lab web: {url}?token={token}")
        say("open that link to act as co-PI (notes, stop); without the token the page is read-only.")
    else:  # not a terminal (a log file, a pod's log): the token is never written there
        given = settings().web_token_file  # a mounted secret (compose, Kubernetes): the file an operator can read
        where = f" in {given}" if given is not None else f" in {info_file(opts.home)}" if opts.home is not None else f" in {TOKEN_ENV}(_FILE)"
        say(f"lab web: {url} (the co-PI token is{where}; without it the page is read-only)")


async def serve(config: BusConfig, opts: WebOptions, say: Callable[[str], None], copi_password: str | None = None) -> None:
    """Connect, listen, print the link, serve until cancelled or signalled."""
    token = new_token() if opts.read_only else read_secret("web_token") or new_token()
    if len(token) < 16:
        raise WebError(f"{TOKEN_ENV}(_FILE) must hold at least 16 characters")
    bus = await Bus.connect(config, reconnect=True, timeout=10)
    sock = _listen(opts.host, opts.port)
    try:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        _announce(opts, url, token, say)
        if not _is_loopback(opts.host):
            say(f"warning: listening on {opts.host} without TLS; the token crosses the network in clear")
        metrics.serve_or_log(settings().metrics_port, "lab-web")  # LAB_METRICS_PORT, apart from the pages; unset: none
        app = create_app(token, bus=bus, copi_password=copi_password, hosts=[opts.host, *settings().web_hosts])
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
        await server.serve(sockets=[sock])
    finally:
        sock.close()
        await bus.close()
        if opts.home is not None and not opts.read_only:
            info_file(opts.home).unlink(missing_ok=True)


def run(config: BusConfig, opts: WebOptions, say: Callable[[str], None], copi_password: str | None = None) -> None:
    try:
        asyncio.run(serve(config, opts, say, copi_password))
    except KeyboardInterrupt:
        pass
