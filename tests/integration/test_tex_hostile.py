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


def test_the_library_keeps_no_raw_tex_from_a_hostile_file(tmp_path):
    parsed = parse_bibtex(hostile_bib(tmp_path / "secret") + "@misc{x, title={T}, doi={10.1/a\\input{b}}, url={https://ok.org/a_b?c=1}}\n")
    assert len(parsed.refs) == 8
    for ref in parsed.refs:
        for attack in ("\\input", "\\openin", "\\read", "\\write18", "\\catcode", "^^", "\\def", "\\makeatletter"):
            assert attack not in ref.bibtex, f"{attack} kept in {ref.key}'s BibTeX"
    assert "doi" not in parsed.refs[-1].bibtex and "url = {https://ok.org/a_b?c=1}" in parsed.refs[-1].bibtex


# ---------------------------------------------------------------- the sandbox itself, whatever the .tex holds
# The rebuilt .bib is one wall; these tests take it away and hand TeX the attack directly.


def reading_doc(secret: Path) -> str:
    probe = "\\IfFileExists{{{0}}}{{FOUND[\\input{{{0}}}]}}{{MISSING[{1}]}} "
    return ("\\documentclass{article}\\begin{document}\n"
            + probe.format(secret, "secret") + probe.format("/proc/self/environ", "environ")
            + "\\immediate\\write18{cat " + str(secret) + " > leaked.tex}\\IfFileExists{leaked.tex}{RAN}{NOSHELL}\n"
            + "\\end{document}\n")


async def test_tex_in_the_sandbox_reads_no_file_outside_its_build_folder(lab_home, build_files, tmp_path):
    from agents.writer import pdf

    home, token = lab_home
    built = await pdf.compile_pdf(reading_doc(home / "secrets" / "job-secret"), "", {})
    words = " ".join(pdf_text(built, tmp_path).split())
    assert "MISSING[secret]" in words and "MISSING[environ]" in words and "NOSHELL" in words, words
    assert token not in words and "FOUND" not in words and "RAN" not in words
    assert not any(token.encode() in p.read_bytes() for p in build_files.rglob("*") if p.is_file())


async def test_the_sandbox_environment_holds_no_lab_setting_and_paranoid_tex_settings(lab_home, tmp_path):
    home, token = lab_home
    environ = (await texbox.run(tmp_path, ["cat", "/proc/self/environ"], 30))[1]
    names = {kv.split("=", 1)[0] for kv in environ.split("\0") if kv}
    assert names == {"PATH", "HOME", "TEXMFOUTPUT", "LC_ALL", "openin_any", "openout_any", "shell_escape", "PWD"}, names
    assert token not in environ and str(home) not in environ
    rc, out = await texbox.run(tmp_path, ["kpsewhich", "-var-value", "openin_any"], 30)
    assert (rc, out.strip()) == (0, "p")
    rc, out = await texbox.run(tmp_path, ["cat", str(home / "secrets" / "job-secret")], 30)
    assert rc != 0 and token not in out  # $LAB_HOME is not mounted at all
    script = "for d in /usr /etc /var/lib/texmf /; do echo x > $d/x 2>/dev/null && echo wrote $d; done; echo z > /build/z"
    rc, out = await texbox.run(tmp_path, ["sh", "-c", script], 30)
    assert rc == 0 and "wrote" not in out and (tmp_path / "z").read_text() == "z\n"  # only the build folder takes writes


async def test_the_sandbox_has_no_network(tmp_path):
    rc, out = await texbox.run(tmp_path, ["cat", "/proc/net/dev"], 30)
    assert rc == 0 and [ln.split(":")[0].strip() for ln in out.splitlines()[2:]] == ["lo"]


async def test_a_runaway_tex_step_is_killed_at_its_wall_time(tmp_path):
    with pytest.raises(TimeoutError):
        await texbox.run(tmp_path, ["sleep", "30"], 0.5)


async def test_without_bubblewrap_no_pdf_is_built_and_the_draft_says_why(monkeypatch):
    monkeypatch.setenv("LAB_BWRAP", "lab-no-such-bwrap")
    monkeypatch.delenv("LAB_TEX_UNSANDBOXED", raising=False)
    out, store = await write(request())
    assert out.pdf is None and "bubblewrap" in out.pdf_error and "LAB_TEX_UNSANDBOXED=1" in out.pdf_error
    assert out.markdown in store.data and out.tex in store.data  # paper.md is still delivered


async def test_tex_unsandboxed_builds_bare_but_still_paranoid(monkeypatch, lab_home, tmp_path):
    from agents.writer import pdf

    home, token = lab_home
    monkeypatch.setenv("LAB_BWRAP", "lab-no-such-bwrap")
    monkeypatch.setenv("LAB_TEX_UNSANDBOXED", "1")
    built = await pdf.compile_pdf(reading_doc(home / "secrets" / "job-secret"), "", {})
    words = " ".join(pdf_text(built, tmp_path).split())
    assert "MISSING[secret]" in words and "NOSHELL" in words and token not in words
    escaped = tmp_path / "escaped.tex"
    with pytest.raises(pdf.PdfError, match="I can't write on file"):
        await pdf.compile_pdf(WRITE_OUT.format(escaped), "", {})
    assert not escaped.exists()


WRITE_OUT = ("\\documentclass{{article}}\\begin{{document}}\\newwrite\\w\\immediate\\openout\\w={}"
             "\\immediate\\write\\w{{x}}\\immediate\\closeout\\w\\end{{document}}")


async def test_tex_in_the_sandbox_writes_nowhere_but_its_build_folder(tmp_path):
    from agents.writer import pdf

    escaped = tmp_path / "escaped.tex"
    with pytest.raises(pdf.PdfError, match="I can't write on file"):
        await pdf.compile_pdf(WRITE_OUT.format(escaped), "", {})
    assert not escaped.exists()
