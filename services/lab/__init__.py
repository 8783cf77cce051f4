"""``lab up`` / ``lab down``: one machine's lab.

``supervisor`` owns the embedded nats-server (or cluster), the six agents, the auth service and
optionally the web view, restarting what dies; ``lifecycle`` is what a lab leaves behind and needs
before it starts (signals, pid files, free space).
"""
