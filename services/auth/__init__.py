"""``python -m services.auth``: the nats-server auth callout that gives each job's runner a NATS user of its own (see :mod:`services.auth.callout`)."""
