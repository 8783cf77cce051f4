"""The compose nats and auth services run for real on local ports (no Docker needed): JetStream on one node, each job's runner admitted as its own user."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bus.schema import JobSpec, NatsAccess
from services.executors.render import DockerSettings, docker_job_file
from services.host.jobs import runner_access
from tests.manifests import REPO, _compose, _env_example, example


@contextlib.contextmanager
def _compose_nats(tmp_path: Path, env: dict[str, str]) -> Iterator[str]:
    """The compose nats service's own command, run for real on local ports with ``env`` as its .env; yields its URL."""
    import time
    import urllib.request

    from bus.server import free_port, server_binary

    nats = _compose()["services"]["nats"]
    assert nats["command"][:2] == ["sh", "-c"]
    client, monitor = free_port(), free_port()
    conf = (REPO / "k8s/base/nats.conf").read_text().replace("0.0.0.0:4222", f"127.0.0.1:{client}").replace(
        "0.0.0.0:8222", f"127.0.0.1:{monitor}").replace("/data/jetstream", str(tmp_path / "js")).replace(
        "/var/run/nats/nats.pid", str(tmp_path / "nats.pid")).replace("0.0.0.0:6222", f"127.0.0.1:{free_port()}")
    (tmp_path / "in.conf").write_text(conf)
    script = nats["command"][2].replace("/etc/nats/nats.conf", str(tmp_path / "in.conf")).replace(
        "/tmp/nats.conf", str(tmp_path / "nats.conf")).replace("exec nats-server", f"exec {server_binary()}")
    proc = subprocess.Popen(["sh", "-c", script], env={**os.environ, **env, **nats.get("environment", {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        health = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # the full check: JetStream's meta layer has a leader (one node: itself)
                health = urllib.request.urlopen(f"http://127.0.0.1:{monitor}/healthz", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        assert '"ok"' in health, health
        assert "cluster {" not in (tmp_path / "nats.conf").read_text()
        yield f"nats://127.0.0.1:{client}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _compose_env() -> dict[str, str]:
    """deploy/.env as docs/compose.md's loop fills it: every CHANGE-ME a value, AUTH_ISSUER a real issuer's key."""
    from bus import natsjwt

    env = {k: (f"pw-{k.lower()}" if v == "CHANGE-ME" else v) for k, v in _env_example().items()}
    return env | {"AUTH_ISSUER": natsjwt.public_key(natsjwt.new_account_seed())}


def test_compose_nats_starts_as_one_jetstream_node_from_the_env_example(tmp_path: Path) -> None:
    """The compose nats command, run for real: the Kubernetes config minus its cluster routes serves JetStream alone."""
    import nats as nats_client

    env = _compose_env()
    with _compose_nats(tmp_path, env) as url:

        async def as_pi() -> None:
            nc = await nats_client.connect(url, user="pi", password=env["PI_PASSWORD"], inbox_prefix="_INBOX_pi")
            try:
                await nc.jetstream().account_info()
            finally:
                await nc.close()

        asyncio.run(as_pi())


def test_compose_auth_service_admits_each_job_s_runner_as_its_own_user(tmp_path: Path) -> None:
    """Compose's auth service and engineer settings, run for real against compose's nats (no Docker needed):
    the runner of a job the engineer starts logs in with the key its description carries, and no other
    key; the shared runner user is not what it logs in as."""
    import time

    from bus import natsjwt
    from bus.client import Bus, BusConfig
    from bus.errors import ConnectError
    from bus.jobkeys import JobKeys, new_secret
    from services.runner.runner import Runner

    compose = _compose()
    seed, secret = natsjwt.new_account_seed(), new_secret()
    env = _compose_env() | {"AUTH_ISSUER": natsjwt.public_key(seed)}
    # The files docs/compose.md's loop writes under deploy/secrets/, as compose mounts them at /run/secrets/.
    files = {"auth_password": env["AUTH_PASSWORD"], "job_secret": secret + "\n", "auth_issuer_seed": seed}
    (tmp_path / "secrets").mkdir()
    for name, value in files.items():
        (tmp_path / "secrets" / name).write_text(value)
    auth = compose["services"]["auth"]
    assert set(auth["secrets"]) == set(files)

    def here(value: str) -> str:
        for inside, outside in (("/run/secrets/", f"{tmp_path}/secrets/"), ("/tmp", f"{tmp_path}/tmp")):
            if value.startswith(inside):
                return outside + value.removeprefix(inside)
        return value

    with _compose_nats(tmp_path, env) as url:
        service_env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
        service_env |= {k: here(v) for k, v in auth["environment"].items()} | {"LAB_NATS_URL": url}
        (tmp_path / "tmp").mkdir()
        ready = Path(service_env["LAB_AUTH_READY_FILE"])
        log = (tmp_path / "auth.log").open("wb")
        proc = subprocess.Popen([sys.executable, *auth["command"][1:]], env=service_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not ready.is_file():
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "auth.log").read_text()[-2000:]
                time.sleep(0.1)
            # The job as the compose engineer hands it to its runner (LAB_RUNNER_USER, config.yaml, the job file).
            engineer = compose["services"]["engineer"]["environment"]
            s = DockerSettings.model_validate(yaml.safe_load((REPO / "deploy/config.yaml").read_text())["executor"]["docker"])
            key = JobKeys(secret).key("proj", "proj-exp-1")
            access = runner_access(NatsAccess(url=url, user=engineer["LAB_RUNNER_USER"]), example(), key)
            runner_job = JobSpec.model_validate_json(docker_job_file(example().model_copy(update={"nats": access, "status_key": key}), s))
            user, password = Runner.credential(runner_job.nats)
            assert user == "job.proj.proj-exp-1" and password == key

            async def log_in() -> None:
                bus = await Bus.connect(BusConfig(url=url, user=user, password=password, name="t-runner"), reconnect=False, timeout=15)
                await bus.close()
                for other in (JobKeys(secret).key("proj", "proj-exp-2"), JobKeys(new_secret()).key("proj", "proj-exp-1")):
                    with pytest.raises(ConnectError, match="refused"):
                        await Bus.connect(BusConfig(url=url, user=user, password=other, name="t-forged"), reconnect=False, timeout=15)

            asyncio.run(log_in())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
        assert "runner admitted" in (tmp_path / "auth.log").read_text()
