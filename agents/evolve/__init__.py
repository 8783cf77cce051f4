"""The Self-Developing loop's decisions (``workflow``) and its minds (``offline``, ``llm``);
``services.cli.evolve`` runs its activities.
"""
