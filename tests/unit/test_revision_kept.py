"""An item answered "act" must change the paper: drafts of consecutive rounds are compared part by part."""

from __future__ import annotations

import pytest

from agents.writer import revisions
from bus.schema import ItemResponse, Reference, RevisionItem
from tests.unit.test_writer import REFS, request, write


@pytest.fixture(autouse=True)
def no_pdf(monkeypatch):
    """These tests read the Markdown and LaTeX source; building the PDF (tested in test_writer) would only cost time."""
    from agents.writer import pdf

    monkeypatch.setattr(pdf, "available", lambda: False)

NEW_REF = Reference(key="liu2023omnigrok", title="Omnigrok: Grokking Beyond Algorithmic Data", authors=["Ziming Liu"], year=2023,
                    venue="ICLR", bibtex="@inproceedings{liu2023omnigrok, title={Omnigrok: Grokking Beyond Algorithmic Data}, "
                    "author={Liu, Ziming}, booktitle={ICLR}, year={2023}}")
ITEMS = [RevisionItem(id="r0-1", kind="add_citation", text="Cite more prior work.", target="related_work"),
         RevisionItem(id="r0-2", kind="add_limitation", text="Discuss that only one template was used.", target="limitations"),
         RevisionItem(id="r0-3", kind="rewrite_section", text="Tone down the abstract.", target="abstract")]
ACT = [ItemResponse(item_id=i.id, action="act", text=f"the writer revises the paper: {i.text}") for i in ITEMS]


async def test_a_citation_round_and_a_limitation_change_the_paper_and_an_unchanged_part_is_rebutted():
    first_out, store = await write(request().model_copy(update={"round": 0}))
    first = store.data[first_out.markdown].decode()
    second_req = request(refs=[*REFS, NEW_REF], revision_items=ITEMS, responses=ACT)  # round 1
    # the second draft goes into the same store, next to the first
    from agents.base import Context
    from agents.writer.offline import make
    from agents.writer.workflow import ROLE
    from bus.schema import Envelope

    ctx = Context(project="proj", role="writer", state=None, artifacts=store, mind=make(0, {}))
    await ROLE().handle(Envelope(project="proj", sender="pi", recipient="writer", body=second_req), ctx)
    (out, _), = ctx.outputs
    second = store.data[out.markdown].decode()
    before, after = revisions.parts(first), revisions.parts(second)
    assert "Omnigrok" not in before["related work"] and "“Omnigrok: Grokking Beyond Algorithmic Data” (Liu, 2023)" in after["related work"]
    assert before["limitations"] != after["limitations"] and "Discuss that only one template was used." in after["limitations"]
    assert before["abstract"] == after["abstract"]
    # The two kept promises stay "act"; the abstract, unchanged, is answered by rebuttal in the paper.
    assert "`r0-1` (add_citation, `related_work`): Cite more prior work. **Response (act):**" in second
    assert "`r0-2` (add_limitation, `limitations`): Discuss that only one template was used. **Response (act):**" in second
    assert ("`r0-3` (rewrite_section, `abstract`): Tone down the abstract. "
            "**Response (rebut):** not done: the revision left the abstract section unchanged") in second


def test_unkept_only_touches_act_answers_whose_part_is_unchanged():
    before = "# T\n\n## Abstract\n\nA.\n\n## Limitations\n\n- one\n"
    after = "# T\n\n## Abstract\n\nA.\n\n## Limitations\n\n- one\n- two\n"
    rebut = ItemResponse(item_id="r0-3", action="rebut", text="we disagree")
    out = revisions.unkept(ITEMS, [ACT[1], ACT[2], rebut], before, after)
    assert [r.action for r in out] == ["act", "rebut", "rebut"]
    assert out[2].text == "we disagree" and out[1].text.startswith("not done")
