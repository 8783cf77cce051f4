"""`lab web`: the lab in a browser — projects, one project's conversation live, its experiments, analysis,
reviews and paper, and a co-PI box.

Pages are rendered on the server (jinja2) and kept live by a little plain
JavaScript over server-sent events: no front-end build. Layout:

- ``views``: what each page shows, computed from the conversation (pure, unit-tested);
- ``feeds``: reading the bus for a page (conversation, job logs, artifacts);
- ``auth``: the co-PI token that actions need;
- ``app``: the Starlette app and its routes; ``serve``: `lab web` itself.
"""
