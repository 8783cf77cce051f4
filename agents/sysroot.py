"""The read-only system every bubblewrap sandbox of the lab is built on: the runner's for experiments, the writer's for TeX.

Both build their filesystem from nothing (no ``--ro-bind / /``): ``/usr``, the
top-level links into it, a few ``/etc`` files and whatever else the caller
names. One list here, so a file one sandbox needs is not missing from the other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime", "fonts", "alternatives", "mime.types")
TOP_LINKS = ("bin", "lib", "lib32", "lib64", "sbin")


def system_binds(extra: Sequence[str] = ()) -> list[str]:
    """bwrap arguments binding /usr, the top-level links into it, ``extra`` paths (where they exist) and :data:`ETC_FILES`, read-only."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in TOP_LINKS:
        p = Path("/") / name
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    for path in extra:
        args += ["--ro-bind-try", path, path]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args
