"""No figure: the tests only need the run (the AI Scientist's plot.py convention: it reads run_* here)."""

import labtinydep  # noqa: F401  (plot.py runs in the template's environment too)
