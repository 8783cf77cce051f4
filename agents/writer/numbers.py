"""One way to print a number, and a check that every printed number has a source.

Every number in the paper goes through ``fmt``; the writer then parses the
finished Markdown, and each number token must match a value from the
evidence (the analysis report, the run records, the spec, the request) as
printed by ``fmt`` or correctly rounded from it. Identifiers that merely
contain digits (idea ids, job ids, file names, CPU model names, versions)
are masked first: they are strings from the evidence, not measurements.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

# A number token: not preceded by a word character, a dot (versions) or a hyphen
# (ids like round-1); an optional sign, digits, decimals and exponent. A unit
# glued after it still counts ("12.5x" is a number).
NUMBER = re.compile(r"(?<![\w.\-])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\d|\.\d)")


def fmt(x: float | int) -> str:
    """The paper's only number format: whole numbers as integers, others with 4 significant digits."""
    if isinstance(x, bool):
        raise TypeError("fmt() got a bool; print it as words")
    if isinstance(x, int):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"fmt() got {x}; non-finite numbers must not reach the paper")
    if x.is_integer():
        return str(int(x))
    a = abs(x)
    if a < 1e-3:
        return f"{x:.2e}"
    # Four significant digits, but never shown as an integer: 16.0002 prints as
    # "16.0", so a reader (and the check) can tell a measurement from a count.
    decimals = max(1, 3 - math.floor(math.log10(a)))
    text = f"{x:.{decimals}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def nodes(obj: Any, *, keys: bool = False) -> Iterator[Any]:
    """Every value in a (dumped) model, depth first: each dict, list and tuple itself, then what it holds
    (with ``keys``, a dict's keys too); a bool is a leaf like any other, for the caller to skip."""
    yield obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            if keys:
                yield from nodes(k, keys=keys)
            yield from nodes(v, keys=keys)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from nodes(v, keys=keys)


def is_number(o: Any) -> bool:
    """An int or a float, not a bool (which Python counts as an int)."""
    return isinstance(o, (int, float)) and not isinstance(o, bool)


def evidence_values(obj: Any) -> set[float]:
    """Every number in a (dumped) model, plus the length of every list in it."""
    out: set[float] = set()
    for o in nodes(obj):
        if is_number(o) and math.isfinite(o):
            out.add(float(o))
        elif isinstance(o, (list, tuple)):
            out.add(float(len(o)))
    return out


def evidence_strings(obj: Any) -> list[str]:
    """Strings in the evidence that contain digits, longest first (what to mask)."""
    found = {
        o for o in nodes(obj, keys=True)
        if isinstance(o, str) and any(ch.isdigit() for ch in o) and len(o) >= 2 and not NUMBER.fullmatch(o.strip())
    }
    return sorted(found, key=lambda s: (-len(s), s))


def mask(text: str, strings: Iterable[str]) -> str:
    """Blank out evidence strings, keeping every position (so tokens can be replaced in place)."""
    for s in strings:
        text = text.replace(s, "\x00" * len(s))
    return text


def tokens(text: str, strings: Iterable[str] = ()) -> list[str]:
    return NUMBER.findall(mask(text, strings))


def matches(token: str, value: float) -> bool:
    """Whether ``token`` prints ``value``: exactly, via ``fmt``, or correctly rounded."""
    x = float(token)
    if x == value or token == fmt(value) or (value.is_integer() and token == fmt(int(value))):
        return True
    mantissa = token.lower().split("e")[0]
    if "." not in mantissa:
        return False  # an integer token must be an integer in the evidence
    decimals = len(mantissa.split(".")[1])
    exponent = int(token.lower().split("e")[1]) if "e" in token.lower() else 0
    half_unit = 0.5 * 10.0 ** (exponent - decimals)
    return abs(x - value) <= half_unit * (1 + 1e-9)


def scrub(text: str, strings: list[str], evidence: set[float], placeholder: str = "[?]") -> tuple[str, list[str]]:
    """Replace number tokens that no evidence value prints; return the text and what was removed."""
    out, removed, pos = [], [], 0
    for m in NUMBER.finditer(mask(text, strings)):
        if not any(matches(m.group(), v) for v in evidence):
            out.append(text[pos : m.start()] + placeholder)
            removed.append(m.group())
            pos = m.end()
    out.append(text[pos:])
    return "".join(out), removed


def unverified(found: Iterable[str], evidence: set[float]) -> list[str]:
    return [t for t in dict.fromkeys(found) if not any(matches(t, v) for v in evidence)]
