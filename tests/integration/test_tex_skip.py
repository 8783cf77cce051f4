"""Without a TeX engine the PDF tests skip, saying why and how many, unless LAB_REQUIRE_TEX=1 asks for them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PDF_TEST = "tests/integration/test_writer_pdf.py::test_pdflatex_is_installed"


def _pytest_without_tex(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess:
    # PATH holds only an empty folder, so no pdflatex can be found whatever this machine has installed.
    env = {**{k: v for k, v in os.environ.items() if k != "LAB_REQUIRE_TEX"}, "PATH": str(tmp_path), "PYTHONPATH": str(ROOT), **extra}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", PDF_TEST], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_without_tex_the_pdf_tests_skip_and_the_run_says_how_many(tmp_path):
    done = _pytest_without_tex(tmp_path)
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout
    assert "1 PDF tests skipped: needs a TeX engine: pdflatex is not on PATH" in done.stdout


def test_lab_require_tex_makes_a_missing_engine_fail(tmp_path):
    done = _pytest_without_tex(tmp_path, LAB_REQUIRE_TEX="1")
    assert done.returncode == 1 and "1 failed" in done.stdout, done.stdout
