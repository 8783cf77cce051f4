"""A hostile references.bib cannot make the writer's TeX read the lab's secrets, and hostile bytes cannot stop the build.

The bibliography comes from a template (or `lab lit add`), so its fields are
attacker-written. Each entry below carries one way for TeX to read a file or
run a command: ``\\input`` of the secret by path, the full attack (read
``/proc/self/environ``, cut ``LAB_HOME`` out of it, ``\\input`` the job secret
under it), ``\\openin``/``\\read``, ``\\immediate\\write18``, a ``\\catcode``
that makes ``!`` an escape character, and ``^^5c`` (a backslash in ^^-notation).
The library is parsed as the literature role parses it, cited by the mind, and
built by the writer's real path; the token in ``$LAB_HOME/secrets/job-secret``
(and in ``LAB_JOB_SECRET``) must appear in none of the PDF's text, the .tex,
the .bib or the TeX logs.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from agents.lit.library_files import parse_bibtex
from agents.minds.base import PaperSections
from agents.writer import texbox
from bus.schema import Usage
from tests.unit.test_writer import REFS, request, write

pytestmark = pytest.mark.tex


def hostile_bib(secret: Path) -> str:
    environ_attack = (
        r"\begingroup\catcode0=12 \catcode`\_=12 \catcode`\%=12 \catcode`\$=12 \catcode`\&=12 \catcode`\^=12 \catcode`\~=12 "
        r"\endlinechar=-1 \openin15=/proc/self/environ \read15 to\envline \closein15 "
        r"\def\find#1LAB_HOME=#2" "\x00" r"#3\relax{\gdef\labhome{#2}}\expandafter\find\envline\relax "
        r"\catcode`\^=7 \input{\labhome/secrets/job-secret}\endgroup"
    )
    variants = {
        "leakinput": rf"\input{{{secret}}}",
        "leakenviron": environ_attack,
        "leakopenin": rf"\newread\leakr\openin\leakr={secret}\relax\read\leakr to\leakline\closein\leakr Got: \leakline",
        "leakwrite": rf"\immediate\write18{{cat {secret} > leaked.tex}}\IfFileExists{{leaked.tex}}{{\input{{leaked}}}}{{}}",
        "leakcatcode": rf"\catcode`\!=0 !input{{{secret}}}",
        "leakcaret": rf"^^5cinput{{{secret}}}",
        "leakverbatim": r"\makeatletter\@@input " + str(secret) + r"\relax",
    }
    entries = [
        f"@misc{{{key},\n  title = {{Entry {key}}},\n  author = {{Mallory, Eve}},\n  year = {{2024}},\n"
        f"  howpublished = {{{attack}}},\n  note = {{{attack}}}\n}}"
        for key, attack in variants.items()
    ]
    return "\n\n".join(entries) + "\n"


class CitingMind:
    """Cites every hostile entry, so bibtex copies their fields into the .bbl pdflatex reads."""

    usage = Usage()

    def __init__(self, keys: list[str], title: str = "Hostile references") -> None:
        self.keys, self.title = keys, title

    async def write(self, request):
        text = "We build on prior work [" + "; ".join(f"@{k}" for k in self.keys) + "]."
        return PaperSections(title=self.title, abstract=text, introduction=text, related_work=text, method=text,
                             experimental_setup=text, results=text, limitations=text, conclusion=text)


@pytest.fixture
def lab_home(tmp_path, monkeypatch):
    token = "tok" + secrets.token_hex(16)
    home = tmp_path / "labhome"
    (home / "secrets").mkdir(parents=True)
    (home / "secrets" / "job-secret").write_text(token + "\n")
    monkeypatch.setenv("LAB_HOME", str(home))
    monkeypatch.setenv("LAB_JOB_SECRET", token)
    return home, token


@pytest.fixture
def build_files(tmp_path, monkeypatch):
    """Every file of every TeX build the writer runs, copied out after each step (the build folder itself is deleted)."""
    kept = tmp_path / "builds"
    kept.mkdir()
    real = texbox.run

    async def spy(build, argv, timeout_s):
        try:
            return await real(build, argv, timeout_s)
        finally:
            shutil.copytree(build, kept / f"step-{len(list(kept.iterdir()))}", symlinks=True)

    monkeypatch.setattr(texbox, "run", spy)
    return kept


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    (tmp_path / "out.pdf").write_bytes(pdf)
    return subprocess.run(["pdftotext", str(tmp_path / "out.pdf"), "-"], capture_output=True, text=True, check=True).stdout


def test_pdftotext_is_installed():
    assert shutil.which("pdftotext"), "pdftotext is missing: apt-get install poppler-utils"


async def test_hostile_bibtex_fields_cannot_read_the_job_secret(lab_home, build_files, tmp_path):
    home, token = lab_home
    parsed = parse_bibtex(hostile_bib(home / "secrets" / "job-secret"), source="template")
    keys = [r.key for r in parsed.refs]
    assert len(keys) == 7 and not parsed.problems
    out, store = await write(request(refs=[*REFS, *parsed.refs]), mind=CitingMind(keys))
    text = pdf_text(store.data[out.pdf], tmp_path) if out.pdf else ""
    assert token not in text, "the job secret is in the PDF"
    assert token not in out.pdf_error + out.pdf_log, "the job secret is in the reported error"
    for name in (out.tex, out.bib):
        assert token not in store.data[name].decode(errors="replace"), f"the job secret is in {name}"
    built = [p for p in build_files.rglob("*") if p.is_file()]
    assert any(p.suffix == ".log" for p in built) and any(p.suffix == ".bbl" for p in built)
    for p in built:
        assert token.encode() not in p.read_bytes(), f"the job secret is in the build's {p.name}"
    assert not any(p.name.startswith("leaked") for p in built)
    assert out.pdf_error == "", out.pdf_error + "\n" + out.pdf_log
    words = " ".join(text.split())
    assert all(f"Entry {k}" in words for k in keys) and "Mallory" in words  # the entries are there, as plain text
    bib = store.data[out.bib].decode()
    for attack in ("\\input", "\\openin", "\\read", "\\write18", "\\catcode", "^^5c", "\\@@input", "\\def"):
        assert attack not in bib, f"{attack} reached references.bib"
