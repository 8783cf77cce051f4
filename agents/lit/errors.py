"""What can go wrong while looking up literature, as a small tree.

    LitError
    ├── SourceUnavailable      a source cannot answer now: the chain tries the next one
    │   └── RateLimited        HTTP 429 after the retry budget was spent
    ├── PaperNotFound          a paper id the source does not know
    ├── LibraryError           a library file the user gave cannot be read at all
    └── UnresolvedCitation     a \\cite{...} key that no bib entry defines

A malformed *entry* inside a readable file is not an exception: it is reported
with its line and skipped, so one typo does not lose a whole library.
"""

from __future__ import annotations

from bus.errors import LabError


class LitError(LabError):
    """Base of the literature errors; the message is one line for a person."""


class SourceUnavailable(LitError):
    """The source is unreachable, timed out or kept failing within its budget."""


class RateLimited(SourceUnavailable):
    """The source kept answering 429 Too Many Requests."""


class PaperNotFound(LitError):
    """A paper lookup by id found nothing."""


class LibraryError(LitError):
    """A library file that cannot be read (missing, not BibTeX/CSL-JSON, not UTF-8)."""


class UnresolvedCitation(LitError):
    """LaTeX cites keys that the bibliography does not define."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(f"unresolved citation keys: {', '.join(missing)}")
