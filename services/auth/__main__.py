"""``python -m services.auth``: run the auth service."""

from services.auth.callout import main

main()
