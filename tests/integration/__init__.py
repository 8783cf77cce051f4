"""A real nats-server, executors against kmock / the test kubelet / the fake Docker engine, the sandbox, real subprocesses."""
