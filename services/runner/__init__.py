"""One experiment job: ``python -m services.runner`` and ``python -m services.runner.launcher``.

The runner (``runner``) holds the job's credential, pulls the bundle, streams logs and uploads
results; on Docker and Kubernetes the launcher (``launcher``) starts the experiment in a second
container with no credential, and ``split`` is the exchange between the two. ``sandbox`` applies
the limits from outside (bubblewrap, rlimits, a child subreaper), ``proctree`` reads the process
tree from the kernel, and ``checkpoint`` keeps checkpoints in the artifact store across preemption.
"""
