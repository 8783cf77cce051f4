"""The Self-Developing loop's decisions (``workflow``, ``race``), its minds (``offline``, ``llm``), and the loop as an
evolve project's (``project``: replayed for the PI, each evaluation an experiment request to the engineer).
"""
