"""The user's library: BibTeX/CSL-JSON reading, the FTS5 index, BibTeX output and the citation check."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.lit.bibtex import (
    bib_keys,
    check_citations,
    cite_keys,
    clean_key,
    make_key,
    missing_citations,
    to_bibtex,
    unique_keys,
)
from agents.lit.errors import LibraryError, UnresolvedCitation
from agents.lit.index import FtsIndex
from agents.lit.library_files import parse_bibtex, read_library_file
from tests.conftest import TESTS

LIB = TESTS / "data" / "lit"


@pytest.fixture
def index() -> FtsIndex:
    idx = FtsIndex()
    idx.upsert(read_library_file(LIB / "library.bib").refs)
    yield idx
    idx.close()


@pytest.mark.parametrize(
    ("query", "best"),
    [
        ("decoupled weight decay regularization", "loshchilov2019decoupled"),
        ("adam stochastic optimization", "kingma2015adam"),
        ("dropout overfitting", "srivastava2014dropout"),
        ("mechanistic interpretability of grokking", "nanda2023progress"),
        ("label smoothing", "muller2019label"),
        ("Müller", "muller2019label"),  # accents folded both ways
        ("warm restarts", "loshchilov2017sgdr"),
    ],
)
def test_best_match_ranks_first(index: FtsIndex, query: str, best: str) -> None:
    hits = index.search(query, 5)
    assert hits[0].ref.key == best
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_title_match_outranks_a_single_shared_word(index: FtsIndex) -> None:
    keys = [h.ref.key for h in index.search("grokking weight decay", 13)]
    # Both weight decay papers hold two query words in the title; grokking ones hold one.
    assert set(keys[:2]) == {"loshchilov2019decoupled", "krogh1991simple"}
    assert "power2022grokking" in keys and "kingma2015adam" not in keys


def test_no_content_words_and_no_match_are_empty(index: FtsIndex) -> None:
    assert index.search("the of and", 5) == []
    assert index.search("photosynthesis", 5) == []


def test_readding_a_key_updates_it_and_changes_the_fingerprint(index: FtsIndex) -> None:
    before = index.fingerprint()
    ref = index.search("adam", 1)[0].ref
    added, updated = index.upsert([ref.model_copy(update={"title": "Adam Revisited: Photosynthesis"})])
    assert (added, updated) == (0, 1) and index.count() == 13
    assert index.search("photosynthesis", 5)[0].ref.key == "kingma2015adam"
    assert index.fingerprint() != before


def test_malformed_entry_is_skipped_with_its_line(tmp_path: Path) -> None:
    parsed = read_library_file(LIB / "malformed.bib")
    assert [r.key for r in parsed.refs] == ["srivastava2014dropout", "kingma2015adam"]
    assert [p.line for p in parsed.problems] == [8]
    assert "broken2020" in parsed.problems[0].reason


def test_entry_without_title_and_duplicate_key_are_reported() -> None:
    text = "@misc{a1,\n  title = {First}\n}\n\n@misc{a1,\n  title = {Again}\n}\n\n@misc{notitle,\n  year = {2020}\n}\n"
    parsed = parse_bibtex(text)
    assert [r.title for r in parsed.refs] == ["First"]
    assert [(p.line, "duplicate" in p.reason or "no title" in p.reason) for p in parsed.problems] == [(5, True), (9, True)]


def test_csl_json_items_with_lines() -> None:
    parsed = read_library_file(LIB / "library.json")
    assert [r.key for r in parsed.refs] == ["he2016deep", "smith2017cyclical"]
    he = parsed.refs[0]
    assert he.year == 2016 and he.authors[0] == "He, Kaiming" and he.paper_id == "10.1109/CVPR.2016.90"
    assert he.bibtex.startswith("@inproceedings{he2016deep,") and "booktitle = {IEEE Conference" in he.bibtex
    assert [p.line for p in parsed.problems] == [11]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.bib", None, "no such file"),
        ("notes.bib", "just some notes, no entries", "no BibTeX entries"),
        ("lib.json", '{"id": "x"}', "list of items"),
        ("latin1.bib", b"@misc{a, title={Caf\xe9}}", "not UTF-8"),
    ],
)
def test_unreadable_files_raise_one_line(tmp_path: Path, name: str, content: object, message: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(LibraryError, match=message) as e:
        read_library_file(path)
    assert "\n" not in str(e.value)


def test_keys_are_letters_and_digits() -> None:
    assert clean_key("kingma:2015-adam_v2") == "kingma2015adamv2"
    assert clean_key("2015adam") == "ref2015adam" and clean_key("::") == "ref"
    assert make_key(["Jorge Pérez", "P. Barceló"], 2021, "Attention is Turing-Complete") == "perez2021attention"
    assert make_key(["Müller, Rafael"], 2019, "When Does Label Smoothing Help?") == "muller2019label"
    assert make_key([], None, "The") == "anon"


def test_bibtex_output_and_citation_check() -> None:
    refs = read_library_file(LIB / "library.bib").refs[:3]
    twin = refs[0].model_copy(update={"title": "Another paper", "paper_id": "x"})
    keyed = unique_keys([*refs, twin])
    assert [r.key for r in keyed][-1] == "power2022grokkingb" and keyed[-1].bibtex.startswith("@article{power2022grokkingb,")
    bib = to_bibtex(keyed)
    assert bib_keys(bib) == {r.key for r in keyed}
    parsed = parse_bibtex(bib)
    assert not parsed.problems and [r.key for r in parsed.refs] == [r.key for r in keyed]

    latex = r"As shown~\citep[p.~3]{power2022grokking, kingma2015adam} and \citet{loshchilov2019decoupled}. \nocite{*}"
    assert cite_keys(latex) == ["power2022grokking", "kingma2015adam", "loshchilov2019decoupled"]
    check_citations(latex, bib)
    bad = latex + r" \cite{vaswani2017attention}"
    assert missing_citations(bad, bib) == ["vaswani2017attention"]
    with pytest.raises(UnresolvedCitation, match="vaswani2017attention"):
        check_citations(bad, bib)
    assert bib_keys("@comment{x,\n}\n@string{jmlr = {JMLR}}") == set()
