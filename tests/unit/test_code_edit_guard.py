"""The code-edit guard: good edits apply, broken ones say why, escapes from the runner's limits are refused."""

from __future__ import annotations

import pytest

from agents.codeedit import EditForbidden, EditNotApplicable, apply_edits, guard
from bus.schema import CodeEdit

EXPERIMENT = '''import argparse
import json
import time

parser = argparse.ArgumentParser()
parser.add_argument("--out_dir", default="run")
parser.add_argument("--time_budget", type=float, default=60.0)
args = parser.parse_args()
lr = 0.1
start = time.time()
for step in range(100):
    if time.time() - start > args.time_budget:
        break
    loss = lr * step
print(json.dumps({"loss": loss}))
'''
FILES = {"experiment.py": EXPERIMENT, "plot.py": "import matplotlib\n", "template.yaml": "name: t\n"}


def edit(search: str, replace: str, path: str = "experiment.py") -> CodeEdit:
    return CodeEdit(path=path, search=search, replace=replace)


def test_good_edit_applies_and_leaves_other_files() -> None:
    out = apply_edits(FILES, [edit("lr = 0.1\n", "lr = 0.05\nmomentum = 0.9\n")], {"experiment.py", "plot.py"})
    assert "lr = 0.05\nmomentum = 0.9\n" in out["experiment.py"]
    assert "lr = 0.1\n" not in out["experiment.py"]
    assert out["plot.py"] == FILES["plot.py"] and FILES["experiment.py"] == EXPERIMENT  # input untouched


def test_edits_apply_in_order_on_the_edited_text() -> None:
    out = apply_edits(FILES, [edit("lr = 0.1", "lr = 0.2"), edit("lr = 0.2", "lr = 0.3")])
    assert "lr = 0.3" in out["experiment.py"]


def test_search_not_found_names_file_and_first_line() -> None:
    with pytest.raises(EditNotApplicable, match=r"experiment.py: search text not found: 'lr = 0.5'"):
        apply_edits(FILES, [edit("lr = 0.5\nmore = 1\n", "lr = 0.3\n")])


def test_ambiguous_search_is_refused() -> None:
    with pytest.raises(EditNotApplicable, match="matches 2 times"):
        apply_edits(FILES, [edit("time.time()", "0")])


def test_syntax_error_after_edit_is_reported_with_line() -> None:
    with pytest.raises(EditNotApplicable, match=r"experiment.py: line \d+: syntax error"):
        apply_edits(FILES, [edit("lr = 0.1\n", "lr = (0.1\n")])


@pytest.mark.parametrize(
    "path, why",
    [("../services/runner.py", "'..'"), ("/etc/passwd", "relative"), ("template.yaml", "not editable"), ("runner.py", "not editable")],
)
def test_paths_outside_the_editable_files_are_refused(path: str, why: str) -> None:
    files = {**FILES, path: "x = 1\n"}
    with pytest.raises(EditForbidden, match=why):
        apply_edits(files, [CodeEdit(path=path, search="x = 1", replace="x = 2")], {"experiment.py", "plot.py", path})


def test_signal_alarm_is_refused_with_reason_and_line() -> None:
    bad = edit("lr = 0.1\n", "lr = 0.1\nimport signal\nsignal.alarm(10**6)\n")
    with pytest.raises(EditForbidden) as e:
        apply_edits(FILES, [bad])
    msg = str(e.value)
    assert "signal.alarm" in msg and "line 11" in msg and "time limit" in msg
    assert "\n" not in msg


def test_changing_the_time_budget_default_is_refused() -> None:
    bad = edit('default=60.0)', 'default=1e9)')
    with pytest.raises(EditForbidden, match=r"time limit call .*--time_budget.*1000000000.0"):
        apply_edits(FILES, [bad])


def test_overwriting_the_time_budget_is_refused() -> None:
    bad = edit("args = parser.parse_args()\n", "args = parser.parse_args()\nargs.time_budget = 10**9\n")
    with pytest.raises(EditForbidden, match=r"time limit assignment `args.time_budget = 10 \*\* 9`"):
        apply_edits(FILES, [bad])


@pytest.mark.parametrize(
    "code, found",
    [
        ("import os\nos.execv(sys.executable, sys.argv)\n", "os.execv"),
        ("import subprocess\nsubprocess.run(['python', 'experiment.py'])\n", "import subprocess"),
        ("from os import system as s\ns('python experiment.py &')\n", "os.system"),
        ("import os\nos.setsid()\n", "os.setsid"),
        ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))\n", "resource.setrlimit"),
        ("import sys\nsys.argv = ['experiment.py', '--time_budget', '1e9']\n", "sys.argv"),
        ("import multiprocessing\n", "multiprocessing"),
        ("import urllib.request\nurllib.request.urlopen('http://example.com')\n", "import urllib.request"),
        ("import requests\n", "network"),
        ("import os as o\no.fork()\n", "os.fork"),
    ],
)
def test_relaunching_and_escaping_are_refused(code: str, found: str) -> None:
    bad = edit("lr = 0.1\n", "lr = 0.1\nimport sys\n" + code)
    with pytest.raises(EditForbidden, match="the edit adds") as e:
        apply_edits(FILES, [bad])
    assert found in str(e.value)


def test_only_what_the_edit_introduces_is_refused() -> None:
    # A template that already uses signal for its own reasons can still be edited elsewhere.
    original = "import signal\nsignal.signal(signal.SIGTERM, lambda *a: None)\nlr = 0.1\n"
    guard("experiment.py", original, original.replace("lr = 0.1", "lr = 0.2"))
    with pytest.raises(EditForbidden, match="signal.alarm"):
        guard("experiment.py", original, original + "signal.alarm(5)\n")


def test_plot_edits_are_guarded_too() -> None:
    with pytest.raises(EditForbidden, match="socket"):
        apply_edits(FILES, [edit("import matplotlib\n", "import matplotlib\nimport socket\n", path="plot.py")])


@pytest.mark.parametrize(
    "code, found",
    [
        # The red team's edit: a root shell with the setuid bit, left in the outputs.
        ("import os, shutil\nshutil.copyfile('/usr/bin/bash', '/job/out/rootsh')\nos.chmod('/job/out/rootsh', 0o4755)\n", "'/usr/bin/bash'"),
        ("import os\nos.chmod('/job/out/rootsh', 0o4755)\n", "chmod 0o4755"),
        ("import os\nos.chmod('/job/out/x', mode=0o2755)\n", "chmod 0o2755"),
        ("from pathlib import Path\nPath('/job/out/x').chmod(0o1777)\n", "chmod 0o1777"),
        ("import os, stat\nos.chmod('/job/out/x', os.stat('/job/out/x').st_mode | stat.S_ISUID)\n", "computed mode"),
        ("import stat\nbits = stat.S_ISUID\n", "S_ISUID"),
        ("import shutil\nshutil.copy2('/job/code/experiment.py', '/job/out/e.py')\n", "copies permission bits"),
        ("import os\nos.symlink('/job/code', '/job/out/code')\n", "creates a link"),
        ("import os\nos.mkfifo('/tmp/f')\n", "FIFO"),
        ("import os\nos.chown('/job/out/x', 0, 0)\n", "ownership"),
        ("open('/etc/cron.d/x', 'w').write('* * * * * root sh')\n", "'/etc/cron.d/x'"),
        ("open('/home/lab/.bashrc', 'a')\n", "'/home/lab/.bashrc'"),
    ],
)
def test_edits_that_plant_privileges_or_write_outside_the_job_are_refused(code: str, found: str) -> None:
    """The policy half of "nothing the experiment writes is trusted": refused before a job is spent on it.

    What this cannot show: that a determined edit is stopped (``getattr`` gets past any
    static check). The sandbox's uid and the upload's plain-file copy hold regardless;
    the hostile-sandbox tests show those.
    """
    bad = edit("lr = 0.1\n", "lr = 0.1\n" + code)
    with pytest.raises(EditForbidden, match="the edit adds") as e:
        apply_edits(FILES, [bad])
    assert found in str(e.value)


@pytest.mark.parametrize(
    "code",
    [
        "import os\nos.chmod('/job/out/run.sh', 0o755)\n",
        "open('/job/out/notes.txt', 'w').write('x')\n",
        "open('/tmp/scratch.bin', 'wb')\n",
        "import shutil\nshutil.copyfile('/job/code/experiment.py', '/job/out/e.py')\n",
        "print('a/b', '/', 'ratio 1/2')\n",
    ],
)
def test_ordinary_file_work_inside_the_job_is_accepted(code: str) -> None:
    apply_edits(FILES, [edit("lr = 0.1\n", "lr = 0.1\n" + code)])
