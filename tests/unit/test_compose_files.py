"""The one-host deployment (deploy/compose.yaml, .env.example, docs/compose.md's loop) keeps the lab's rules: credentials only as files, hardened services."""

from __future__ import annotations

import re

import yaml

from bus.permissions import AUTH, JOB_USER
from bus.schema import ROLES, JobSpec, NatsAccess
from services.executors.render import DockerSettings, docker_container, docker_experiment_container, docker_job_dir, docker_job_file
from services.host.jobs import runner_access
from tests.manifests import REPO, _compose, _env_example, example


def test_compose_runs_nats_and_six_agents_on_a_bus_network() -> None:
    compose = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"nats-init", "nats", "auth", *ROLES, "web"}
    for role in ROLES:
        svc = services[role]
        assert svc["command"] == ["lab", "agent", role] and svc["user"] == "10001:10001" and svc["read_only"] is True
        assert svc["environment"]["LAB_NATS_USER"] == role
        assert svc["healthcheck"]["test"][-1] == f"{svc['environment']['LAB_HOME']}/run/{role}.ready"
    assert compose["networks"]["bus"] == {"name": "lab-bus", "internal": True}
    options = yaml.safe_load((REPO / "deploy/config.yaml").read_text())["executor"]["docker"]
    assert options["network"] == "lab-bus"
    dockerfile = (REPO / "deploy/Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile and "ARG BASE=" in dockerfile and "whl/cpu" in dockerfile


def test_compose_nats_can_write_a_fresh_volume_and_jobs_get_no_password_in_their_env() -> None:
    """A new named volume is root-owned: a root one-shot hands it to NATS's uid before NATS starts."""
    compose_text = (REPO / "deploy/compose.yaml").read_text()
    compose = yaml.safe_load(compose_text)
    nats, init = compose["services"]["nats"], compose["services"]["nats-init"]
    data = next(v for v in nats["volumes"] if v.endswith(":/data"))
    assert data in init["volumes"] and init["image"] == nats["image"]
    uid = nats["user"].split(":")[0]
    assert init["user"] == "0:0" and init["entrypoint"] == ["chown", "-R", f"{nats['user']}", "/data"]
    assert uid != "0" and nats["depends_on"]["nats-init"] == {"condition": "service_completed_successfully"}
    assert "--build" not in compose_text  # compose has no build: key; docs/compose.md builds the image first
    # Each job's runner logs in as its own user with its job's key, which rides in its description
    # file alone (issue 16): no shared runner password anywhere, in a file, a mount or an environment.
    engineer = compose["services"]["engineer"]["environment"]
    assert engineer["LAB_RUNNER_USER"] == JOB_USER
    assert not {"LAB_RUNNER_PASSWORD", "LAB_RUNNER_PASSWORD_FILE"} & set(engineer)
    options = yaml.safe_load((REPO / "deploy/config.yaml").read_text())["executor"]["docker"]
    s = DockerSettings.model_validate(options)
    assert s.nats_password_file is None and s.open_network in {n.get("name") for n in compose["networks"].values()}
    job = runner_access(NatsAccess(url=engineer["LAB_RUNNER_NATS_URL"], user=engineer["LAB_RUNNER_USER"]), example(network=True), "k" * 64)
    assert job is not None
    job_spec = example(network=True).model_copy(update={"nats": job, "status_key": "k" * 64})
    spec = docker_container(job_spec, s)
    assert "LAB_JOB" not in spec["environment"] and "LAB_NATS_PASSWORD_FILE" not in spec["environment"]
    runner_sees = JobSpec.model_validate_json(docker_job_file(job_spec, s)).nats
    assert (runner_sees.user, runner_sees.password) == ("job.proj.proj-exp-1", "k" * 64)
    assert spec["volumes"] == {"lab-job-proj-exp-1": {"bind": s.scratch_dir, "mode": "rw"},
                               docker_job_dir("proj-exp-1", s): {"bind": "/run/lab/job", "mode": "ro"}}
    # Even a config that still names a shared password file mounts it only for a shared-user job.
    old = s.model_copy(update={"nats_password_file": "/etc/kenkyu-lab/runner-password"})
    assert "/etc/kenkyu-lab/runner-password" not in docker_container(job_spec, old)["volumes"]
    assert docker_container(example(), old)["volumes"]["/etc/kenkyu-lab/runner-password"]["mode"] == "ro"
    experiment = docker_experiment_container(example(network=True), s)
    assert experiment["shm_size"] == f"{s.shm_size_mb}m" and experiment["network"] == s.open_network
    assert experiment["volumes"] == {"lab-job-proj-exp-1": {"bind": s.scratch_dir, "mode": "rw"}}


COMPOSE_CREDENTIALS = re.compile(r"(PASSWORD|SECRET|API_KEY|TOKEN)$")


def test_compose_agents_read_every_credential_from_a_secret_file() -> None:
    """Issue 12 on one host: no agent has a credential in its environment; each reads its own file-based secret."""
    compose = _compose()
    services = compose["services"]
    secrets = compose["secrets"]
    for name, svc in services.items():
        env = svc.get("environment", {})
        leaked = {k for k, v in env.items() if COMPOSE_CREDENTIALS.search(k) or re.search(r"\$\{?[A-Z_]*(PASSWORD|SECRET|API_KEY)", str(v))}
        assert not leaked, (name, leaked)
        assert name == "nats" or "env_file" not in svc, name  # .env holds the server's passwords
    for name, svc in services.items():  # every secret a service names is declared, as a file
        assert set(svc.get("secrets", [])) <= set(secrets), (name, set(svc.get("secrets", [])) - set(secrets))
    for role in ROLES:
        svc = services[role]
        env = svc["environment"]
        own = {f"{role}_password", "openai_api_key"} | ({"job_secret"} if role == "engineer" else set())
        assert set(svc["secrets"]) == own, role  # its own password, no other role's
        assert env["LAB_NATS_PASSWORD_FILE"] == f"/run/secrets/{role}_password"
        assert env["LAB_LLM_API_KEY_FILE"] == "/run/secrets/openai_api_key"
        assert (env.get("LAB_JOB_SECRET_FILE") == "/run/secrets/job_secret") is (role == "engineer")
    for name, spec in secrets.items():
        assert spec == {"file": f"./secrets/{name}"}, name
    assert "/deploy/secrets/" in (REPO / ".gitignore").read_text().splitlines()
    readme = (REPO / "docs/compose.md").read_text()
    assert "deploy/secrets" in readme and "chown 10001" in readme


def _readme_compose_block() -> str:
    readme = (REPO / "docs/compose.md").read_text()
    section = readme[readme.index("# One host instead: Docker Compose"):]
    return section[section.index("```bash"):section.index("```", section.index("```bash") + 3)]


def test_the_readme_makes_every_compose_secret_and_every_password_the_server_needs() -> None:
    """docs/compose.md's one loop writes every file the compose secrets name, and every password of .env."""
    block = _readme_compose_block()
    loop_users = re.search(r"for u in ([A-Z ]+); do", block).group(1).split()
    assert {f"{u}_PASSWORD" for u in loop_users} == {k for k in _env_example() if k.endswith("_PASSWORD")}
    as_files = re.search(r"case \$u in ([A-Z|]+)\)", block).group(1).split("|")
    assert set(as_files) <= set(loop_users)
    made = {f"{u.lower()}_password" for u in as_files} | set(re.findall(r"> deploy/secrets/(\w+)", block))
    declared = {spec["file"].removeprefix("./secrets/") for spec in _compose()["secrets"].values()}
    assert made == declared, (made ^ declared)
    # The issuer seed and AUTH_ISSUER come from one key pair, made by the lab's own nkey code.
    assert "new_account_seed()" in block and "public_key(s), s)" in block
    assert 'printf %s "$seed" > deploy/secrets/auth_issuer_seed' in block and "AUTH_ISSUER=$issuer" in block


def test_compose_auth_service_is_hardened_like_the_agents_and_reads_its_credentials_from_files() -> None:
    """Compose runs the lab's auth service (k8s lab-auth): per-job runner users need it (issue 16)."""
    compose = _compose()
    auth, agent = compose["services"]["auth"], compose["x-agent"]
    assert auth["command"] == ["python", "-m", "services.auth"]
    for key in ("image", "user", "read_only", "cap_drop", "security_opt", "restart"):
        assert auth[key] == agent[key], key
    assert auth["user"] == "10001:10001" and auth["read_only"] is True and auth["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in auth["security_opt"] and "/tmp" in auth["tmpfs"]
    assert auth["networks"] == ["bus"] and "ports" not in auth  # NATS only: the bus network is internal
    assert auth["depends_on"]["nats"] == {"condition": "service_healthy"}
    assert auth["deploy"]["replicas"] == 2  # one queue group (services.auth.callout.QUEUE): either answers
    env = auth["environment"]
    assert env["LAB_NATS_USER"] == AUTH and env["LAB_NATS_URL"] == "nats://nats:4222"
    files = {var: env[f"{var}_FILE"] for var in ("LAB_NATS_PASSWORD", "LAB_JOB_SECRET", "LAB_AUTH_ISSUER_SEED")}
    assert files == {"LAB_NATS_PASSWORD": "/run/secrets/auth_password", "LAB_JOB_SECRET": "/run/secrets/job_secret",
                     "LAB_AUTH_ISSUER_SEED": "/run/secrets/auth_issuer_seed"}
    assert set(auth["secrets"]) == {"auth_password", "job_secret", "auth_issuer_seed"}
    assert not {"LAB_NATS_PASSWORD", "LAB_JOB_SECRET", "LAB_AUTH_ISSUER_SEED"} & set(env) and "env_file" not in auth
    assert auth["healthcheck"]["test"] == ["CMD", "test", "-f", env["LAB_AUTH_READY_FILE"]]
    assert env["LAB_AUTH_READY_FILE"].startswith("/tmp/")  # a tmpfs: the root filesystem is read-only
    # The engineer hands out per-job users, so it waits for the service that admits them.
    engineer = compose["services"]["engineer"]
    assert engineer["environment"]["LAB_RUNNER_USER"] == JOB_USER
    assert engineer["depends_on"] == {"nats": {"condition": "service_healthy"}, "auth": {"condition": "service_healthy"}}
    assert not [s for s in engineer["secrets"] if "runner" in s] and not [v for v in engineer["volumes"] if "runner" in v]


def test_compose_web_view_is_hardened_published_on_loopback_and_reads_its_credentials_from_files() -> None:
    """The web view (k8s/overlays/web on one host): its own NATS user, the token a file, reachable from this host alone."""
    compose = _compose()
    web, agent = compose["services"]["web"], compose["x-agent"]
    assert web["command"] == ["lab", "web", "--host", "0.0.0.0", "--port", "8765"]
    for key in ("image", "user", "read_only", "cap_drop", "security_opt", "restart", "tmpfs"):
        assert web[key] == agent[key], key
    assert web["depends_on"] == {"nats": {"condition": "service_healthy"}}
    # Loopback only; lab-bus is internal (no port of it is published), so the port rides a bridge of the web view's own.
    assert web["ports"] == ["127.0.0.1:${LAB_WEB_PORT:-8765}:8765"] and "LAB_WEB_PORT" in _env_example()
    assert web["networks"] == ["bus", "web"] and compose["networks"]["web"] == {} and "egress" not in web["networks"]
    env = web["environment"]
    assert env["LAB_NATS_USER"] == "web" and env["LAB_NATS_URL"] == "nats://nats:4222"
    assert env["LAB_NATS_PASSWORD_FILE"] == "/run/secrets/web_password" and env["LAB_WEB_TOKEN_FILE"] == "/run/secrets/web_token"
    assert set(web["secrets"]) == {"web_password", "web_token"} and "LAB_WEB_HOSTS" not in env  # loopback's names are served
    assert env["LAB_HOME"] in web["tmpfs"]  # web.json: the root filesystem is read-only
    assert "/healthz" in web["healthcheck"]["test"][-1] and web["healthcheck"]["interval"] == compose["x-ready"]["interval"]
    assert '"user": "web", "password": $WEB_PASSWORD' in (REPO / "k8s/base/nats.conf").read_text()


def _conf_variables(conf: str) -> set[str]:
    """The $NAMEs nats-server resolves from its environment: bare values, not quoted subjects or comments."""
    body = "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))
    return set(re.findall(r"(?:^|[\s:,\[])\$([A-Z][A-Z0-9_]*)\b", body))


def test_compose_nats_gets_every_variable_its_config_uses() -> None:
    conf = (REPO / "k8s/base/nats.conf").read_text()
    used = _conf_variables(conf)
    assert {"PI_PASSWORD", "AUTH_PASSWORD", "AUTH_ISSUER", "POD_NAME"} <= used and "JS" not in used
    nats = _compose()["services"]["nats"]
    assert nats["env_file"] == ".env"
    defined = set(_env_example()) | set(nats.get("environment", {}))
    assert used <= defined, used - defined
