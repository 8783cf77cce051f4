"""Needs nothing running: no nats-server, no lab process, no external tool; the folder runs in under a minute."""
