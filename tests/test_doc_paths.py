"""Every repository file the docs name exists: a path such as ``tests/engine/test_launch.py`` or
``configs/Toy/nrd_R_18_toy.yaml`` in README.md, the other top-level docs, docs/,
benchmarks/README.md or datasets/README.md points at a file of this checkout, so moving a file
without its references fails here."""

import glob
import os
import re

import pytest
from conftest import ROOT

DOCS = sorted(
    os.path.relpath(p, ROOT)
    for pattern in ("*.md", "docs/*.md", "benchmarks/README.md", "datasets/README.md")
    for p in glob.glob(os.path.join(ROOT, pattern))
)
# A path of the repository: a top-level folder, then a file with one of these extensions.
PATH = re.compile(
    r"(?<![\w/.-])((?:tests|projects|configs|benchmarks|tools|docs|datasets|demo)/"
    r"[\w./-]*\w\.(?:py|yaml|md|sh|json|png|csv|txt))\b"
)
# Files the docs name that a run writes (they are not part of the checkout).
WRITTEN_BY_RUNS = re.compile(r"^datasets/(toy|cityscapes|coco|ADEChallengeData2016|VOC)")
# Files of the NRD authors' repository (aim-uofa/NRD_decoder) that docs/NRD.md cites.
AUTHORS_FILES = re.compile(r"^(configs/NRD/|configs/_base_/|datasets/pipelines/)")


def named_paths(text):
    return sorted({m.group(1) for m in PATH.finditer(text)})


def test_the_pattern_finds_paths():
    text = "see `tests/engine/test_launch.py`, configs/Toy/a.yaml and (docs/RSP.md)."
    assert named_paths(text) == ["configs/Toy/a.yaml", "docs/RSP.md", "tests/engine/test_launch.py"]
    assert named_paths("nrd_rsp/projects/x.py or http://x/tests/a.py") == []


@pytest.mark.parametrize("doc", DOCS)
def test_named_files_exist(doc):
    with open(os.path.join(ROOT, doc)) as f:
        paths = named_paths(f.read())
    missing = [
        p
        for p in paths
        if not WRITTEN_BY_RUNS.match(p)
        and not AUTHORS_FILES.match(p)
        and "*" not in p
        and not os.path.exists(os.path.join(ROOT, p))
        and not os.path.exists(os.path.join(ROOT, os.path.dirname(doc), p))
    ]
    assert not missing, f"{doc} names files this checkout does not have: {missing}"
