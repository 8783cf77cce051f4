"""The reviewer: NeurIPS-form reviews and the meta-review (``workflow``), its minds (``offline``,
``llm``) and prompt (``prompt.md``).
"""
