"""``lab agent ROLE``: the process that runs one role on the bus.

``agent`` reads the role's work streams, validates each message and hands it to the role in the
project's lane (``lanes``); ``wiring`` builds each role's typed context and what runs beside it
(for the engineer, the executor, its jobs port ``jobs`` and the job watch ``job_watch``);
``alive`` is the Kubernetes liveness probe; ``logs`` sets up JSON logging. The host knows no role
by name: what differs between roles lives in ``wiring``.
"""
