"""``python -m services.runner``: run one job (see :mod:`services.runner.runner`)."""

from services.runner.runner import main

main()
