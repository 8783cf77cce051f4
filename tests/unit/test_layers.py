"""The house's rules, read from the source: which layer may import what, and the one error tree.

- NATS only in bus/: no module under agents/, services/ or templates/ imports ``nats``, nor reaches
  into a bus connection's ``.js`` / ``.nc`` (``bus.client.Bus`` and ``bus.store`` have a typed
  method for what they need, and translate nats-py's errors into the lab's). tests/ and bench/ may
  use nats directly: the tests attack the server's permissions with raw requests, and bench/
  measures NATS itself.
- Layers: bus/ imports nothing of agents/ or services/, agents/ nothing of services/, and no
  role's room (``agents/<role>/``) imports another role's.
- The host knows no role: ``services/host/agent.py`` names none (what differs per role is in
  ``services/host/wiring.py``).
- The drawing of the exception tree in ``bus/errors.py`` is the tree the code defines.
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import bus.errors
from bus.errors import LabError
from bus.schema import MESSAGE_KINDS, ROLES

REPO = Path(__file__).resolve().parents[2]
OUTSIDE_BUS = ("agents", "services", "templates")
PACKAGES = ("bus", "agents", "services")


def sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (REPO / top).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, those inside functions too; relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO)}:{line}"


def role_rooms() -> set[str]:
    """The rooms under agents/: a role's (or the evolve loop's) workflow lives in ``agents/<room>/workflow.py``;
    the other packages there (minds, lit) are libraries every room may use."""
    return {p.parent.name for p in (REPO / "agents").glob("*/workflow.py")}


# ---------------------------------------------------------------- NATS only in bus/


def test_no_module_outside_bus_imports_nats() -> None:
    found = [f"{where(p, line)} imports {mod}" for p in sources(*OUTSIDE_BUS) for line, mod in imports(p)
             if mod == "nats" or mod.startswith("nats.")]
    assert not found, "NATS is bus/'s alone (add a typed method to bus.client.Bus or bus.store):\n" + "\n".join(found)


def test_what_nats_raises_leaves_bus_as_a_lab_error_that_reads_as_before() -> None:
    """The CLI maps LabErrors only: each nats-py error reaches it translated, with the line it printed for the raw one."""
    import nats.errors
    import nats.js.errors

    from bus.errors import BusRefused, BusTimeout, NotFound, Unanswered, from_nats
    from services.cli.errors import describe

    timeout = from_nats(nats.js.errors.FetchTimeoutError())
    assert isinstance(timeout, BusTimeout) and isinstance(timeout, TimeoutError)
    assert describe(timeout) == "NATS did not answer in time (is the lab up, and may this user do that?)"
    for raw in (nats.errors.NoRespondersError(), nats.js.errors.NoStreamResponseError()):
        assert type(from_nats(raw)) is Unanswered and describe(from_nats(raw)) == f"NATS: {raw}"
    full = from_nats(nats.js.errors.APIError(code=503, description="insufficient storage resources available", err_code=10047))
    assert type(full) is BusRefused and full.description == "insufficient storage resources available" and full.code == 503
    assert describe(full) == "NATS: nats: APIError: code=503 err_code=10047 description='insufficient storage resources available'"
    assert isinstance(from_nats(nats.js.errors.BucketNotFoundError()), NotFound)
    assert describe(from_nats(nats.errors.ConnectionClosedError())) == "NATS: nats: connection closed"


def test_no_module_outside_bus_reaches_into_a_bus_connection() -> None:
    found = []
    for p in sources(*OUTSIDE_BUS):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Attribute) and node.attr in ("js", "nc"):
                found.append(f"{where(p, node.lineno)} uses .{node.attr}")
    assert not found, "only bus/ touches the connection (Bus.nc, Bus.js):\n" + "\n".join(found)


# ---------------------------------------------------------------- layers


def test_each_layer_imports_only_the_layers_below_it() -> None:
    above = {"bus": ("agents", "services"), "agents": ("services",)}
    found = [
        f"{where(p, line)} imports {mod}"
        for layer, forbidden in above.items()
        for p in sources(layer)
        for line, mod in imports(p)
        if mod.split(".")[0] in forbidden
    ]
    assert not found, "bus/ < agents/ < services/: nothing imports upward:\n" + "\n".join(found)


def test_no_role_imports_another_role() -> None:
    rooms = role_rooms()
    assert {"pi", "engineer", "writer", "evolve"} <= rooms  # the rule below is about real rooms
    found = []
    for room in sorted(rooms):
        for p in sources(f"agents/{room}"):
            for line, mod in imports(p):
                parts = mod.split(".")
                if parts[0] == "agents" and len(parts) > 1 and parts[1] in rooms and parts[1] != room:
                    found.append(f"{where(p, line)} imports {mod}")
    assert not found, "a role's room may use agents/ libraries, not another room:\n" + "\n".join(found)


def test_the_host_names_no_role() -> None:
    """Role names and message kinds appear in no string, comment or name of the host: each role's difference is its wiring's."""
    names = {*ROLES, "runner", "copi", *MESSAGE_KINDS}
    word = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b", re.IGNORECASE)
    path = REPO / "services" / "host" / "agent.py"
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in (tokenize.STRING, tokenize.COMMENT, tokenize.NAME) and (m := word.search(tok.string)):
            found.append(f"{where(path, tok.start[0])}: {m.group(0)!r} in {tok.string[:80]!r}")
    assert not found, "the host runs any role the same way (move it into services/host/wiring.py):\n" + "\n".join(found)


# ---------------------------------------------------------------- the error tree


@dataclass(frozen=True)
class Drawn:
    name: str
    module: str
    parent: tuple[str, str] | None  # (name, module) of the class it is drawn under


def drawing() -> dict[tuple[str, str], Drawn]:
    """The tree in bus/errors.py's docstring: each line ``<branches><Name>  <module>: what it means``."""
    doc = bus.errors.__doc__ or ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("LabError "))
    root_col = lines[start].index("LabError")
    drawn: dict[tuple[str, str], Drawn] = {}
    stack: list[tuple[str, str]] = []
    for line in lines[start:]:
        if not line.strip():
            break
        m = re.match(r"^([\s│├└─]*)([A-Za-z_]\w*)\s+([\w.]+):", line)
        if m is None:
            continue  # a description carried on to the next line
        depth, rest = divmod(len(m.group(1)) - root_col, 4)
        assert rest == 0 and depth <= len(stack), f"misdrawn line in bus/errors.py: {line!r}"
        key = (m.group(2), m.group(3))
        assert key not in drawn, f"drawn twice: {key}"
        del stack[depth:]
        drawn[key] = Drawn(*key, stack[-1] if stack else None)
        stack.append(key)
    return drawn


def lab_errors() -> set[type[LabError]]:
    """Every LabError subclass the lab's packages define, each module imported."""
    for p in sources(*PACKAGES):
        if p.name != "__main__.py":  # `python -m` entry points run their process when imported
            importlib.import_module(module_name(p))

    def below(cls: type[LabError]) -> set[type[LabError]]:
        return {c for sub in cls.__subclasses__() for c in {sub, *below(sub)}}

    return {c for c in below(LabError) if c.__module__.split(".")[0] in PACKAGES}


def test_the_error_tree_is_drawn_whole_and_true() -> None:
    drawn = drawing()
    assert ("LabError", "bus.errors") in drawn
    defined = {(c.__name__, c.__module__): c for c in lab_errors()}
    missing = sorted(set(defined) - set(drawn))
    assert not missing, f"LabError subclasses missing from the drawing in bus/errors.py: {missing}"
    stale = sorted(k for k in set(drawn) - set(defined) if k != ("LabError", "bus.errors"))
    assert not stale, f"drawn in bus/errors.py but defined nowhere: {stale}"
    for key, cls in defined.items():
        bases = {(b.__name__, b.__module__) for b in cls.__bases__ if issubclass(b, LabError)}
        assert drawn[key].parent in bases, f"{key} is drawn under {drawn[key].parent}, but its LabError bases are {sorted(bases)}"

