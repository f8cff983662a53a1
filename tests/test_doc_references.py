"""Every section of a doc that the code, its error messages or the tests cite exists: a citation
such as ``(GETTING_STARTED.md, "ImageNet weights")`` names a heading or a bold lead-in
(``**Checked weights.**``) of that file, so moving a section without its citations fails here.
Sections of the top-level README are not cited: it only points to the other docs."""

import glob
import os
import re

import pytest
from conftest import ROOT

SOURCES = sorted(
    os.path.relpath(p, ROOT)
    for pattern in (
        "train_net.py",
        "projects/**/*.py",
        "tools/*.py",
        "demo/*.py",
        "datasets/*.py",
        "tests/**/*.py",
    )
    for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
)
# `FILE.md, "Section"`, also across a line break of a comment or a string.
CITATION = re.compile(r"([\w/]+\.md),\s*(?:#\s*)?\"([^\"]+)\"")
README_SECTION = re.compile(r"(?<![\w/])README,?\s*\"")


def sections(doc):
    with open(os.path.join(ROOT, doc)) as f:
        text = f.read()
    headings = re.findall(r"(?m)^#+\s+(.+?)\s*$", text)
    lead_ins = re.findall(r"\*\*([^*]+?)\.?\*\*", text)
    return [s.strip("`") for s in headings + lead_ins]


def has_section(doc, cited):
    """A heading or lead-in of ``doc`` is ``cited``, or starts with it (``"Training recipe"``
    for ``## Training recipe: the authors' released code``)."""
    cited = " ".join(cited.split())
    return any(s == cited or re.match(re.escape(cited) + r"\b", s) for s in sections(doc))


def citations(path):
    with open(os.path.join(ROOT, path)) as f:
        return CITATION.findall(f.read())


def test_the_pattern_finds_citations():
    text = '(docs/RELIABILITY.md,\n    # "Checked weights") and (GETTING_STARTED.md, "Export")'
    assert CITATION.findall(text) == [
        ("docs/RELIABILITY.md", "Checked weights"),
        ("GETTING_STARTED.md", "Export"),
    ]
    assert README_SECTION.search('(README, "Security")')
    assert not README_SECTION.search('see datasets/README, "toy"')


@pytest.mark.parametrize("path", SOURCES)
def test_cited_sections_exist(path):
    if path == os.path.relpath(__file__, ROOT):
        return
    missing = [
        (doc, section)
        for doc, section in citations(path)
        if not os.path.exists(os.path.join(ROOT, doc)) or not has_section(doc, section)
    ]
    assert not missing, f"{path} cites sections its docs do not have: {missing}"
    with open(os.path.join(ROOT, path)) as f:
        assert not README_SECTION.search(f.read()), f"{path} cites a section of README.md"
