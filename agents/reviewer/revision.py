"""Did a revision change what an item named? The reviewer's own diff of a draft against the previous round's.

The writer checks its own revisions too; the reviewer does not take its word.
An item answered "act" names a part of the paper (its target section) and,
where the item quotes the paper, a sentence. The item is done only when that
sentence is gone, or (with no sentence) the section's words changed. Numbers
are masked before comparing, so a revision that only reprints numbers changed
nothing; the Revisions section, references and appendices are not the paper's
text, so adding a "Revisions" section changes nothing either.

Items about evidence rather than text (more seeds, a baseline) are closed by
the evidence: the reviewer's checks of the new report raise them again if they
still hold.
"""

from __future__ import annotations

import re

from agents.reviewer.checks import body_parts, mask_numbers, sections
from bus.schema import ItemResponse, RevisionItem

BY_EVIDENCE = {"more_seeds", "add_baseline"}
PART_OF_KIND = {"add_citation": "related work", "add_limitation": "limitations"}
# Quoted text in an item: the paper's sentence it is about (at least a few words, to tell it from a quoted word).
QUOTED = re.compile(r"\"([^\"]{24,})\"")


def part_of(item: RevisionItem) -> str:
    if item.kind in PART_OF_KIND:
        return PART_OF_KIND[item.kind]
    return item.target.replace("_", " ").lower()


def _norm(text: str) -> str:
    return mask_numbers(text.replace("…", " ")).lower()


def _quoted(item: RevisionItem, before: str) -> list[str]:
    """The sentences of the item's part of the previous draft that the item quotes (cut at an ellipsis where it was shortened).

    An item may quote other parts as evidence (the abstract a title contradicts); only its own part must change.
    """
    parts = body_parts(sections(before))
    old = _norm(parts.get(part_of(item), " ".join(parts.values())))
    out = []
    for q in QUOTED.findall(item.text):
        key = _norm(q.split("…")[0]).strip()
        if len(key) >= 24 and key in old:
            out.append(key)
    return out


def still_open(item: RevisionItem, before: str, after: str) -> str:
    """Why the revision did not do ``item`` (the unchanged text it names), or "" when it did or cannot be told."""
    if item.kind in BY_EVIDENCE:
        return ""
    new_text = _norm(" ".join(body_parts(sections(after)).values()))
    kept = [q for q in _quoted(item, before) if q in new_text]
    if kept:
        return f"the sentence it names is still in the paper, numbers aside (\"{kept[0][:120]}\")"
    if _quoted(item, before):
        return ""
    part = part_of(item)
    old, new = body_parts(sections(before)), body_parts(sections(after))
    if part in old and part in new and _norm(old[part]) == _norm(new[part]):
        return f"the {part} section it names is unchanged, numbers aside"
    return ""


def open_items(items: list[RevisionItem], responses: list[ItemResponse] | None, before: str, after: str) -> list[RevisionItem]:
    """Items answered "act" (every item when the answers are not known) whose named text the revision left as it was."""
    acted = {r.item_id for r in responses if r.action == "act"} if responses is not None else {i.id for i in items}
    out = []
    for item in items:
        why = still_open(item, before, after) if item.id in acted else ""
        if why:
            out.append(item.model_copy(update={"text": f"Still open from {item.id}: answered \"act\", but {why}. The item asked: {item.text}"}))
    return out
