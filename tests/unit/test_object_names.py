"""Object names cannot escape a folder: refused where they are written, and `lab export` keeps every path inside --out."""

from __future__ import annotations

import pytest

from bus.store import InvalidObjectName, check_object_name, object_name_refusal
from services.read.export import inside

PWNED = "p1/runs/zz/../../../../../../../../tmp/PWNED"
BAD = [
    PWNED, "p1/../p2/paper.pdf", "/etc/passwd", "p1//x", "p1/./x", "p1/x/", "", "..", "p1\\..\\..\\x",
    "p1/runs/j1/\x1b]0;title\x07", "p1/a\nb", "p1/a\x00b", "p1/a\x7f", "p1/\x9bx", "x" * 2000,
]
GOOD = ["p1/paper/round-1/paper.pdf", "p1/runs/j1/final_info.json", "p1/template.tar.gz", "p1/figures/acc~2.png", "p1/runs/j1/..hidden", "p1/a b.txt"]


@pytest.mark.parametrize("name", BAD)
def test_names_that_could_escape_are_refused(name):
    assert object_name_refusal(name)
    with pytest.raises(InvalidObjectName):
        check_object_name(name)


@pytest.mark.parametrize("name", GOOD)
def test_ordinary_names_pass(name):
    assert object_name_refusal(name) is None and check_object_name(name) == name


def test_export_paths_stay_strictly_inside_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert inside(out, out / "results" / "j1" / "f.json") == (out / "results" / "j1" / "f.json").resolve()
    assert inside(out, out / "results" / "zz" / "../../../../PWNED") is None
    assert inside(out, out / "figures" / "..") is None  # the folder itself is not a file in it
    assert inside(out, out / "/etc/passwd") is None
    (out / "results").symlink_to(tmp_path)  # a link planted in the folder does not lead out either
    assert inside(out, out / "results" / "x") is None
