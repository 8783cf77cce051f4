"""The writer: the paper from the analysis only (``workflow``), its minds (``offline``, ``llm``)
and prompt (``prompt.md``), and its helpers: number formatting and checking, markup for LaTeX and
Markdown, citations and BibTeX, PDF compilation, and the paper templates.

Private to the writer (and its minds): roles meet only on the bus.
"""
