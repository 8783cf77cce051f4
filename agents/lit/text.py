"""Words: the shared tokenizer for queries, the FTS index and the offline novelty rule.

One tokenizer everywhere keeps the ranking and the novelty judgement
explainable: a term either appears in both texts or it does not.
"""

from __future__ import annotations

import re
import unicodedata

STOPWORDS = frozenset(
    """a an and are as at be by can do does for from has have how if in into is it its of on or our over
    than that the their then there these this to toward towards under up use used using via vs was we
    what when where which while who why will with without within based study studies new approach method methods not all any
    paper result results show shows effect effects""".split()
)

_LATEX_CMD = re.compile(r"\\[a-zA-Z]+\*?\s*")
_ACCENT = re.compile(r"\\([\"'`^~=.]|[cvHu](?=[\s{]))\s*\{?\s*([A-Za-z])\}?")
_MARKS = {'"': "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", "=": "\u0304", ".": "\u0307",
          "c": "\u0327", "v": "\u030c", "H": "\u030b", "u": "\u0306"}
_LETTERS = {"\\ss": "ß", "\\L": "Ł", "\\l": "ł", "\\O": "Ø", "\\o": "ø", "\\ae": "æ", "\\AE": "Æ", "\\aa": "å", "\\AA": "Å"}
_WORD = re.compile(r"[a-z0-9]+")


def plain(text: str) -> str:
    """LaTeX-ish text as plain text: accents as Unicode, other commands and braces gone."""
    text = unicodedata.normalize("NFC", _ACCENT.sub(lambda m: m.group(2) + _MARKS[m.group(1)], text))
    text = re.sub(r"\\(ss|AE|ae|AA|aa|[LlOo])(?![A-Za-z])", lambda m: _LETTERS["\\" + m.group(1)], text)
    text = _LATEX_CMD.sub("", text.replace("\\&", "&").replace("\\%", "%").replace("\\_", "_"))
    text = re.sub(r"\\(.)", r"\1", text).replace("{", "").replace("}", "")
    return re.sub(r"\s+", " ", text).strip()


def _stem(word: str) -> str:
    # Just enough to meet plurals half way ("networks" ~ "network"); a real
    # stemmer would make the novelty rule harder to read.
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Content words, lowercased, ASCII-folded, in order (duplicates kept)."""
    folded = unicodedata.normalize("NFKD", plain(text)).encode("ascii", "ignore").decode().lower()
    return [w for w in _WORD.findall(folded.replace("_", " ")) if w not in STOPWORDS and len(w) > 1]


def terms(text: str) -> set[str]:
    """Content words, stemmed, as a set: what the novelty rule compares."""
    return {_stem(w) for w in words(text)}
