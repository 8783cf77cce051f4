"""An agent is alive while its heartbeat file is fresh: what the Kubernetes liveness probe (`python -m services.host.alive`) reads."""

from __future__ import annotations

import os
import time
from pathlib import Path

from services.host.alive import fresh
from services.host.alive import main as alive_main


def test_alive_is_fresh_only_while_heartbeats_are_recent(tmp_path: Path) -> None:
    beat = tmp_path / "pi.alive"
    assert fresh(beat, 30)[0] is False and alive_main([str(beat)]) == 1
    beat.touch()
    assert fresh(beat, 30)[0] is True and alive_main([str(beat), "30"]) == 0
    old = time.time() - 120
    os.utime(beat, (old, old))
    ok, why = fresh(beat, 30)
    assert not ok and "last heartbeat 120s ago" in why
    assert alive_main([]) == 2
