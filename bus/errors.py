"""The bus's exceptions, so callers catch what they can handle.

    LabBusError
    ├── InvalidToken          a subject token with '.', '*', '>', whitespace, or empty
    ├── ServerStartError      the embedded nats-server could not start (port in use, bad binary)
    ├── ConnectError          no NATS server at the URL, or credentials refused
    ├── StateConflict         a compare-and-set on project state lost to another writer
    ├── MessageTooLarge       an envelope over the bus's size limit
    └── ArtifactMissing       an object-store name that holds nothing
"""


class LabBusError(Exception):
    """Base of every error the bus raises on purpose."""


class InvalidToken(LabBusError, ValueError):
    pass


class ServerStartError(LabBusError):
    pass


class ConnectError(LabBusError):
    pass


class StateConflict(LabBusError):
    pass


class MessageTooLarge(LabBusError):
    pass


class ArtifactMissing(LabBusError, KeyError):
    pass
