"""analysis.json: the analyst's report with every number as the paper prints it, and the check against it.

Why: a reader must be able to find each number of the paper in a file of the
output folder. ``fmt`` rounds to four significant digits, so the raw floats of
the report alone do not show "0.8123"; the document therefore also lists
``display``, every value of the evidence printed by ``fmt`` (and every number
token inside its strings, such as the flags). A decimal printed in the paper is
*traced* when it is one of those strings, equals a raw number of analysis.json,
or equals a number of a run's ``final_info.json``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from agents.writer.numbers import NUMBER, fmt, is_number, mask, matches, nodes
from bus.schema import DraftRequest


def display_numbers(obj: Any) -> set[str]:
    """Every number of a dumped model as ``fmt`` prints it, plus the number tokens of its strings."""
    out: set[str] = set()
    for o in nodes(obj):
        if is_number(o):
            if math.isfinite(o):
                out.add(fmt(o))
                if isinstance(o, float) and o.is_integer():
                    out.add(fmt(int(o)))
        elif isinstance(o, str):
            out.update(NUMBER.findall(o))
        elif isinstance(o, (list, tuple)):
            out.add(str(len(o)))
    return out


def raw_numbers(obj: Any) -> set[float]:
    return {float(o) for o in nodes(obj) if is_number(o)}


def analysis_document(request: DraftRequest, mind: str) -> dict[str, Any]:
    """What the writer stores as analysis.json next to the paper."""
    doc: dict[str, Any] = {
        "report": request.report.model_dump(mode="json"),
        "correction": request.report.correction,
        "spec": request.spec.model_dump(mode="json"),
        "usage": {role: u.model_dump(mode="json") for role, u in request.usage.items()},
        "not_novel": request.not_novel,
        "mind": mind,
    }
    doc["display"] = sorted(display_numbers(doc))
    return doc


# Layout options of the LaTeX template (``[width=0.8\linewidth]``) are typesetting, not findings.
_LATEX_OPTIONS = re.compile(r"\\[a-zA-Z]+\[[^\]]*\]")


def decimals(text: str, strings: Iterable[str] = ()) -> list[str]:
    """Decimal number tokens of a text (integers are counts and ids, not measurements), identifiers masked."""
    text = _LATEX_OPTIONS.sub(" ", text)
    return [t for t in NUMBER.findall(mask(text, strings)) if "." in t.lower().split("e")[0]]


def untraced(text: str, analysis: dict[str, Any], final_infos: Iterable[dict[str, Any]] = (), strings: Iterable[str] = ()) -> list[str]:
    """Decimals in ``text`` found neither in analysis.json (as printed or raw) nor in any final_info.json."""
    shown = set(analysis.get("display", []))
    raw = raw_numbers(analysis)
    for fi in final_infos:
        raw |= raw_numbers(fi)
    return [t for t in dict.fromkeys(decimals(text, strings)) if t not in shown and float(t) not in raw]


def canonical(text: str, strings: list[str], evidence: set[float], shown: set[str]) -> tuple[str, list[tuple[str, str]]]:
    """Rewrite each decimal that rounds an evidence value differently from ``fmt`` into ``fmt``'s form.

    A mind may write "0.81" for 0.8123; the paper then prints "0.8123", which
    analysis.json lists, so the number can be found. Returns the pairs rewritten.
    """
    out, changed, pos = [], [], 0
    for m in NUMBER.finditer(mask(text, strings)):
        tok = m.group()
        if "." not in tok.lower().split("e")[0] or tok in shown or float(tok) in evidence:
            continue
        value = next((v for v in sorted(evidence) if matches(tok, v)), None)
        if value is None:
            continue
        out.append(text[pos : m.start()] + fmt(value))
        changed.append((tok, fmt(value)))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), changed
