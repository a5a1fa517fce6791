"""The repository documents itself: no link in its Markdown leads outside it (a clone is
all a user has), except to the example hosts the examples talk to."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)|<(?P<bare>https?://[^>\s]+)>")
EXAMPLES = ("127.0.0.1", "localhost", "example.com", "example.test")


def test_markdown_links_stay_inside_the_repository() -> None:
    documents = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "bench" / "RESULTS.md",
    ]
    outside = []
    for document in (d for d in documents if d.exists()):
        for match in LINK.finditer(document.read_text()):
            target = match["target"] or match["bare"]
            if re.match(r"[a-z]+://", target) and not any(host in target for host in EXAMPLES):
                outside.append(f"{document.relative_to(ROOT)}: {target}")
            elif not re.match(r"[a-z]+:|#", target):
                path = (document.parent / target.split("#")[0]).resolve()
                assert path.is_relative_to(ROOT.resolve()), f"{document}: {target} leaves the repo"
                assert path.exists(), f"{document}: {target} does not exist"
    assert outside == []
