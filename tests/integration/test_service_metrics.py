"""The auth service and the web view serve Prometheus metrics on LAB_METRICS_PORT, and they count what happened.

The auth service runs as its own process (``python -m services.auth``, as `lab up` starts it) beside a real
nats-server whose job users go to its callout; jobs connect with their key, a forged key and a stranger, and
its /metrics page, scraped over HTTP, counts them. The web view serves (``services.web.serve``) in this
process against a real nats-server: pages, a 404, a refused Host and a refused POST, each counted by route
template and status on the page its exporter serves.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bus import metrics, natsjwt
from bus.client import Bus, BusConfig
from bus.errors import ConnectError
from bus.jobkeys import JobKeys, new_secret
from bus.permissions import AUTH, WEB, job_user
from bus.server import EmbeddedServer, free_port, new_credentials
from bus.settings import Settings
from services.common.config import write_secret
from services.web.serve import WebOptions, serve
from tests.conftest import ROOT
from tests.integration.test_metrics import get, scrape

pytestmark = pytest.mark.integration


async def test_the_auth_service_counts_admitted_and_refused_connections(tmp_path: Path) -> None:
    seed, secret = natsjwt.new_account_seed(), new_secret()
    creds = new_credentials()
    server = EmbeddedServer(tmp_path / "nats", credentials=creds, auth_issuer=natsjwt.public_key(seed)).start()
    port = free_port()
    secrets = tmp_path / "secrets"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")} | {"PYTHONPATH": str(ROOT)} | Settings.environ(
        nats_url=server.url, nats_user=AUTH, nats_password_file=write_secret(secrets / "auth", creds[AUTH], private_folder=True),
        job_secret_file=write_secret(secrets / "job", secret), auth_issuer_seed_file=write_secret(secrets / "seed", seed),
        auth_ready_file=tmp_path / "auth.ready", metrics_port=port,
    )
    proc = subprocess.Popen([sys.executable, "-m", "services.auth"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "auth.ready").exists() and proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (tmp_path / "auth.ready").exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "not ready"
        before = scrape(port)
        assert ("lab_auth_requests_total", frozenset({("outcome", "refused")})) in before  # there at zero, before any request
        keys = JobKeys(secret)
        for job in ("j1", "j2"):
            bus = await Bus.connect(BusConfig(url=server.url, user=job_user("p1", job), password=keys.key("p1", job)), reconnect=False, timeout=15)
            await bus.close()
        for user, password in ((job_user("p1", "j1"), keys.key("p2", "j1")), ("stranger", "x" * 64), (job_user("p1", "j3"), "0" * 64)):
            with pytest.raises(ConnectError, match="refused"):
                await Bus.connect(BusConfig(url=server.url, user=user, password=password), reconnect=False, timeout=15)
        after = scrape(port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.stop()

    def moved(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert moved("lab_auth_requests_total", outcome="admitted") == 2
    assert moved("lab_auth_requests_total", outcome="refused") == 3
    assert moved("lab_auth_request_seconds_count") == 5
    assert 0 < moved("lab_auth_request_seconds_sum") < 5  # each answer a signature or two: milliseconds, not seconds
    assert get(after, "process_resident_memory_bytes") > 0  # the service's own process


def _get(url: str, host: str | None = None, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method, headers={"Host": host} if host else {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except urllib.error.URLError:
        return -1  # not listening yet


async def test_the_web_view_counts_requests_by_route_template_and_status(nats_server, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LAB_METRICS_PORT", "0")  # this process's exporter (already serving if another test started it)
    port = free_port()
    config = BusConfig(url=nats_server.url, user=WEB, password=nats_server.credentials[WEB], name="test-web")
    admin = await Bus.connect(BusConfig(url=nats_server.url, user="lab", password=nats_server.credentials["lab"]))
    await admin.ensure_topology()
    await admin.close()
    task = asyncio.create_task(serve(config, WebOptions(port=port, read_only=True), say=lambda _: None))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(_get, f"{base}/healthz") != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        exporter = metrics._served["port"]
        before = await asyncio.to_thread(scrape, exporter)
        codes = [await asyncio.to_thread(_get, f"{base}{path}") for path in ("/", "/", "/p/web-metrics-nosuch", "/nowhere")]
        codes.append(await asyncio.to_thread(_get, f"{base}/", "evil.example"))
        codes.append(await asyncio.to_thread(_get, f"{base}/p/web-metrics-nosuch/stop", None, "POST"))
        after = await asyncio.to_thread(scrape, exporter)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def moved(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert codes[:2] == [200, 200] and codes[3:] == [404, 400, 403], codes
    assert moved("lab_web_requests_total", route="/", method="GET", status="200") == 2
    project = moved("lab_web_requests_total", route="/p/{project}", method="GET", status=str(codes[2]))
    assert project == 1, codes  # by the route's template: no project's name is ever a label
    assert not [labels for name, labels in after if name == "lab_web_requests_total" and "web-metrics-nosuch" in str(labels)]
    assert moved("lab_web_requests_total", route="other", method="GET", status="404") == 1  # no route matched
    assert moved("lab_web_requests_total", route="other", method="GET", status="400") == 1  # a foreign Host, refused before routing
    assert moved("lab_web_requests_total", route="/p/{project}/stop", method="POST", status="403") == 1
    assert moved("lab_web_request_seconds_count", route="/") == 2 and moved("lab_web_request_seconds_sum", route="/") > 0
