"""The PI: owns the project's state machine, from direction to decision.

``transitions`` is the state machine as pure functions (state, event, time -> new state, effects);
``workflow`` handles the PI's messages (thin handlers that perform those effects); ``state`` is its typed state; ``scores``
and ``outcomes`` rank ideas and keep what came of them; ``offline`` and ``llm`` are its minds;
``scoring`` is the offline mind's idea scorer; ``prompt.md`` is the llm mind's system prompt.
"""
