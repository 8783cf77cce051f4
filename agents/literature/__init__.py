"""The literature agent: search, novelty verdicts and BibTeX (``workflow``), its minds
(``offline``, ``llm``) and prompt (``prompt.md``). The sources themselves live in ``agents.lit``,
which the ``lab lit`` command shares.
"""
