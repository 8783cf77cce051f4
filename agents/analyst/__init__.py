"""The analyst: runs against baselines with paired statistics (``workflow``, ``agents.stats``),
figures (``figures``), its minds (``offline``, ``llm``) and prompt (``prompt.md``).
"""
