"""The API guide's examples (docs/guide.md) and the README's curl walk-through, run as
printed with bash and curl against the app served on loopback and a real worker.

Every ```sh block of the guide runs, in order, in one bash process (later blocks use
the variables earlier ones set), its setup block included: that one starts the
upstream (`python3 -m http.server`) and names the addresses, and the only change made
to any block is this test's ports, key file and directory in place of the printed
ones (8000, 9000, `.backsync/dev_api_key`, `/tmp/upstream`). A command line may end
with `# → TEXT`: TEXT must appear in what that block printed, after the previous
expectation's match, so the outputs the guide shows are the ones a user gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.upstream import free_port

ROOT = Path(__file__).parents[2]
GUIDE = ROOT / "docs" / "guide.md"
README = ROOT / "README.md"
BLOCK = re.compile(r"```sh\n(?P<code>.*?)```", re.DOTALL)
EXPECT = re.compile(r"# → (?P<text>.+)$", re.MULTILINE)
SEPARATOR = "@@ block done @@"
needs_curl = pytest.mark.skipif(
    shutil.which("curl") is None and not os.environ.get("CI"),
    reason="curl is not installed (in CI, with `CI` set, that fails these tests instead)",
)


@dataclass
class Block:
    code: str
    expected: list[str]


@dataclass
class Addresses:
    """What a reader's machine has at fixed places, where this test has them."""

    api: str
    upstream_port: int
    key_file: Path
    files: Path

    def put_in(self, code: str) -> str:
        return (
            code.replace("http://127.0.0.1:8000", self.api)
            .replace("127.0.0.1:9000", f"127.0.0.1:{self.upstream_port}")
            .replace("http.server 9000", f"http.server {self.upstream_port}")
            .replace(".backsync/dev_api_key", str(self.key_file))
            .replace("/tmp/upstream", str(self.files))
        )

    def upstream_ready(self) -> str:
        """A reader starts the file server, then types for a while; a script must wait."""
        url = f"http://127.0.0.1:{self.upstream_port}/"
        return f"until curl -s -o /dev/null {url}; do sleep 0.05; done\n"


def guide_blocks() -> list[Block]:
    return [
        Block(match["code"], [text.strip() for text in EXPECT.findall(match["code"])])
        for match in BLOCK.finditer(GUIDE.read_text())
    ]


def readme_walkthrough() -> str:
    section = README.read_text().split("## Walk-through with curl", 1)[1]
    found = BLOCK.search(section)
    assert found, "the README has no walk-through"
    return found["code"]


@pytest.fixture
def addresses(served: str, auth: dict[str, str], tmp_path: Path) -> Addresses:
    key_file = tmp_path / "dev_api_key"
    key_file.write_text(auth["Authorization"].removeprefix("Bearer ") + "\n")
    return Addresses(served, free_port(), key_file, tmp_path / "upstream")


def started_upstream(code: str, addresses: Addresses) -> str:
    """`code` as printed (with this test's addresses), waiting for the upstream it starts."""
    code = addresses.put_in(code)
    start = re.search(r"^python3 -m http\.server .*&\n", code, re.MULTILINE)
    assert start, "the example starts no upstream"
    return code[: start.end()] + addresses.upstream_ready() + code[start.end() :]


async def bash(script: str, cwd: Path) -> tuple[int, str]:
    """Run `script` with bash in a session of its own; its background jobs (the upstream)
    end with it. Output goes to a file: a background job holding a pipe open would keep
    a reader waiting after bash has exited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSYNC_")}
    log = cwd / "output.txt"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            "set -euo pipefail\n" + script,
            env=env,
            cwd=cwd,
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = await asyncio.wait_for(process.wait(), 90)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    return status, log.read_text()


def test_the_guide_has_examples_with_expectations() -> None:
    blocks = guide_blocks()
    assert len(blocks) >= 10
    assert sum(len(block.expected) for block in blocks) >= 20


@pytest.mark.timeout(180)
@needs_curl
async def test_every_guide_example_prints_what_the_guide_shows(
    addresses: Addresses, worker: object, tmp_path: Path
) -> None:
    blocks = guide_blocks()
    setup, *rest = blocks
    script = started_upstream(setup.code, addresses) + f"echo '{SEPARATOR}'\n"
    script += "".join(f"{addresses.put_in(b.code)}\necho '{SEPARATOR}'\n" for b in rest)
    status, output = await bash(script, tmp_path)
    outputs = output.split(SEPARATOR + "\n")
    failed = blocks[len(outputs) - 1].code if len(outputs) <= len(blocks) else "(after)"
    assert status == 0, f"this block failed:\n{failed}\nprinting:\n{outputs[-1]}"
    for block, printed in zip(blocks, outputs, strict=False):
        position = 0
        for text in block.expected:
            found = printed.find(text, position)
            assert found >= 0, f"{text!r} not printed (in order) by:\n{block.code}\n{printed}"
            position = found + len(text)


@pytest.mark.timeout(120)
@needs_curl
async def test_the_readme_walkthrough_runs_as_printed(
    addresses: Addresses, worker: object, tmp_path: Path
) -> None:
    status, output = await bash(started_upstream(readme_walkthrough(), addresses), tmp_path)
    assert status == 0, output
    assert '"name":"daily-activity"' in output
    assert '"state":"paused"' in output  # the PATCH, then the filtered list
    assert output.rstrip().endswith("204"), output  # the task is gone
