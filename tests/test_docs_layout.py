"""The docs are laid out as in Detectron2's projects: a README of at most 100 lines that links the
other docs (INSTALL.md, GETTING_STARTED.md, MODEL_ZOO.md, docs/, CONTRIBUTING.md), cites the
papers and Detectron2 and names the license; the README's commands are the Makefile's (CI runs
one of them); the docs say what is, not how it came to be."""

import glob
import os
import re

from conftest import ROOT

LINKED_DOCS = [
    "INSTALL.md",
    "GETTING_STARTED.md",
    "MODEL_ZOO.md",
    "CONTRIBUTING.md",
    "LICENSE",
    "datasets/README.md",
    "benchmarks/README.md",
    "docs/RSP.md",
    "docs/NRD.md",
    "docs/RELIABILITY.md",
    "docs/TRAINING_AT_SCALE.md",
]


def _read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def _readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", _read("README.md"), flags=re.S)
    return [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_readme_is_short_and_links_every_doc():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 100
    links = set(re.findall(r"\]\(([^)#]+)", readme))
    assert not [d for d in LINKED_DOCS if d not in links]
    for doc in LINKED_DOCS:
        assert os.path.exists(os.path.join(ROOT, doc)), doc


def test_readme_commands_are_makefile_targets_and_ci_runs_one():
    commands = _readme_commands()
    assert commands[:2] == ["make quickstart", "make test"]
    makefile = _read("Makefile")
    for command in commands:
        target = command.split()[1]
        assert re.search(rf"(?m)^{re.escape(target)}:", makefile), command
    assert "make test-fast" in _read("README.md")
    ci = [line for line in _read(".ci/run").splitlines() if line and not line.startswith("#")]
    assert any(line.strip() in commands for line in ci)


def test_license_is_the_one_setup_cfg_declares():
    assert re.search(r"(?m)^license = Apache-2.0$", _read("setup.cfg"))
    license_text = _read("LICENSE")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "[name of copyright owner]" not in license_text
    assert "[Apache 2.0 license](LICENSE)" in _read("README.md")


def test_readme_cites_rsp_nrd_and_detectron2():
    citing = _read("README.md").split("## Citing", 1)[1]
    entries = re.findall(r"@\w+\{(\w+),", citing)
    assert entries == ["bai2021rsp", "zhang2021nrd", "wu2019detectron2"]
    assert "Cross-Scale Pixel-to-Region Relation" in citing
    assert "Dynamic Neural Representational Decoders" in citing


def test_docs_say_what_is_not_how_it_came_to_be():
    docs = ["README.md", "INSTALL.md", "GETTING_STARTED.md", "MODEL_ZOO.md", "CONTRIBUTING.md"]
    docs += [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))]
    docs += ["benchmarks/README.md", "datasets/README.md"]
    history = re.compile(
        r"\b(used to|earlier version|literal reading|previously|formerly|no longer|as before)\b",
        flags=re.I,
    )
    found = {doc: history.findall(_read(doc)) for doc in docs}
    assert not {doc: words for doc, words in found.items() if words}


def _anchors(doc):
    """GitHub's anchors of the headings of ``doc``."""
    headings = re.findall(r"(?m)^#+\s+(.+?)\s*$", _read(doc))
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_links_to_sections_resolve():
    docs = ["README.md", "INSTALL.md", "GETTING_STARTED.md", "MODEL_ZOO.md", "CONTRIBUTING.md"]
    docs += [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))]
    docs += ["benchmarks/README.md", "datasets/README.md"]
    broken = []
    for doc in docs:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", _read(doc)):
            if target.startswith("http"):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(doc), target)) if target else doc
            if anchor not in _anchors(path):
                broken.append((doc, f"{target}#{anchor}"))
    assert not broken
