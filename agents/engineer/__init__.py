"""The engineer: turns a plan into a job (``workflow``, ``jobs``), its minds (``offline``,
``llm``) and prompt (``prompt.md``). Code edits are ``agents.codeedit``, shared with evolve.
"""
