"""The web view's pages and actions over a real nats-server, as the `web` NATS user: no browser.

Read-only without the co-PI token (no box, every POST refused with 403); with
it, a note and a stop reach the bus as co-PI notes. The `web` user reads what
the pages show and may not speak as a role or write state.
"""

from __future__ import annotations

import asyncio

import nats.errors
import pytest
from starlette.testclient import TestClient

from bus import subjects
from bus.client import Bus, BusConfig
from bus.permissions import WEB
from bus.replay import read
from bus.schema import ArchiveRecord, CodeChange, IdeaOutcome
from bus.store import Artifacts, IdeaArchive, StateStore
from services.web.app import STOP_NOTE, create_app
from tests.conftest import config_for
from tests.web_convo import P, conversation

TOKEN = "t" * 32
STATE = {"project": P, "template": "grokking", "stage": "done", "ideas": {"wd-1": {}}, "experiments": {"a": {}, "b": {}}, "round": 1,
         "budget": {"max_ideas": 2, "max_runs": 12, "max_revision_rounds": 1}, "usage": {}, "outcome": "accepted after 1 revision round",
         "started_at": 0.0, "estimate": {"runs": 12, "job_s": 42.0, "job_s_from": "median of 7 archived runs", "gpus_per_job": 1,
                                         "cpus_per_job": 1.0, "gpu_hours": 0.14, "cpu_hours": 0.14}}
ARCHIVE = [
    ArchiveRecord(template="grokking", signature="a1", project=P, recorded_at=1.7e9, outcome=IdeaOutcome(
        idea_id="wd-1", changes={"weight_decay": 3.0}, status="better", improvement=0.12, effect_size=1.4, ci_low=0.05, ci_high=0.2,
        p_adjusted=0.01, replicated=True, source="analysis")),
    ArchiveRecord(template="grokking", signature="a2", project="older-project", recorded_at=1.6e9, outcome=IdeaOutcome(
        idea_id="lr-2", changes={"lr": 0.005}, status="worse", improvement=-0.3, source="analysis")),
    ArchiveRecord(template="model_merging", signature="b1", project="merge-project", recorded_at=1.65e9, outcome=IdeaOutcome(
        idea_id="variant-daret", code=CodeChange(summary="DARE then TIES", variant="dare_ties"), status="not_novel",
        reason="Not novel: yu2024dare")),
]
PAPER = "# Stronger decay\n\n![curve](figures/figure-a.png)\n\nwd-1 beats the baseline.\n"


async def _seed(server) -> None:
    bus = await Bus.connect(config_for(server))
    try:
        await bus.ensure_topology()
        for env in conversation():
            await bus.publish(env)
        await (await StateStore.open(bus)).write(f"pi.{P}", {"state": STATE}, 0)
        store = await Artifacts.open(bus)
        await store.put(f"{P}/paper/round-2/paper.md", PAPER.encode())
        await store.put(f"{P}/paper/round-2/figures/figure-a.png", b"\x89PNG fake")
        archive = await IdeaArchive.open(bus)
        for record in ARCHIVE:
            await archive.put(record)
    finally:
        await bus.close()


async def _convo(server) -> list:
    bus = await Bus.connect(config_for(server))
    try:
        return [e.envelope async for e in read(bus, subjects.convo_all(P))]
    finally:
        await bus.close()


def web_config(server) -> BusConfig:
    return BusConfig(url=server.url, user=WEB, password=server.credentials[WEB], name="test-web")


@pytest.fixture
def client(nats_server):
    asyncio.run(_seed(nats_server))
    app = create_app(TOKEN, config=web_config(nats_server), copi_password=nats_server.credentials["copi"])
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        yield c


def test_projects_list(client):
    html = client.get("/").text
    assert f'<a href="/p/{P}">{P}</a>' in html and "accepted after 1 revision round" in html and "1/2" in html and "2/12" in html


def test_the_idea_archive_page_lists_every_template_s_ideas_and_is_linked_from_the_nav(client):
    assert '<a href="/ideas">Idea archive</a>' in client.get("/").text  # every page's header links it
    html = client.get("/ideas").text
    assert html.index('id="archive-grokking"') < html.index('id="archive-model_merging"')  # templates by name
    grokking = html[html.index('id="archive-grokking"'):html.index('id="archive-model_merging"')]
    assert "2 ideas, 1 beat the baseline" in grokking
    assert grokking.index("older-project") < grokking.index(f'<a href="/p/{P}">{P}</a>')  # oldest first, projects linked
    assert "weight_decay=3.0" in grokking and "+0.12" in grokking and "[0.05, 0.2]" in grokking and "yes" in grokking
    merging = html[html.index('id="archive-model_merging"'):]
    assert "code: dare_ties" in merging and "not_novel" in merging and "Not novel: yu2024dare" in merging
    one = client.get("/ideas?template=model_merging").text  # one template: its section only
    assert 'id="archive-model_merging"' in one and 'id="archive-grokking"' not in one
    none = client.get("/ideas?template=char_lm").text
    assert "No ideas archived for template char_lm yet" in none


def test_without_the_token_the_page_is_read_only_and_actions_are_refused(client, nats_server):
    html = client.get(f"/p/{P}").text
    assert 'id="copi-form"' not in html and 'id="stop"' not in html and "Read-only" in html
    assert client.post(f"/p/{P}/note", data={"text": "forged", "to": "pi"}).status_code == 403
    assert client.post(f"/p/{P}/stop").status_code == 403
    client.cookies.set("lab_copi", "x" * 32)
    assert client.post(f"/p/{P}/note", data={"text": "forged", "to": "pi"}).status_code == 403
    assert client.get(f"/p/{P}?token=wrong").status_code == 403
    assert [e.body.note.text for e in asyncio.run(_convo(nats_server)) if e.body.type == "copi_note"] == ["only vary weight_decay"]


def test_the_token_link_gives_the_co_pi_box_and_its_notes_reach_the_bus(client, nats_server):
    r = client.get(f"/p/{P}?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/p/{P}" and "httponly" in r.headers["set-cookie"].lower()
    html = client.get(f"/p/{P}").text
    assert 'id="copi-form"' in html and 'id="stop"' in html
    sent = client.post(f"/p/{P}/note", data={"text": "avoid warmup_steps", "to": "engineer"})
    assert sent.status_code == 200, sent.text
    stop = client.post(f"/p/{P}/stop")
    assert stop.status_code == 200
    # A page of another site cannot post with the cookie, even where a browser would send it.
    assert client.post(f"/p/{P}/stop", headers={"origin": "http://evil.example"}).status_code == 403
    assert client.post(f"/p/{P}/note", data={"text": "  ", "to": "pi"}).json() == {"error": "the note is empty"}
    assert client.post(f"/p/{P}/note", data={"text": "hi", "to": "wizard"}).status_code == 400
    assert client.post("/p/nope/note", data={"text": "hi", "to": "pi"}).status_code == 404
    notes = [(e.sender, e.recipient, e.body.note.id, e.body.note.text) for e in asyncio.run(_convo(nats_server)) if e.body.type == "copi_note"]
    assert notes[1:] == [("copi", "engineer", sent.json()["id"], "avoid warmup_steps"), ("copi", "pi", stop.json()["id"], STOP_NOTE)]


def test_bearer_token_or_the_co_pi_nats_login_work_for_scripts(client, nats_server):
    r = client.post(f"/p/{P}/note", data={"text": "hello", "to": "pi"}, headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["to"] == "pi"
    assert client.post(f"/p/{P}/note", data={"text": "hi", "to": "pi"}, auth=("copi", nats_server.credentials["copi"])).status_code == 200
    assert client.post(f"/p/{P}/note", data={"text": "hi", "to": "pi"}, auth=("copi", "wrong")).status_code == 403
    assert client.post(f"/p/{P}/note", data={"text": "hi", "to": "pi"}, auth=("pi", nats_server.credentials["pi"])).status_code == 403


def test_sections_show_analysis_reviews_and_the_paper_with_its_figures(client):
    html = client.get(f"/p/{P}/sections").text
    assert "0.61 ± 0.02 (n=3)" in html and "verdict-better" in html
    # A project that never waited for approval still shows its estimate, beside what it spent.
    assert 'id="spent"' in html and "12 runs x 42 s (median of 7 archived runs) x 1 GPU: 0.14 GPU-h" in html
    assert "PI — act: Two more seeds ran." in html and "not answered yet" in html
    assert f'<img src="/p/{P}/a/paper/round-2/figures/figure-a.png" alt="curve"' in html and "wd-1 beats the baseline." in html
    assert f'href="/p/{P}/a/paper/round-2/paper.pdf"' in html and "Accepted: the reviewers accept" in html
    assert client.get(f"/p/{P}/a/paper/round-2/figures/figure-a.png").content == b"\x89PNG fake"
    assert client.get(f"/p/{P}/a/paper/round-2/paper.md").text == PAPER
    assert client.get(f"/p/{P}/a/paper/round-9/paper.md").status_code == 404
    assert client.get("/p/no.such/sections").status_code == 404
    assert client.get("/p/ghost").status_code == 404


def test_the_web_user_may_not_speak_as_a_role_or_write_state(nats_server):
    asyncio.run(_seed(nats_server))
    # Each subject is one JetStream stores: the admin's publish is acked, the web user's is dropped by the server.
    forbidden = [f"lab.convo.{P}.pi.engineer", f"$KV.lab_state.pi.{P}", "$O.lab_artifacts.C.x"]

    async def attempt(config: BusConfig) -> list[bool]:
        bus = await Bus.connect(config)
        acked = []
        try:
            for subject in forbidden:
                try:
                    await bus.js.publish(subject, b"{}", timeout=1)
                    acked.append(True)
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    acked.append(False)
        finally:
            await bus.close()
        return acked

    assert asyncio.run(attempt(web_config(nats_server))) == [False, False, False]
    assert asyncio.run(attempt(config_for(nats_server))) == [True, True, True]


# ---------------------------------------------------------------- `lab web` on the command line


def test_lab_web_bad_input_is_one_line(lab_env):
    import socket
    import subprocess

    from tests.conftest import lab_cmd

    _, env = lab_env
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cases = [
            (["web", "--nats", "http://x"], "bad NATS URL"),
            (["web", "--nats", f"nats://127.0.0.1:{port}"], "NATS"),  # a port that is not a NATS server
        ]
        for args, needle in cases:
            r = subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            assert "Traceback" not in r.stderr and needle in r.stderr, (args, r.stderr)


def test_lab_web_refuses_a_port_in_use(nats_server, lab_env):
    import socket
    import subprocess

    from tests.conftest import lab_cmd

    _, env = lab_env
    env = {**env, "LAB_NATS_USER": WEB, "LAB_NATS_PASSWORD": nats_server.credentials[WEB]}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run(lab_cmd("web", "--nats", nats_server.url, "--port", str(port)), env=env, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and r.stderr.strip() == f"lab: error: cannot listen on 127.0.0.1:{port}: Address already in use", r.stderr


def test_lab_web_reads_its_token_from_a_file(nats_server, lab_env, tmp_path):
    """LAB_WEB_TOKEN_FILE (a Kubernetes Secret mount): the link's token comes from the file, never the environment."""
    import json
    import subprocess
    import time

    import httpx

    from services.web.serve import info_file
    from tests.conftest import lab_cmd

    home, env = lab_env
    env = {k: v for k, v in env.items() if k != "LAB_WEB_TOKEN"}
    env.update({"LAB_NATS_USER": WEB, "LAB_NATS_PASSWORD": nats_server.credentials[WEB]})
    token_file = tmp_path / "token"
    token_file.write_text("short\n")
    r = subprocess.run(lab_cmd("web", "--nats", nats_server.url, "--port", "0"), env={**env, "LAB_WEB_TOKEN_FILE": str(token_file)},
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "at least 16 characters" in r.stderr, r.stderr
    r = subprocess.run(lab_cmd("web", "--nats", nats_server.url, "--port", "0"), env={**env, "LAB_WEB_TOKEN_FILE": str(tmp_path / "none")},
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "LAB_WEB_TOKEN_FILE" in r.stderr, r.stderr

    token = "a-token-from-a-secret-file-0123456789"
    token_file.write_text(token + "\n")
    proc = subprocess.Popen(lab_cmd("web", "--nats", nats_server.url, "--port", "0"), env={**env, "LAB_WEB_TOKEN_FILE": str(token_file)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not info_file(home).is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode() if proc.poll() is not None else "no web.json"
            time.sleep(0.2)
        info = json.loads(info_file(home).read_text())
        assert info["token"] == token
        assert httpx.get(f"{info['url']}?token={token}", follow_redirects=False).status_code in (200, 303)
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        assert httpx.post(f"{info['url']}p/{P}/note", data={"text": "hi", "to": "pi"}, headers=wrong).status_code == 403
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_pages_say_the_lab_is_not_running_while_nats_is_away_and_come_back_with_it(client, nats_server, caplog):
    """NATS stops under the web view: a readable 503 (no traceback), then the same pages again once it is back."""
    import time

    from services.web.app import NOT_RUNNING_PAGE

    assert client.get("/", headers={"accept": "text/html"}).status_code == 200
    nats_server.stop()
    for _ in range(100):  # the client notices the closed socket
        if client.get("/healthz").status_code == 503:
            break
        time.sleep(0.1)
    for path in ("/", "/ideas", f"/p/{P}"):
        r = client.get(path, headers={"accept": "text/html"})
        assert r.status_code == 503 and NOT_RUNNING_PAGE in r.text and "Traceback" not in r.text, (path, r.text)
    nats_server.start()  # the same port and store: the lab is back
    for _ in range(200):
        if client.get("/healthz").status_code == 200:
            break
        time.sleep(0.1)
    assert client.get("/", headers={"accept": "text/html"}).status_code == 200
    assert "Traceback" not in caplog.text


W = "waiting-proj"  # a project whose estimate waits for the co-PI's approval


async def _seed_waiting(server) -> None:
    from agents.pi.budget import estimate
    from bus.schema import ApprovalPolicy, Budget, TemplateSpec
    from tests.fakes import TOY_SPEC

    spec = TemplateSpec.model_validate({**TOY_SPEC, "resources": {"gpu": 1}, "time_budget_s": 3600})
    est = estimate(spec, None, Budget(max_runs=12), "offline", ApprovalPolicy(gpu_hours_over=4))
    state = {**STATE, "project": W, "stage": "approval", "experiments": {}, "outcome": "", "estimate": est.model_dump(mode="json"),
             "budget": {**STATE["budget"], "max_gpu_hours": 20}}
    bus = await Bus.connect(config_for(server))
    try:
        await (await StateStore.open(bus)).write(f"pi.{W}", {"state": state}, 0)
    finally:
        await bus.close()


async def _approvals(server, project: str) -> list:
    bus = await Bus.connect(config_for(server))
    try:
        return [e.envelope async for e in read(bus, subjects.convo_all(project)) if e.envelope and e.envelope.body.type == "project_approval"]
    finally:
        await bus.close()


def test_the_approve_button_sends_the_co_pis_approval_behind_the_same_checks_as_a_note(client, nats_server):
    asyncio.run(_seed_waiting(nats_server))
    html = client.get(f"/p/{W}").text
    assert "Waiting for approval" in html and "12.00 GPU-h" in html and 'id="approve"' not in html  # read-only: shown, not actionable
    assert client.post(f"/p/{W}/approve").status_code == 403
    client.get(f"/p/{W}?token={TOKEN}")
    html = client.get(f"/p/{W}").text
    assert 'id="approve"' in html and 'id="refuse"' in html and "over the lab&#39;s approval threshold of 4 GPU-h" in html
    assert client.post(f"/p/{W}/approve", headers={"origin": "http://evil.example"}).status_code == 403
    assert client.post(f"/p/{W}/approve", data={"decision": "refuse", "reason": " "}).status_code == 400
    assert client.post(f"/p/{P}/approve").json() == {"error": f"project {P!r} is not waiting for approval (stage done)"}
    r = client.post(f"/p/{W}/approve", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/p/{W}"
    (env,) = asyncio.run(_approvals(nats_server, W))
    assert (env.sender, env.recipient, env.body.approved) == ("copi", "pi", True)
