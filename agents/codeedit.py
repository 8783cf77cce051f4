"""Apply a model's search/replace edits to an experiment, and refuse edits that escape its limits.

The runner enforces wall time, memory and network outside the experiment, and
the sandbox (``services/runner/sandbox.py``: bubblewrap namespaces) is the boundary;
this guard is only the earlier, friendlier line: an edit that tries to stretch
its time, relaunch itself, spawn processes, reach the network (even for a
template that declares network access: model-written code never gets it), set
setuid/setgid/sticky bits, copy permission bits, make links or special files,
or name an absolute path outside ``/job/out`` and ``/tmp`` is refused
with a reason the model can read and fix, before a job is wasted on it. It is
advice, not security: ``getattr(os, 'fo' + 'rk')`` and friends get past any
static check, which is why model-written code never runs without the sandbox
unless the user passed ``--unsafe-no-sandbox``.

The guard compares the edited file's AST with the original's and rejects only
what the edit introduces, so a template that already imports, say, ``signal``
for its own reasons still accepts unrelated edits.

    EditError
    ├── EditNotApplicable   the search text is missing or ambiguous, or the result is not valid Python
    └── EditForbidden       the edit touches a file it may not, or introduces a forbidden construct
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import PurePosixPath

from bus.errors import LabError
from bus.schema import CodeEdit

# Only these may change; the runner, template.yaml and data stay as shipped.
EDITABLE = frozenset({"experiment.py", "plot.py"})
# An AI Scientist template's own files, under the lab's wrapper in its bundle (agents.aisci.editable offers these instead).
ORIGINAL_EDITABLE = frozenset(f"original/{name}" for name in EDITABLE)

# Modules whose import alone means processes, signals, limits or the network.
FORBIDDEN_MODULES = {
    "subprocess": "starts processes",
    "multiprocessing": "starts processes",
    "signal": "handles signals (time limits)",
    "resource": "changes resource limits",
    "socket": "uses the network",
    "urllib": "uses the network",
    "requests": "uses the network",
    "httpx": "uses the network",
    "aiohttp": "uses the network",
    "http": "uses the network",
    "ftplib": "uses the network",
    "pty": "starts processes",
    "ctypes": "calls native code",
    "importlib": "imports by name (dodges this check)",
}

# Calls (after resolving import aliases) that relaunch, fork, or escape limits.
FORBIDDEN_CALLS = {
    "signal.alarm": "extends or replaces the time limit",
    "signal.signal": "catches the runner's signals",
    "signal.setitimer": "extends or replaces the time limit",
    "resource.setrlimit": "changes resource limits",
    "os.fork": "starts processes",
    "os.forkpty": "starts processes",
    "os.system": "starts processes",
    "os.popen": "starts processes",
    "os.setsid": "leaves the runner's process group",
    "os.setpgrp": "leaves the runner's process group",
    "os.setpgid": "leaves the runner's process group",
    "os.kill": "signals other processes",
    "os.killpg": "signals other processes",
    "os.putenv": "changes the environment",
    "__import__": "imports by name (dodges this check)",
    "exec": "runs code built at run time (dodges this check)",
    "concurrent.futures.ProcessPoolExecutor": "starts processes",
    "os.chown": "changes file ownership",
    "os.lchown": "changes file ownership",
    "os.fchown": "changes file ownership",
    "shutil.chown": "changes file ownership",
    "os.mknod": "creates a device or special file",
    "os.mkfifo": "creates a FIFO",
    "os.symlink": "creates a link (outputs are plain files)",
    "os.link": "creates a link (outputs are plain files)",
    "shutil.copymode": "copies permission bits, setuid included (use shutil.copyfile)",
    "shutil.copystat": "copies permission bits, setuid included (use shutil.copyfile)",
    "shutil.copy": "copies permission bits, setuid included (use shutil.copyfile)",
    "shutil.copy2": "copies permission bits, setuid included (use shutil.copyfile)",
    "shutil.copytree": "copies permission bits, setuid included (copy files with shutil.copyfile)",
}
FORBIDDEN_PREFIXES = {"os.exec": "relaunches the process", "os.spawn": "starts processes", "os.posix_spawn": "starts processes"}

# Functions that set a file's mode: the mode argument's position, and its keyword.
CHMOD_CALLS = {"os.chmod": 1, "os.fchmod": 1, "os.lchmod": 1}
# Permission bits an experiment never needs: setuid, setgid, sticky.
SPECIAL_BITS = 0o7000
SPECIAL_NAMES = {"S_ISUID", "S_ISGID", "S_ISVTX"}
# Where an experiment may name absolute paths: its output folder, private /tmp, its code, and /dev/null.
PATH_PREFIXES = ("/job/out", "/tmp", "/job/code", "/dev/null")

# Names that hold the experiment's time budget: assigning them, or passing them to a call, is described with its value.
TIME_WORDS = ("time_budget", "timeout", "time_limit", "deadline", "wall_time", "max_time", "max_seconds")


class EditError(LabError, ValueError):
    """An edit that cannot be used; the message is one line, for the model and the log."""


class EditNotApplicable(EditError):
    pass


class EditForbidden(EditError):
    pass


def check_path(path: str, allowed: set[str] | frozenset[str]) -> str:
    p = PurePosixPath(path.replace("\\", "/"))
    if not p.parts or p.is_absolute() or path.startswith("~") or ":" in p.parts[0]:
        raise EditForbidden(f"{path!r}: only relative paths inside the experiment's folder may be edited")
    if ".." in p.parts:
        raise EditForbidden(f"{path!r}: '..' leaves the experiment's folder")
    name = str(p)
    if name not in allowed:
        raise EditForbidden(f"{path!r}: not editable (editable: {', '.join(sorted(allowed))})")
    return name


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:80]


def apply_edits(files: dict[str, str], edits: list[CodeEdit], allowed: set[str] | frozenset[str] = EDITABLE) -> dict[str, str]:
    """The files after the edits, in order; each search must match exactly once in the file as edited so far."""
    allowed = set(allowed) & (EDITABLE | ORIGINAL_EDITABLE)
    out = dict(files)
    touched: set[str] = set()
    for edit in edits:
        name = check_path(edit.path, allowed)
        if name not in out:
            raise EditNotApplicable(f"{name}: no such file in the template")
        if not edit.search:
            raise EditNotApplicable(f"{name}: empty search text (quote the exact lines to replace)")
        count = out[name].count(edit.search)
        if count == 0:
            raise EditNotApplicable(f"{name}: search text not found: {_first_line(edit.search)!r}")
        if count > 1:
            raise EditNotApplicable(f"{name}: search text matches {count} times, must be unique: {_first_line(edit.search)!r}")
        out[name] = out[name].replace(edit.search, edit.replace, 1)
        touched.add(name)
    for name in sorted(touched):
        guard(name, files[name], out[name])
    return out


def guard(name: str, before: str, after: str) -> None:
    """Raise EditForbidden if ``after`` introduces a construct that ``before`` lacks."""
    try:
        new_tree = ast.parse(after, filename=name)
    except SyntaxError as e:
        raise EditNotApplicable(f"{name}: line {e.lineno}: syntax error after the edit: {e.msg}") from None
    try:
        old = Counter(what for what, _ in findings(ast.parse(before, filename=name)))
    except SyntaxError:
        old = Counter()
    new = findings(new_tree)
    seen: Counter[str] = Counter()
    introduced = []
    for what, line in new:
        seen[what] += 1
        if seen[what] > old[what]:
            introduced.append(f"line {line}: {what}")
    if introduced:
        raise EditForbidden(f"{name}: the runner enforces time, processes and network; the edit adds " + "; ".join(introduced[:5]))


def findings(tree: ast.AST) -> list[tuple[str, int]]:
    """Forbidden or limit-touching constructs in a module, as (description, line)."""
    return _Finder().run(tree)


class _Finder(ast.NodeVisitor):
    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.found: list[tuple[str, int]] = []

    def run(self, tree: ast.AST) -> list[tuple[str, int]]:
        for node in ast.walk(tree):  # aliases first, wherever the import sits
            if isinstance(node, ast.Import):
                for a in node.names:
                    self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        self.visit(tree)
        return sorted(self.found, key=lambda f: f[1])

    def add(self, what: str, node: ast.AST) -> None:
        self.found.append((what, getattr(node, "lineno", 0)))

    def qualname(self, node: ast.AST) -> str:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return ""
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._module(a.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            self._module(node.module, node)
            for a in node.names:
                self._call_name(f"{node.module}.{a.name}", node, imported=True)

    def _module(self, module: str, node: ast.AST) -> None:
        top = module.split(".")[0]
        if top in FORBIDDEN_MODULES:
            self.add(f"import {module} ({FORBIDDEN_MODULES[top]})", node)

    def _call_name(self, name: str, node: ast.AST, imported: bool = False) -> None:
        why = FORBIDDEN_CALLS.get(name) or next((w for p, w in FORBIDDEN_PREFIXES.items() if name.startswith(p)), None)
        if why:
            self.add(f"{'import of ' if imported else ''}{name} ({why})", node)

    def _mode(self, name: str, node: ast.Call) -> None:
        """A chmod (os.* or a path's .chmod) that sets setuid/setgid/sticky bits, or whose mode is computed."""
        pos = CHMOD_CALLS.get(name, 0 if isinstance(node.func, ast.Attribute) and node.func.attr == "chmod" else None)
        if pos is None:
            return
        mode = next((k.value for k in node.keywords if k.arg == "mode"), node.args[pos] if len(node.args) > pos else None)
        try:
            value = ast.literal_eval(mode) if mode is not None else None
        except ValueError:
            self.add(f"chmod with a computed mode `{_short(node)}` (write the mode as a number)", node)
            return
        if isinstance(value, int) and value & SPECIAL_BITS:
            self.add(f"chmod {oct(value)} (sets a setuid, setgid or sticky bit)", node)

    def visit_Constant(self, node: ast.Constant) -> None:
        text = node.value
        if isinstance(text, str) and text.startswith("/") and len(text) > 1 and "\n" not in text and " " not in text:
            if not any(text == p or text.startswith(p + "/") for p in PATH_PREFIXES):
                self.add(f"path {text[:60]!r} (an experiment writes only under /job/out and /tmp)", node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in SPECIAL_NAMES or self.aliases.get(node.id, "").rsplit(".", 1)[-1] in SPECIAL_NAMES:
            self.add(f"{node.id} (a setuid, setgid or sticky bit)", node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualname(node.func)
        self._mode(name, node)
        if name:
            self._call_name(name, node)
            if name.startswith("sys.argv."):
                self.add(f"{name}() (rewrites sys.argv)", node)
            if name in ("os.environ.update", "os.environ.setdefault"):
                self.add(f"{name}() (changes the environment)", node)
        # A call that names a time budget (argparse defaults, sleep/run helpers): any change of it counts.
        if any(isinstance(a, ast.Constant) and isinstance(a.value, str) and _is_time_word(a.value) for a in node.args) or any(
            k.arg and _is_time_word(k.arg) for k in node.keywords
        ):
            self.add(f"time limit call `{_short(node)}`", node)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in SPECIAL_NAMES:
            self.add(f"{node.attr} (a setuid, setgid or sticky bit)", node)
        if self.qualname(node) == "sys.executable":
            self.add("sys.executable (relaunches Python)", node)
        self.generic_visit(node)

    def _targets(self, targets: list[ast.expr], value: ast.AST | None, node: ast.AST) -> None:
        for t in targets:
            for sub in ast.walk(t):
                name = self.qualname(sub.value) if isinstance(sub, ast.Subscript) else self.qualname(sub)
                if name == "sys.argv":
                    self.add("assignment to sys.argv (rewrites the command line)", node)
                elif name == "os.environ" and isinstance(sub, ast.Subscript):
                    self.add("assignment to os.environ (changes the environment)", node)
            text = ast.unparse(t)
            if _is_time_word(text) or any(
                isinstance(s, ast.Constant) and isinstance(s.value, str) and _is_time_word(s.value) for s in ast.walk(t)
            ):
                value_text = ast.unparse(value) if value is not None else "..."
                self.add(f"time limit assignment `{text} = {value_text[:60]}`", node)

    def visit_Assign(self, node: ast.Assign) -> None:
        self._targets(node.targets, node.value, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._targets([node.target], node.value, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._targets([node.target], node.value, node)
        self.generic_visit(node)


def _is_time_word(text: str) -> bool:
    low = text.lower().lstrip("-")
    return any(w in low for w in TIME_WORDS)


def _short(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 80 else text[:77] + "..."
