"""The test suite is a package so that every folder imports the shared helpers one way: ``from tests.fakes import ...``.

pytest then puts the repository root (not tests/) on sys.path, whichever way it is started.
"""
