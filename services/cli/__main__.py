"""``python -m services.cli``: the same as the ``lab`` console script."""

from services.cli.app import main

main()
