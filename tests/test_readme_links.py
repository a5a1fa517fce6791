"""The repository documents itself: no link in its Markdown leads outside it (a clone is
all a user has), except to the example hosts the examples talk to; and every link
inside it lands somewhere — the file exists, and a `#section` names one of its
headings."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)|<(?P<bare>https?://[^>\s]+)>")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
EXAMPLES = ("127.0.0.1", "localhost", "example.com", "example.test")


def documents() -> list[Path]:
    found = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "bench" / "RESULTS.md",
    ]
    return [document for document in found if document.exists()]


def slug(title: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces
    to hyphens (`Safe retries: \\`Idempotency-Key\\`` -> `safe-retries-idempotency-key`)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(document: Path) -> frozenset[str]:
    """Every heading's anchor, outside code blocks; a repeated one gets `-1`, `-2`…"""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in document.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = None if fenced else HEADING.match(line)
        if heading:
            base = slug(heading["title"])
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def test_markdown_links_stay_inside_the_repository() -> None:
    outside = []
    for document in documents():
        for match in LINK.finditer(document.read_text()):
            target = match["target"] or match["bare"]
            if re.match(r"[a-z]+://", target) and not any(host in target for host in EXAMPLES):
                outside.append(f"{document.relative_to(ROOT)}: {target}")
            elif not re.match(r"[a-z]+:|#", target):
                path = (document.parent / target.split("#")[0]).resolve()
                assert path.is_relative_to(ROOT.resolve()), f"{document}: {target} leaves the repo"
                assert path.exists(), f"{document}: {target} does not exist"
    assert outside == []


def test_every_section_link_names_a_heading() -> None:
    broken = []
    for document in documents():
        for match in LINK.finditer(document.read_text()):
            target = match["target"]
            if not target or "#" not in target or re.match(r"[a-z]+:", target):
                continue
            file, anchor = target.split("#", 1)
            linked = (document.parent / file).resolve() if file else document
            if linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{document.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_slug_is_githubs() -> None:
    assert slug("Safe retries: `Idempotency-Key`") == "safe-retries-idempotency-key"
    assert slug("Events: telling people what happened") == "events-telling-people-what-happened"
    assert slug("Auto-pause, recovery and refused credentials") == (
        "auto-pause-recovery-and-refused-credentials"
    )
