"""The lab's processes, one package each, over shared libraries (``common``, ``read``, ``executors``).

==========  ==============================================================  ==========================
package     what runs there                                                 started as
==========  ==============================================================  ==========================
cli         the ``lab`` command: start a lab, run and follow projects,       ``lab ...``
            speak as co-PI, export, evolve
host        one agent role on the bus (lanes, wiring, the engineer's job    ``lab agent ROLE``
            watch, the liveness probe)
runner      one experiment job: the runner holding the job's credential,    ``python -m services.runner``
            the launcher that starts the experiment without it, the         ``python -m services.runner.launcher``
            sandbox, checkpoints
lab         one machine's lab: the supervisor of nats-server, the agents    ``lab up`` / ``lab down``
            and the auth service; what a lab leaves behind
auth        the nats-server auth callout: a NATS user per job               ``python -m services.auth``
web         the lab in a browser                                            ``lab web``
executors   where jobs run (local sandbox, Docker, Kubernetes); a library   (in the engineer's host)
read        what the CLI and the web view read from the bus; a library      (in cli and web)
common      where a lab keeps things, how a process finds its bus           (everywhere)
==========  ==============================================================  ==========================

Arrows point down: ``cli`` may use every other package; ``host``, ``lab``, ``web`` and ``auth``
never import ``cli``; ``common`` imports none of them.
"""
