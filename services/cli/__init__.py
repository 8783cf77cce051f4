"""The ``lab`` command: one process per invocation, a thin typer app over the other packages.

``app`` holds the commands; ``run`` starts and follows a project (starting an embedded lab if
none runs); ``evolve`` runs the Self-Developing loop's activities; ``errors`` maps every failure
to one line; ``status``, ``ideas``, ``job`` and ``lit`` render or hold one command each.
"""
