"""The environment's failures, in one line for the user: which file or setting is at fault, and why.

The CLI maps every OSError and UnicodeError that reaches it through here, so a
read-only LAB_HOME, a full disk or a file that is not text reads the same from
every command, never as a traceback.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _under(path: Path, home: Path) -> bool:
    try:
        path.resolve().relative_to(home.resolve())
        return True
    except (ValueError, OSError):
        return False


def describe_os_error(error: BaseException, home: Path) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
    if isinstance(error, UnicodeError):
        return f"text that cannot be encoded or decoded: {error}"
    assert isinstance(error, OSError)
    name = error.filename
    where = f" ({name})" if name else ""
    what = error.strerror or str(error)
    if error.errno in NOT_WRITABLE and (name is None or _under(Path(name), home) or _under(home, Path(name))):
        return f"LAB_HOME {home} is not writable: {what}{where}; point LAB_HOME at a writable folder"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        target = Path(name) if name else home
        while not target.exists() and target != target.parent:
            target = target.parent
        usage = shutil.disk_usage(target)
        mib = 1 << 20
        return (f"the disk is full{where}: {usage.used / mib:.1f} MiB used of {usage.total / mib:.1f} MiB, {usage.free / mib:.1f} MiB free; "
                "free some space or point LAB_HOME elsewhere")
    return f"{name}: {what}" if name else what
