"""The `lab` command as a user meets it: subprocesses, a real embedded lab, one-line errors."""

from __future__ import annotations

import json
import socket
import subprocess
import time

from tests.conftest import lab_cmd
from tests.fakes import TOY_SPEC

SPEC = TOY_SPEC


def lab(env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(lab_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert needle in lines[0], lines[0]


def start_project(home, project: str) -> None:
    """Publish a start as the co-PI would, with the credential `lab up` recorded."""
    import asyncio

    from bus.client import Bus, BusConfig
    from bus.schema import Budget, Envelope, StartProject

    info = json.loads((home / "lab.json").read_text())

    async def main() -> None:
        bus = await Bus.connect(BusConfig(url=info["url"], user="copi", password=info["credentials"]["copi"]))
        start = StartProject(template="toy", template_object=f"{project}/template.tar.gz", spec=SPEC, budget=Budget(max_ideas=2, max_revision_rounds=0))
        await bus.publish(Envelope(project=project, sender="copi", recipient="pi", body=start))
        await bus.close()

    asyncio.run(main())


def test_up_say_logs_down(lab_env):
    home, env = lab_env
    r = lab(env, "up", "--detach")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "lab is up" in r.stdout
    try:
        one_line_error(lab(env, "up", "--detach"), "already running")
        status = json.loads(lab(env, "status", "--json").stdout)
        assert sorted(a for a, v in status["agents"].items() if v) == sorted(["pi", "literature", "engineer", "analyst", "writer", "reviewer"])

        start_project(home, "demo")
        for _ in range(100):
            status = json.loads(lab(env, "status", "--json").stdout)
            if any(p["project"] == "demo" for p in status["projects"]):
                break
            time.sleep(0.2)
        one_line_error(lab(env, "say", "--project", "nope", "only vary width"), "unknown project 'nope'")
        one_line_error(lab(env, "say", "--project", "demo", "--to", "wizard", "hi"), "unknown role 'wizard'")
        r = lab(env, "say", "--project", "demo", "only vary width")
        assert r.returncode == 0 and "sent to pi" in r.stdout, r.stderr

        acks = []
        for _ in range(60):
            out = lab(env, "logs", "--json", "--project", "demo").stdout
            entries = [json.loads(line) for line in out.splitlines() if line.strip()]
            acks = [e for e in entries if e["body"]["type"] == "note_ack"]
            if acks:
                break
            time.sleep(0.5)
        assert acks and acks[0]["sender"] == "pi" and acks[0]["recipient"] == "copi"
        assert acks[0]["body"]["constraints"] == {"allowed_knobs": ["width"]}
        kinds = [e["body"]["type"] for e in entries]
        assert kinds[0] == "start_project" and "copi_note" in kinds and "experiment_request" in kinds
        # Human-readable replay, filtered by role.
        human = lab(env, "logs", "--project", "demo", "--role", "literature").stdout
        assert "is this new?" in human and "→" in human
        assert "is this new? [lr-" in human or "is this new? [width-" in human, "idea ids are shown, not eaten as markup"
        status = json.loads(lab(env, "status", "--json").stdout)
        demo = next(p for p in status["projects"] if p["project"] == "demo")
        assert demo["notes"][0]["text"] == "only vary width" and demo["constraints"] == {"allowed_knobs": ["width"]}
    finally:
        r = lab(env, "down")
    assert r.returncode == 0 and "lab stopped" in r.stdout
    assert not (home / "lab.json").exists()
    stored = lab(env, "status")
    assert stored.returncode == 0 and "lab is not running; showing what is stored" in stored.stderr, stored.stderr


def test_bad_arguments_get_one_line(lab_env, tmp_path):
    _, env = lab_env
    import shutil

    from agents.templates import BUILTIN_DIR

    broken = tmp_path / "grokking"
    shutil.copytree(BUILTIN_DIR / "grokking", broken)
    text = (broken / "template.yaml").read_text().replace("default: 0.003", "default: 7.5", 1)
    (broken / "template.yaml").write_text(text)
    one_line_error(lab(env, "run", "--template", str(broken)), "knobs.lr")
    one_line_error(lab(env, "up", "--nats", "localhost:4222"), "bad NATS URL")
    one_line_error(lab(env, "agent", "wizard"), "unknown role 'wizard'")
    one_line_error(lab(env, "logs", "--project", "a.b"), "invalid project 'a.b'")
    one_line_error(lab(env, "run", "--template", "no-such-template"), "unknown template 'no-such-template'")
    one_line_error(lab(env, "up", "--mind", "psychic"), "unknown mind 'psychic'")
    # Typer's own usage errors too: one line, the nearest valid option or command, never its boxed five lines.
    one_line_error(lab(env, "run", "--tempalte", "grokking"), "no such option --tempalte; did you mean --template?")
    one_line_error(lab(env, "status", "--wdie"), "no such option --wdie; did you mean --wide?")
    one_line_error(lab(env, "rnu"), "no such command rnu; did you mean run?")
    one_line_error(lab(env, "run", "--max-ideas", "many", "--template", "grokking"), "--max-ideas")
    one_line_error(lab(env, "lit", "--hlep"), "did you mean --help?")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(lab(env, "up", "--port", str(port)), f"port {port} is already in use")


def test_help_for_every_command(lab_env):
    _, env = lab_env
    r = lab(env, "--help")
    assert r.returncode == 0
    for cmd in ("up", "down", "status", "logs", "say", "run", "agent", "ideas"):
        assert cmd in r.stdout
        sub = lab(env, cmd, "--help")
        assert sub.returncode == 0 and "Usage" in sub.stdout, cmd
