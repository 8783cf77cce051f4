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

import os
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from bus.client import BusConfig
from bus.schema.formats import CONFIG_FILE, LOCAL_LAB_FILE, FormatError, LabConfig, LabFile
from bus.settings import ConfigError, SecretName, settings

__all__ = [
    "ConfigError", "bus_config", "config_layers", "lab_config", "lab_home", "merge_layer", "read_local_lab", "read_secret", "secrets_dir",
    "state_file", "write_lab_file", "write_secret",
]


def lab_home() -> Path:
    home = settings().home
    return home.expanduser() if home else Path(platformdirs.user_data_dir("kenkyu-lab"))


def state_file(home: Path | None = None) -> Path:
    return (home or lab_home()) / LOCAL_LAB_FILE


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


def read_secret(name: SecretName) -> str | None:
    """A credential from ``LAB_<NAME>`` or the file ``LAB_<NAME>_FILE`` names (a Secret mount or `lab up`'s 0600 file)."""
    return settings().secret(name)


def read_local_lab(home: Path | None = None) -> LabFile | None:
    """The lab `lab up` recorded here; None when there is none, or while the supervisor is still writing it."""
    path = state_file(home)
    if not path.is_file():
        return None
    try:
        return LabFile.parse(path.read_text())
    except FormatError as e:
        if "not valid JSON" in str(e):  # written with O_TRUNC: a reader may catch it half-written
            return None
        raise ConfigError(f"{path}: {str(e).removeprefix(LOCAL_LAB_FILE + ': ')}") from None


def write_lab_file(info: LabFile, home: Path | None = None) -> Path:
    """``lab.json``, 0600: it holds the co-PI's credential."""
    return write_secret(state_file(home), info.dump())


def bus_config(user: str, url: str | None = None, name: str | None = None) -> BusConfig:
    s = settings()
    url = url or s.nats_url
    password = s.secret("nats_password")
    local = read_local_lab()
    if url is None and local:
        url = local.url
    if password is None and local and local.serves(url):
        password = local.credentials.get(user)
        secret = secrets_dir() / user
        if password is None and secret.is_file():
            password = secret.read_text().strip()
    if s.nats_user:
        user = s.nats_user
    replicas = s.nats_replicas or (local.cluster if local else 1)
    return BusConfig(
        url=url or "nats://127.0.0.1:4222", user=user if password else None, password=password, name=name or f"lab-{user}", replicas=replicas
    )


def lab_config(home: Path | None = None) -> LabConfig:
    """``$LAB_HOME/config.yaml`` (or ``LAB_CONFIG``): executor, mind and literature sections (read by ``services.host.wiring``).

    ``LAB_CONFIG`` may name a directory (a mounted ConfigMap, k8s/): its ``*.yaml`` files in name order, each one's
    mappings merged over the ones before, so an overlay's file holds only what differs from the base's.
    """
    path = settings().config or (home or lab_home()) / CONFIG_FILE
    try:
        if path.is_dir():
            return LabConfig.parse(yaml.safe_dump(config_layers(path)), where=str(path))
        if not path.is_file():
            return LabConfig()
        return LabConfig.parse(path.read_text(), where=str(path))
    except FormatError as e:
        raise ConfigError(str(e)) from None


def config_layers(folder: Path) -> dict[str, Any]:
    """The ``*.yaml`` files of ``folder`` in name order, merged: a mapping merges key by key, anything else replaces."""
    merged: dict[str, Any] = {}
    for path in sorted(folder.glob("*.yaml")):  # a ConfigMap volume's ..data links start with a dot: not matched
        try:
            layer = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise FormatError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise FormatError(f"{path}: expected a mapping at the top level")
        merged = merge_layer(merged, layer)
    return merged


def merge_layer(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base``: mappings merge recursively; a list, a value or null replaces what was there."""
    out = dict(base)
    for key, value in layer.items():
        out[key] = merge_layer(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
