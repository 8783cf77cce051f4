"""Did the revision do what it said? Compares a draft with the previous round's, part by part.

A review item answered "act" must change the paper: more seeds change the
results, a citation round changes the related work, a limitation changes the
limitations. When the part an item is about is word for word the same as in
the previous draft, the answer was not kept, and the paper must say so: the
item is shown as a rebuttal with that reason instead of a silent "act".
"""

from __future__ import annotations

import re

from bus.schema import ItemResponse, RevisionItem

# The Markdown section each kind of item changes (rewrite_section names its own).
PART_OF_KIND = {"add_citation": "related work", "add_limitation": "limitations", "more_seeds": "results", "add_baseline": "results"}
TARGETS = {"related_work": "related work", "experimental_setup": "experimental setup"}


def parts(markdown: str) -> dict[str, str]:
    """Sections by lower-cased heading, the title as "title"; the Revisions section and appendices are left out."""
    out = {"title": next((ln[2:].strip() for ln in markdown.splitlines() if ln.startswith("# ")), "")}
    for m in re.finditer(r"^## +(.+?)\s*$(.*?)(?=^## |\Z)", markdown, re.M | re.S):
        name = m.group(1).strip().lower()
        if name != "revisions" and not name.startswith("appendix"):
            out[name] = m.group(2).strip()
    return out


def part_of(item: RevisionItem) -> str | None:
    if item.kind in PART_OF_KIND:
        return PART_OF_KIND[item.kind]
    if item.kind == "rewrite_section" and item.target:
        return TARGETS.get(item.target, item.target.replace("_", " ").lower())
    return None


def unkept(items: list[RevisionItem], responses: list[ItemResponse], before: str, after: str) -> list[ItemResponse]:
    """Responses to send instead: each "act" whose part of the paper did not change becomes a "rebut" saying so."""
    old, new = parts(before), parts(after)
    by_id = {i.id: i for i in items}
    out = []
    for r in responses:
        item = by_id.get(r.item_id)
        part = part_of(item) if item is not None and r.action == "act" else None
        if part is not None and part in old and old.get(part) == new.get(part):
            r = r.model_copy(update={
                "action": "rebut",
                "text": f"not done: the revision left the {part} section unchanged, so this item is answered by rebuttal, "
                        f"not by a change (the plan was: {r.text})",
            })
        out.append(r)
    return out
