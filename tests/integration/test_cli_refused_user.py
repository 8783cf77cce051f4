"""A NATS user the server refuses: `lab logs` says so in one line, against a real server."""

from __future__ import annotations

import subprocess

from tests.conftest import lab_cmd


def _one_line_failures(runs: list[tuple[list[str], dict[str, str]]]) -> list[str]:
    """Run ``lab`` commands side by side (a refused request takes the client's 10 s timeout); each must fail in one line."""
    procs = [subprocess.Popen(lab_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args, env in runs]
    lines = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 2, (out, err)
        assert "Traceback" not in out + err, err
        got = [line for line in (err + out).splitlines() if line.strip()]
        assert len(got) == 1, err + out
        lines.append(got[0])
    return lines


async def test_lab_logs_as_a_user_the_server_refuses_says_so_in_one_line(admin_bus, nats_server, lab_env) -> None:
    _, env = lab_env
    env = {**env, "LAB_NATS_URL": nats_server.url}
    # the runner user may not read the conversation or anyone's state: every JetStream request it makes is refused
    runner = {**env, "LAB_NATS_USER": "runner", "LAB_NATS_PASSWORD": nats_server.credentials["runner"]}
    wrong = {**env, "LAB_NATS_USER": "copi", "LAB_NATS_PASSWORD": "not-the-password"}
    project, everything, bad_password = _one_line_failures([
        (["logs", "--project", "p1"], runner),
        (["logs"], runner),  # printed nothing and exited 0 before: the refusal read as an empty log
        (["logs", "--project", "p1"], wrong),
    ])
    refused = f"lab: error: the NATS server at {nats_server.url} refuses user 'runner': permissions violation for publish to "
    assert project == refused + '"$js.api.stream.info.kv_lab_state"', project
    assert everything == refused + '"$js.api.stream.info.lab_convo"', everything
    assert bad_password == f"lab: error: cannot connect to NATS at {nats_server.url}: credentials refused", bad_password
