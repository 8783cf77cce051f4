"""The read side the CLI and the web view share: projects and their state, the conversation as
lines for a person (``describe``), the idea archive, a team's capacity and replicas, and a
project's outputs written to a folder (``export``). No process of its own.
"""
