"""The API guide's examples (docs/guide.md) and the README's curl walk-through, run as
printed with bash and curl against the app served on loopback, a real worker, and a
static-file upstream (`python3 -m http.server`'s own handler, as the guide starts it).

Every ```sh block of the guide runs, in order, in one bash process (later blocks use
the variables earlier ones set), except the one marked `<!-- setup -->`: it starts
the upstream and names the addresses, which the test provides instead. A command line
may end with `# → TEXT`: TEXT must appear in what that block printed, after the
previous expectation's match, so the outputs the guide shows are the ones a user gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures.upstream import free_port

ROOT = Path(__file__).parents[2]
GUIDE = ROOT / "docs" / "guide.md"
README = ROOT / "README.md"
BLOCK = re.compile(r"(?P<marker><!-- setup -->\n)?```sh\n(?P<code>.*?)```", re.DOTALL)
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


def guide_blocks() -> list[Block]:
    blocks = []
    for match in BLOCK.finditer(GUIDE.read_text()):
        if match["marker"]:
            continue
        code = match["code"]
        blocks.append(Block(code, [text.strip() for text in EXPECT.findall(code)]))
    return blocks


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the suite's output clean."""


@contextlib.contextmanager
def static_upstream(directory: Path) -> Iterator[str]:
    """What `python3 -m http.server --directory DIR` serves (its handler, in a thread)."""
    handler = functools.partial(_Quiet, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def bash(script: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Run `script` with bash in a session of its own; its background jobs (the README's
    upstream) end with it. Output goes to a file: a background job holding a pipe open
    would keep a reader waiting after bash has exited."""
    log = cwd / "output.txt"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            env=env,
            cwd=cwd,
            stdout=sink,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = await asyncio.wait_for(process.wait(), 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    return status, log.read_text()


def _environment(**names: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKSYNC_")}
    return env | names


def test_the_guide_has_examples_with_expectations() -> None:
    blocks = guide_blocks()
    assert len(blocks) >= 10
    assert sum(len(block.expected) for block in blocks) >= 20


@pytest.mark.timeout(120)
@needs_curl
async def test_every_guide_example_prints_what_the_guide_shows(
    served: str, auth: dict[str, str], worker: object, tmp_path: Path
) -> None:
    blocks = guide_blocks()
    files = tmp_path / "upstream"
    files.mkdir()
    script = "set -euo pipefail\n" + "".join(
        f"{block.code}\necho '{SEPARATOR}'\n" for block in blocks
    )
    with static_upstream(files) as upstream:
        env = _environment(
            API=served,
            AUTH=f"Authorization: {auth['Authorization']}",
            UPSTREAM=upstream,
            UPSTREAM_DIR=str(files),
        )
        status, output = await bash(script, env, tmp_path)
    outputs = output.split(SEPARATOR + "\n")
    assert status == 0, (
        f"block {len(outputs)} failed:\n{blocks[len(outputs) - 1].code}\n{outputs[-1]}"
    )
    for block, printed in zip(blocks, outputs, strict=False):
        position = 0
        for text in block.expected:
            found = printed.find(text, position)
            assert found >= 0, (
                f"{text!r} not printed (in order) by:\n{block.code}\nprinted:\n{printed}"
            )
            position = found + len(text)


def readme_walkthrough(api: str, upstream_port: int, key_file: Path, files: Path) -> str:
    """The README's first curl block with this test's addresses in place of 8000/9000."""
    section = README.read_text().split("## Walk-through with curl", 1)[1]
    found = BLOCK.search(section)
    assert found, "the README has no walk-through"
    return (
        found["code"]
        .replace("http://127.0.0.1:8000", api)
        .replace("127.0.0.1:9000", f"127.0.0.1:{upstream_port}")
        .replace("http.server 9000", f"http.server {upstream_port}")
        .replace(".backsync/dev_api_key", str(key_file))
        .replace("/tmp/upstream", str(files))
    )


@pytest.mark.timeout(120)
@needs_curl
async def test_the_readme_walkthrough_runs_as_printed(
    served: str, auth: dict[str, str], worker: object, tmp_path: Path
) -> None:
    key_file = tmp_path / "dev_api_key"
    key_file.write_text(auth["Authorization"].removeprefix("Bearer ") + "\n")
    port = free_port()
    script = readme_walkthrough(served, port, key_file, tmp_path / "upstream")
    # The walk-through starts its upstream in the background and goes on at once; give
    # it the moment a user's typing does before the first fetch.
    script = script.replace(" &\n", " &\nsleep 1\n", 1)
    status, output = await bash("set -euo pipefail\n" + script, _environment(), tmp_path)
    assert status == 0, output
    assert '"name":"daily-activity"' in output
    assert '"state":"paused"' in output  # the PATCH, then the filtered list
    assert output.rstrip().endswith("204"), output  # the task is gone
