"""README and docs/: every relative link leads to a file of this repository (and to a heading of it, when it
names one); no link leads outside the repository's tree (the design notes beside it, ../shared, are not
shipped). Web links (https://…) are left to the reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fixtures.common import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) outside code spans; images too.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
FENCED = re.compile(r"```.*?```", re.DOTALL)
NOT_SHIPPED = ("ARCHITECTURE.md", "STYLE.md", "LAB-NOTES.md", "HELPER-BRIEF.md")


def links(page: Path) -> list[str]:
    return LINK.findall(CODE.sub("", page.read_text()))


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCED.sub("", page.read_text())  # a "# comment" in a shell block is no heading
    anchors = set()
    for line in text.splitlines():
        if match := re.match(r"^#{1,6} (.+)$", line):
            slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def relative_links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in PAGES
        for target in links(page)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # https:, mailto:
    ]


def test_the_pages_have_links_to_check():
    assert len(PAGES) > 10
    assert len(relative_links()) > 50


@pytest.mark.parametrize(("page", "target"), relative_links(), ids=lambda value: str(value)[-40:])
def test_a_relative_link_resolves_inside_the_repository(page, target):
    path_part, _, anchor = target.partition("#")
    destination = (page.parent / path_part).resolve() if path_part else page

    assert destination.is_relative_to(ROOT), f"{page.name}: {target} leads outside the repository"
    assert destination.exists(), f"{page.name}: {target} does not exist"
    if anchor and destination.suffix == ".md":
        assert anchor in heading_anchors(destination), f"{page.name}: {target}: no such heading"


def test_no_page_points_to_design_notes_outside_the_repository():
    mentions = [
        f"{page.relative_to(ROOT)}: {name}"
        for page in PAGES
        for name in NOT_SHIPPED
        if name in page.read_text()
    ]
    mentions += [f"{page.relative_to(ROOT)}: ../shared" for page in PAGES if "../shared" in page.read_text()]
    assert mentions == []


def test_no_link_points_outside_the_repository():
    """Readers of a checkout (or of an offline copy) can follow every link: none is to another site."""
    absolute = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in PAGES
        for target in links(page)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target)
    ]
    assert absolute == []
