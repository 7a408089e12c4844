"""Licence and citation metadata: LICENSE, CITATION.cff (CFF 1.2.0) and the model cards' licence.

The paper's reference in CITATION.cff must agree with its entry in references.bib (the book's
bibliography), and the software's version and licence with pyproject.toml, so that none of
them can drift from the others.
"""
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CFF = ROOT / "CITATION.cff"
PAPER_KEY = "hussain2021autocasnet"
# the patterns of the CFF 1.2.0 schema (https://citation-file-format.github.io/1.2.0/schema)
DOI = re.compile(r"^10\.\d{4,9}(\.\d+)?/[A-Za-z0-9:/_;\-\.\(\)\[\]\\]+$")
TOP_KEYS = {"abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi", "identifiers",
            "keywords", "license", "license-url", "message", "preferred-citation", "references", "repository",
            "repository-artifact", "repository-code", "title", "type", "url", "version"}
PERSON_KEYS = {"family-names", "given-names", "name-particle", "name-suffix", "affiliation", "orcid", "email",
               "website", "alias"}


@pytest.fixture(scope="module")
def cff() -> dict:
    return yaml.safe_load(CFF.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _bib_entry(key: str):
    from pybtex.database import parse_file  # sphinxcontrib-bibtex's parser: what the book reads

    return parse_file(str(ROOT / "references.bib")).entries[key]


def _check_authors(authors: list) -> None:
    assert isinstance(authors, list) and authors, "authors: a non-empty list"
    for a in authors:
        assert isinstance(a, dict) and ("name" in a or "family-names" in a), a
        assert set(a) <= PERSON_KEYS | {"name"}, a


def test_cff_has_the_required_keys(cff, pyproject):
    assert set(cff) <= TOP_KEYS, f"keys CFF 1.2.0 does not know: {set(cff) - TOP_KEYS}"
    assert cff["cff-version"] == "1.2.0"
    assert isinstance(cff["message"], str) and cff["message"].strip()
    assert isinstance(cff["title"], str) and cff["title"].strip()
    _check_authors(cff["authors"])
    assert cff["type"] == "software"  # this file cites the software; the paper is a reference
    assert str(cff["version"]) == pyproject["version"]
    assert cff["license"] == pyproject["license"] == "MIT"  # an SPDX expression (PEP 639)


def test_cff_paper_reference_matches_references_bib(cff):
    bib = _bib_entry(PAPER_KEY)
    papers = [r for r in cff.get("references", []) if r.get("doi") == bib.fields["doi"]]
    assert len(papers) == 1, f"CITATION.cff lists no reference with the DOI of {PAPER_KEY} in references.bib"
    ref = papers[0]
    assert {"type", "title", "authors"} <= set(ref) and ref["type"] == "article"
    assert DOI.match(ref["doi"])
    _check_authors(ref["authors"])
    assert ref["title"] == bib.fields["title"].replace("{", "").replace("}", "")
    assert [a["family-names"] for a in ref["authors"]] == [" ".join(p.last_names) for p in bib.persons["author"]]
    assert ref["journal"] == bib.fields["journal"]
    assert (ref["year"], ref["volume"], ref["start"]) == tuple(int(bib.fields[k]) for k in ("year", "volume", "pages"))


def test_license_file_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert re.search(r"Copyright \(c\) \d{4} the innerear contributors", text)


@pytest.mark.parametrize("model", ["phantom_cascade", "robust_cascade"])
def test_shipped_weights_state_their_licence(model):
    card = json.loads((ROOT / "innerear" / "models" / model / "model_card.json").read_text())
    assert card["license"]["spdx"] == "MIT" and card["license"]["file"] == "LICENSE"
    assert "synthetic phantoms only" in card["license"]["statement"]
    assert "SYNTHETIC" in card["data"]["kind"]  # the statement's premise, as the card records it
