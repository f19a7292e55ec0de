"""Every relative link of README.md and docs/*.md leads to a file that exists and, with a
`#fragment`, to a heading of that file (GitHub's anchors)."""

from __future__ import annotations

import pathlib
import re

import pytest
from conftest import ROOT

PAGES = [pathlib.Path(ROOT) / "README.md", *sorted((pathlib.Path(ROOT) / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """`text` without its fenced and indented code blocks, where brackets are code, not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return "\n".join(line for line in text.splitlines() if not line.startswith("    "))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose(page.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            base = anchor(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            yield base if count == 0 else f"{base}-{count}"


def test_anchors_are_githubs():
    assert anchor("Models: CLIP, open_clip and SigLIP checkpoints") == "models-clip-open_clip-and-siglip-checkpoints"
    assert anchor("Corruptions: `config.corruptions`") == "corruptions-configcorruptions"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not checked here
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif fragment and linked.suffix == ".md" and fragment not in set(anchors(linked)):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)
