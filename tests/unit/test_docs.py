"""The docs hold: links resolve, quoted `lab` commands exist, the README stays a front door.

Docs rot without failing anything: a moved file, a renamed heading or a retired
option leaves a link or a command that sends a reader nowhere. These checks read
README.md, CONTRIBUTING.md and docs/*.md as GitHub renders them (code blocks and
code spans are not prose; headings get GitHub's anchors) and ask the CLI itself,
in process through typer's CliRunner, so they run in the fast loop with nothing
started. Each checker is also run on a small broken example, so a checker that
silently stops finding anything fails too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CI = ROOT / ".ci" / "run"
README_MAX_LINES = 300
# README command 1, kept verbatim: a fresh clone's first run of the lab.
RUN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/lab run --template grokking"
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "docs").glob("*.md"))]


# ---------------------------------------------------------------- reading Markdown as GitHub does


@dataclass
class Doc:
    path: Path
    prose: str  # the text with fenced blocks blanked out (line numbers kept)
    blocks: list[tuple[str, str]]  # (info string, body) of each fenced block

    @property
    def spans(self) -> list[str]:
        """Inline code spans of the prose (`x`, ``x `y` x``)."""
        return [m.group(2).strip() for m in re.finditer(r"(`+)(.+?)\1", self.prose, re.DOTALL)]

    @property
    def text(self) -> str:
        """The prose without code spans: what links and headings are read from."""
        return re.sub(r"(`+)(.+?)\1", lambda m: "x" * len(m.group(0)), self.prose, flags=re.DOTALL)


def parse(path: Path) -> Doc:
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    info, body = "", list[str]()
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence is None and m:
            fence, info, body = m.group(1), m.group(2).lower(), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip().strip(fence[0]):
            blocks.append((info, "\n".join(body)))
            fence = None
            prose.append("")
        elif fence is not None:
            body.append(line)
            prose.append("")
        else:
            prose.append(line)
    return Doc(path, "\n".join(prose), blocks)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation out, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in parse(path).prose.splitlines():
        m = re.match(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeated headings
    return frozenset(out)


def links(doc: Doc) -> Iterator[str]:
    text = doc.text
    yield from (m.group(1) for m in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text))
    yield from (m.group(1) for m in re.finditer(r"^ {0,3}\[[^\]]+\]:\s*(\S+)", text, re.MULTILINE))  # reference definitions


# ---------------------------------------------------------------- the checks


def link_problems(files: list[Path], root: Path = ROOT) -> list[str]:
    """Every relative link (and image) points to a file of the repository, and its #anchor to a heading there."""
    problems = []
    for path in files:
        for target in links(parse(path)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, ...: not ours to check
                continue
            where, _, anchor = target.partition("#")
            dest = (path.parent / where).resolve() if where else path
            if not dest.is_relative_to(root.resolve()):
                problems.append(f"{path.name}: {target} leaves the repository")
            elif not dest.exists():
                problems.append(f"{path.name}: {target} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{path.name}: {target}: no heading #{anchor} in {dest.relative_to(root.resolve())}")
    return problems


def commands_in(line: str) -> list[list[str]]:
    """The `lab` invocations on one shell line: each as its words after `lab`.

    A `lab` counts only in command position (at the start, after an env assignment,
    `&&`, `|`, `;`, `&` or inside `$(...)`), so `kubectl -n lab get jobs` is not one.
    """
    found: list[list[str]] = []
    while m := re.search(r"\$\(([^()]*)\)", line):
        found += commands_in(m.group(1))
        line = line[: m.start()] + "SUBST" + line[m.end():]
    for segment in re.split(r"&&|\|\||[|;&(]", line):
        words = segment.split()
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words.pop(0)
        if len(words) > 1 and (words[0] == "lab" or words[0].endswith("/lab")):
            found.append(words[1:])
    return found


def quoted_commands(doc: Doc) -> list[list[str]]:
    """`lab ...` commands in the shell blocks (comments dropped, continuations joined) and in code spans."""
    found = []
    for info, body in doc.blocks:
        if info not in SHELL_BLOCKS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line.removeprefix("$ "))
            found += commands_in(line)
    for span in doc.spans:
        found += commands_in(span)
    return found


@cache
def _cli() -> tuple[Any, Any]:
    from typer.main import get_command

    from services.cli.app import app

    return app, get_command(app)


@cache
def _help_ok(path: tuple[str, ...]) -> bool:
    from typer.testing import CliRunner

    app, _ = _cli()
    return CliRunner().invoke(app, [*path, "--help"]).exit_code == 0


def command_problems(files: list[Path]) -> list[str]:
    """Every quoted `lab X` (and `lab X Y` for sub-apps) answers --help, and knows every --option it is given."""
    _, root = _cli()
    problems = []
    for path in files:
        for words in quoted_commands(parse(path)):
            quoted = "lab " + " ".join(words)
            command, names = root, []
            for word in words:  # down through sub-apps (`lab job render`, `lab lit add`)
                if not hasattr(command, "commands") or word.startswith("-"):
                    break
                names.append(word)
                command = command.commands.get(word)
                if command is None:
                    break
            # A sub-app named alone (`lab lit`) is a real command too: its --help lists what it holds.
            if command is None or not _help_ok(tuple(names)):
                problems.append(f"{path.name}: `{quoted}`: no such command")
                continue
            known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(words[len(names):])):
                if option not in known:
                    problems.append(f"{path.name}: `{quoted}`: lab {' '.join(names)} has no option {option}")
    return problems


def front_door_problems(readme: str, ci: str) -> list[str]:
    """The README is a front door: short, with both set-up commands, the second being what CI runs."""
    problems = []
    lines = readme.splitlines()
    if len(lines) > README_MAX_LINES:
        problems.append(f"README.md has {len(lines)} lines; keep it to {README_MAX_LINES} and move detail into docs/")
    ci_command = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")][-1].strip()
    if "pytest" not in ci_command:
        problems.append(f".ci/run no longer ends with the test command: {ci_command!r}")
    stripped = {line.strip() for line in lines}
    for what, command in (("command 1", RUN_COMMAND), ("command 2 (.ci/run's)", ci_command)):
        if command not in stripped:
            problems.append(f"README.md lacks set-up {what}, verbatim: {command}")
    return problems


# ---------------------------------------------------------------- on the lab's own docs


def test_the_docs_are_found() -> None:
    files = doc_files()
    assert all(f.is_file() for f in files), [str(f) for f in files if not f.is_file()]
    assert {"architecture.md", "security.md", "troubleshooting.md"} <= {f.name for f in files}


def test_every_relative_link_and_anchor_resolves() -> None:
    assert sum(1 for _ in links(parse(README))) >= 10  # the README points into docs/: the checker sees those links
    problems = link_problems(doc_files())
    assert not problems, "\n".join(problems)


def test_every_quoted_lab_command_exists() -> None:
    assert len(quoted_commands(parse(README))) >= 10  # the cheat-sheet is read
    problems = command_problems(doc_files())
    assert not problems, "\n".join(problems)


def test_the_readme_is_a_front_door_with_both_set_up_commands() -> None:
    problems = front_door_problems(README.read_text(), CI.read_text())
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- each check fails on what it is for


def test_a_missing_file_a_missing_anchor_and_a_link_outside_the_repository_are_caught(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A `code` heading: with punctuation\n\n## Twice\n\n## Twice\n")
    (tmp_path / "README.md").write_text(
        "[fine](docs/other.md#a-code-heading-with-punctuation) [fine too](docs/other.md#twice-1) [web](https://example.org/x)\n"
        "[gone](docs/gone.md) ![picture](docs/missing.png)\n"
        "[bad anchor](docs/other.md#no-such-heading) [self](#nowhere) [out](../elsewhere.md)\n"
        "`[in a code span](not-checked.md)`\n\n```\n[in a block](not-checked.md)\n```\n"
    )
    (tmp_path / "CONTRIBUTING.md").write_text("# Contributing\n\n[up](README.md) [self](#contributing)\n")
    problems = link_problems(doc_files(tmp_path), tmp_path)
    assert len(problems) == 5, problems
    for broken in ("docs/gone.md", "docs/missing.png", "#no-such-heading", "#nowhere", "../elsewhere.md"):
        assert any(broken in p for p in problems), (broken, problems)


def test_a_made_up_command_sub_command_or_option_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(
        "```bash\n"
        "lab up --detach                       # a comment: lab bogus is not read\n"
        "lab frobnicate --now\n"
        "lab job nonsense --template grokking\n"
        "lab up --nats-url nats://x:4222\n"
        "LAB_CONFIG=x.yaml lab evolve --nats \"$(lab status --json | jq -r .nats)\" \\\n"
        "    --iterations 2 --no-such-flag\n"
        "kubectl -n lab get jobs               # not a lab command\n"
        "```\n\n"
        "In prose: `lab lit add refs.bib`, `lab lit` alone, `lab lit nonsense` and `lab imaginary`.\n"
    )
    problems = command_problems([doc])
    assert len(problems) == 6, problems
    for bad in ("lab frobnicate", "lab job nonsense", "--nats-url", "--no-such-flag", "lab lit nonsense", "lab imaginary"):
        assert any(bad in p for p in problems), (bad, problems)


def test_a_long_readme_or_a_drifted_set_up_command_is_caught() -> None:
    ci = "#!/usr/bin/env bash\n# comment\npython3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest\n"
    good = f"# Lab\n\n```bash\n{RUN_COMMAND}\n{ci.splitlines()[-1]}\n```\n"
    assert front_door_problems(good, ci) == []
    assert len(front_door_problems(good + "more\n" * README_MAX_LINES, ci)) == 1
    drifted = ci.replace("python -m pytest", "python -m pytest -x")
    assert any("command 2" in p for p in front_door_problems(good, drifted))
    assert any("command 1" in p for p in front_door_problems(good.replace(" --template grokking", ""), ci))


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Evolving algorithms as code: `lab evolve`", "evolving-algorithms-as-code-lab-evolve"),
        ("Kueue, the jobs' namespace, logs and failures", "kueue-the-jobs-namespace-logs-and-failures"),
        ("GPU experiments: `char_lm`, profiles, multi-GPU jobs", "gpu-experiments-char_lm-profiles-multi-gpu-jobs"),
        ("The [web view](usage.md) (optional)", "the-web-view-optional"),
    ],
)
def test_anchors_follow_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
