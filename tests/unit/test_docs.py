"""The design lives in the repo: every section of docs/architecture.md a module cites exists.

Modules explain *why* in their docstrings and point at the architecture page for the big picture
(``docs/architecture.md, "One round"``). A renamed or dropped section would leave those pointers
dangling without anyone noticing, so the citations are checked against the page's headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import fedge

REPO = Path(fedge.__file__).parent.parent
DOC = REPO / "docs" / "architecture.md"
CITE = re.compile(r'docs/architecture\.md,?\s+"([^"]+)"(?:\s+and\s+"([^"]+)")?')


def _headings() -> list[str]:
    return [line.lstrip("#").strip() for line in DOC.read_text().splitlines() if line.startswith("#")]


def _citations() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "fedge").rglob("*.py")):
        text = " ".join(path.read_text().split())  # a citation may wrap across lines
        for match in CITE.finditer(text):
            found += [(str(path.relative_to(REPO)), name) for name in match.groups() if name]
    return found


def test_every_cited_section_of_the_architecture_page_exists() -> None:
    headings, citations = _headings(), _citations()
    assert len(citations) >= 5  # the scan really finds the modules' citations
    missing = [(path, name) for path, name in citations if not any(h.startswith(name) for h in headings)]
    assert missing == []


def test_the_readme_links_the_architecture_page() -> None:
    assert "(docs/architecture.md)" in (REPO / "README.md").read_text()
