"""Literature search for the lab: sources, a local FTS5 library, the fallback chain, BibTeX.

Modules: ``sources`` (the Source protocol, the user's and the template's
libraries), ``s2`` and ``openalex`` (web sources, first in the default chain), ``chain`` (fallback
and cache), ``index`` (SQLite FTS5 + BM25), ``library_files`` (BibTeX and
CSL-JSON in), ``bibtex`` (BibTeX out, keys, the \\cite check), ``config``
(which sources), ``errors``.
"""

from agents.lit.bibtex import check_citations, cite_keys, missing_citations, to_bibtex
from agents.lit.chain import Answer, FallbackChain
from agents.lit.errors import LibraryError, LitError, RateLimited, SourceUnavailable, UnresolvedCitation
from agents.lit.sources import LocalLibrarySource, Source, TemplateLibrarySource

__all__ = [
    "Answer",
    "FallbackChain",
    "LibraryError",
    "LitError",
    "LocalLibrarySource",
    "RateLimited",
    "Source",
    "SourceUnavailable",
    "TemplateLibrarySource",
    "UnresolvedCitation",
    "check_citations",
    "cite_keys",
    "missing_citations",
    "to_bibtex",
]
