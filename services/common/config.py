"""Where the lab keeps things on a machine, and how a process finds its bus.

A process learns its NATS URL and credential, in order, from: explicit
arguments, ``LAB_NATS_URL``/``LAB_NATS_USER``/``LAB_NATS_PASSWORD`` (or
``LAB_NATS_PASSWORD_FILE``), then the local lab that `lab up` recorded in
``$LAB_HOME/lab.json`` and ``$LAB_HOME/secrets/<user>``.

Passwords travel in files (mode 0600, or a mounted Kubernetes Secret), never in
the environment of the processes `lab up` starts: ``/proc/<pid>/environ`` is
readable by every process of the same user, a file's mode can say who reads it.
``LAB_NATS_PASSWORD`` still works for users who set it themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from bus.client import BusConfig
from bus.errors import LabError


class ConfigError(LabError, ValueError):
    """A setting that cannot work; the message is one line."""


def lab_home() -> Path:
    home = os.environ.get("LAB_HOME")
    return Path(home).expanduser() if home else Path(platformdirs.user_data_dir("kenkyu-lab"))


def state_file(home: Path | None = None) -> Path:
    return (home or lab_home()) / "lab.json"


def secrets_dir(home: Path | None = None) -> Path:
    return (home or lab_home()) / "secrets"


def write_secret(path: Path, value: str, private_folder: bool = False) -> Path:
    """Write a credential readable only by this user: the file is created 0600, never widened then narrowed.

    With ``private_folder`` the folder is made 0700 too (``secrets/``; never the user's own ``$LAB_HOME``).
    """
    path.parent.mkdir(mode=0o700 if private_folder else 0o777, parents=True, exist_ok=True)
    if private_folder:
        path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    path.chmod(0o600)
    return path


def read_secret(var: str) -> str | None:
    """A password from ``$var`` or from the file ``$var_FILE`` names (a Secret mount or `lab up`'s 0600 file)."""
    if os.environ.get(var):
        return os.environ[var]
    path = os.environ.get(f"{var}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"{var}_FILE={path}: cannot read the credential ({e.strerror})") from None


def read_local_lab(home: Path | None = None) -> dict[str, Any] | None:
    path = state_file(home)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def bus_config(user: str, url: str | None = None, name: str | None = None) -> BusConfig:
    url = url or os.environ.get("LAB_NATS_URL")
    password = read_secret("LAB_NATS_PASSWORD")
    env_user = os.environ.get("LAB_NATS_USER")
    local = read_local_lab()
    if url is None and local:
        url = local["url"]
    if password is None and local and (url == local.get("url")):
        password = local.get("credentials", {}).get(user)
        secret = secrets_dir() / user
        if password is None and secret.is_file():
            password = secret.read_text().strip()
    if env_user:
        user = env_user
    raw = os.environ.get("LAB_NATS_REPLICAS") or (local or {}).get("cluster") or 1
    try:
        replicas = int(raw)
    except ValueError:
        raise ConfigError(f"LAB_NATS_REPLICAS={raw!r}: expected the number of NATS nodes (1, 3, 5)") from None
    return BusConfig(
        url=url or "nats://127.0.0.1:4222", user=user if password else None, password=password, name=name or f"lab-{user}", replicas=replicas
    )


def lab_config(home: Path | None = None) -> dict[str, Any]:
    """``$LAB_HOME/config.yaml`` (or ``LAB_CONFIG``): executor, mind and literature sections (read by ``services/wiring``)."""
    path = Path(os.environ["LAB_CONFIG"]) if os.environ.get("LAB_CONFIG") else (home or lab_home()) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
