"""bus/settings.py: one model for every LAB_* variable, its generated table, and no direct reads elsewhere."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from bus import partitions
from bus.schema import ROLES
from bus.schema.constants import CONVO_STREAM, DLQ_STREAM, JOBS_STREAM
from bus.settings import ConfigError, Settings, env_name, settings, table

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("bus", "agents", "services")
OWNER = ROOT / "bus" / "settings.py"


def _sources() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py") if p != OWNER)


# ---------------------------------------------------------------- the table


def test_the_committed_table_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "settings.md").read_text()
    assert committed == table(), "docs/settings.md is stale: run `python -m bus.settings > docs/settings.md`"


def test_every_variable_is_in_the_table_with_a_description_and_its_readers() -> None:
    text = table()
    for name, field in Settings.model_fields.items():
        assert f"| `{env_name(name)}` |" in text
        assert field.description and field.json_schema_extra and field.json_schema_extra.get("read_by"), name


def test_every_lab_variable_named_in_the_code_is_a_setting() -> None:
    """A LAB_* name the code mentions is a field here, a stream name, or a prefix (``LAB_LLM_*``, ``LAB_CONCURRENCY_<ROLE>``)."""
    streams = {CONVO_STREAM, JOBS_STREAM, DLQ_STREAM, *(partitions.work_stream(r) for r in ROLES)}
    known = {env_name(n) for n in Settings.model_fields} | streams
    named = {m for p in _sources() for m in re.findall(r"\bLAB_[A-Z0-9_]+", p.read_text())}
    unknown = sorted(n for n in named if not n.endswith("_") and n not in known)
    assert not unknown, f"variables without a field in bus/settings.py: {unknown}"


# ---------------------------------------------------------------- nobody else reads LAB_* from the environment


def _lab_constants() -> set[str]:
    """Module-level names bound to a variable's name (``BWRAP_ENV = env_name("bwrap")`` or ``= "LAB_BWRAP"``)."""
    names: set[str] = set()
    for path in _sources():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and _is_lab_key(node.value, set()):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _is_lab_key(node: ast.AST, constants: set[str] | frozenset[str]) -> bool:
    """Whether an expression is (or builds) the name of a LAB_ variable."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value.startswith("LAB_")
    if isinstance(node, ast.JoinedStr):
        return bool(node.values) and _is_lab_key(node.values[0], constants)
    if isinstance(node, ast.BinOp):
        return _is_lab_key(node.left, constants)
    if isinstance(node, ast.Call):
        func = node.func
        return (isinstance(func, ast.Name) and func.id == "env_name") or (isinstance(func, ast.Attribute) and func.attr == "env_name")
    if isinstance(node, ast.Name):
        return node.id in constants
    if isinstance(node, ast.Attribute):
        return node.attr in constants
    return False


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def direct_reads(source: str, constants: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Every read of a LAB_ variable that bypasses bus.settings: ``os.environ.get``/``[]``/``in``, ``os.getenv``,
    and the same on any mapping standing in for the environment (``environ.get("LAB_X")``, ``env["LAB_X"]``)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args:
            name = _dotted(node.func)
            if (name.endswith(".get") or name in ("os.getenv", "getenv")) and _is_lab_key(node.args[0], constants):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_lab_key(node.slice, constants):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            if _is_lab_key(node.left, constants) and "environ" in _dotted(node.comparators[0]):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_but_bus_settings_reads_a_lab_variable_from_the_environment() -> None:
    constants = _lab_constants()
    offenders = {str(p.relative_to(ROOT)): reads for p in _sources() if (reads := direct_reads(p.read_text(), constants))}
    assert not offenders, f"read these through bus.settings.settings(): {offenders}"


@pytest.mark.parametrize(
    "line",
    [
        'os.environ.get("LAB_HOME")',
        'os.environ["LAB_HOME"]',
        'os.getenv("LAB_HOME", "x")',
        '"LAB_HOME" in os.environ',
        'os.environ.get(f"LAB_CONCURRENCY_{role.upper()}")',
        'environ.get("LAB_REPLICA")',  # a mapping passed in place of os.environ
        "os.environ.get(BWRAP_ENV)",  # a module constant naming the variable
        "os.environ[split.SHARED_ENV]",
        'os.environ.get(env_name("bwrap"))',
    ],
)
def test_the_walk_catches_each_way_of_reading_directly(line: str) -> None:
    assert direct_reads(f"import os\nx = {line}\n", {"BWRAP_ENV", "SHARED_ENV"})


@pytest.mark.parametrize(
    "line",
    [
        'os.environ.get("KUBERNETES_SERVICE_HOST")',  # not a lab setting
        "{**os.environ, **Settings.environ(home=home)}",  # building a child's environment
        'env.pop(env_name("job_secret"), None)',  # keeping a variable from a child
        'os.environ.update(Settings.environ(job_dir="/tmp/job"))',
    ],
)
def test_the_walk_leaves_what_is_not_a_read_of_a_lab_variable(line: str) -> None:
    assert not direct_reads(f"import os\nx = {line}\n", {"BWRAP_ENV"})


# ---------------------------------------------------------------- parsing


def test_defaults_with_no_lab_variable_set() -> None:
    s = settings({})
    assert (s.home, s.mind, s.executor, s.concurrency, s.max_store, s.term_grace_s, s.unsafe_no_sandbox) == (
        None, "offline", "local", 8, 10 << 30, 20.0, False,
    )


def test_values_parse_into_their_types() -> None:
    s = settings({
        "LAB_HOME": "/srv/lab", "LAB_MAX_STORE": "512MiB", "LAB_TEMPLATES": os.pathsep.join(["/a", "", "/b"]),
        "LAB_LIT_SOURCES": "s2, local", "LAB_CONCURRENCY_PI": "3", "LAB_UNSAFE_NO_SANDBOX": "1", "LAB_EXECUTOR": "docker",
        "LAB_LLM_MAX_TOKENS": "null", "LAB_NATS_PASSWORD": "pw",
    })
    assert s.home == Path("/srv/lab") and s.max_store == 512 << 20 and s.templates == [Path("/a"), Path("/b")]
    assert s.lit_sources == ["s2", " local"]  # agents.lit.config.source_names trims and resolves aliases
    assert (s.concurrency_of("pi"), s.concurrency_of("writer"), s.unsafe_no_sandbox, s.executor) == (3, 8, True, "docker")
    assert s.llm_max_tokens is None and "llm_max_tokens" in s.model_fields_set  # `null` clears a config file's limit
    assert "pw" not in repr(s) and s.secret("nats_password") == "pw"


def test_an_empty_variable_is_unset_and_names_are_exact() -> None:
    assert settings({"LAB_HOME": "", "LAB_CONCURRENCY": ""}).home is None
    assert settings({"lab_home": "/x", "LAB_Home": "/y"}).home is None  # the environment is case-sensitive here


@pytest.mark.parametrize(
    "env, message",
    [
        ({"LAB_CONCURRENCY_PI": "x"}, "LAB_CONCURRENCY_PI='x': expected a whole number"),
        ({"LAB_CONCURRENCY": "0"}, "LAB_CONCURRENCY='0': must be at least 1"),
        ({"LAB_MAX_STORE": "lots"}, "LAB_MAX_STORE='lots': not a size like 10G or 512M"),
        ({"LAB_MIND": "psychic"}, "LAB_MIND='psychic': expected one of 'offline' or 'llm'"),
        ({"LAB_TERM_GRACE_S": "soon"}, "LAB_TERM_GRACE_S='soon': expected a number"),
        ({"LAB_RUNNER_CONNECT_TIMEOUT_S": "0"}, "LAB_RUNNER_CONNECT_TIMEOUT_S='0': must be more than 0"),
        ({"LAB_UNSAFE_NO_SANDBOX": "1", "LAB_REPLICAS": "-1", "LAB_REPLICA": "a"}, r"LAB_REPLICA='a': expected a whole number \(and 1 more\)"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$") as e:
        settings(env)
    assert "\n" not in str(e.value)


def test_a_credential_comes_from_its_file_and_an_unreadable_one_says_which(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    assert settings({"LAB_JOB_SECRET_FILE": str(tmp_path / "pw")}).secret("job_secret") == "from-file"
    assert settings({"LAB_JOB_SECRET": "v", "LAB_JOB_SECRET_FILE": str(tmp_path / "pw")}).secret("job_secret") == "v"
    assert settings({}).secret("job_secret") is None
    with pytest.raises(ConfigError, match=r"^LAB_JOB_SECRET_FILE=.*missing: cannot read the credential"):
        settings({"LAB_JOB_SECRET_FILE": str(tmp_path / "missing")}).secret("job_secret")


def test_settings_are_read_when_asked_not_at_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from services.common.config import lab_home

    monkeypatch.setenv("LAB_HOME", str(tmp_path / "one"))
    assert lab_home() == tmp_path / "one"
    monkeypatch.setenv("LAB_HOME", str(tmp_path / "two"))
    assert lab_home() == tmp_path / "two" and settings().home == tmp_path / "two"


def test_a_child_environment_is_written_by_field_name_and_reads_back() -> None:
    env = Settings.environ(home=Path("/h"), replica=0, unsafe_no_sandbox=True, templates=[Path("/a"), Path("/b")], nats_url=None)
    assert env == {"LAB_HOME": "/h", "LAB_REPLICA": "0", "LAB_UNSAFE_NO_SANDBOX": "1", "LAB_TEMPLATES": f"/a{os.pathsep}/b"}
    back = settings(env)
    assert (back.home, back.replica, back.unsafe_no_sandbox, back.templates) == (Path("/h"), 0, True, [Path("/a"), Path("/b")])
    with pytest.raises(KeyError, match="no setting 'hom'"):
        Settings.environ(hom="/h")


def test_lab_up_waits_for_its_agents_as_long_as_the_setting_says(monkeypatch, tmp_path) -> None:
    from services.lab.supervisor import LabOptions

    assert LabOptions(home=tmp_path).ready_timeout == 90.0
    monkeypatch.setenv("LAB_READY_TIMEOUT_S", "300")  # a loaded machine: the agents start, slowly
    assert LabOptions(home=tmp_path).ready_timeout == 300.0
