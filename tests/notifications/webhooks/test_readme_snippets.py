"""The README's verification snippets, run as printed against a real delivery."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.notifications.webhooks.conftest import Received, Receiver, subscribe

README = Path(__file__).parents[3] / "README.md"


def _snippet(name: str, language: str) -> str:
    pattern = rf"<!-- snippet: {name} .*?-->\n```{language}\n(.*?)```"
    found = re.search(pattern, README.read_text(), re.DOTALL)
    assert found, f"README has no {name} snippet"
    return found.group(1)


async def _ping(
    client: httpx.AsyncClient, auth: dict[str, str], receiver: Receiver
) -> tuple[str, Received]:
    hook = await subscribe(client, auth, receiver.url, ["*"])
    response = await client.post(f"/v1/webhooks/{hook['id']}/test", headers=auth)
    assert response.status_code == 202
    [seen] = await receiver.wait(1)
    secret: str = hook["secret"]
    return secret, seen


async def test_the_python_snippet_accepts_a_delivery_once_and_refuses_a_forgery(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    receiver: Receiver,
    worker: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret, seen = await _ping(client, auth, receiver)
    monkeypatch.setenv("BACKSYNC_WEBHOOK_SECRET", secret)
    namespace: dict[str, Any] = {}
    exec(_snippet("verify-python", "python"), namespace)  # noqa: S102 (the README's own code)
    receive = namespace["receive"]
    assert receive(seen.body, seen.headers) == 204
    assert capsys.readouterr().out.startswith("ping ")
    assert receive(seen.body, seen.headers) == 204  # a retry: handled once
    assert capsys.readouterr().out == ""
    assert receive(seen.body.replace(b"ping", b"pong"), seen.headers) == 400


_NODE_HARNESS = """
const input = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
const outcome = input.map(({ body, headers }) => {
  try { return verify(Buffer.from(body, "base64"), headers).type; } catch (error) { return error.message; }
});
console.log(JSON.stringify(outcome));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_the_node_snippet_accepts_a_delivery_and_refuses_a_forgery(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    receiver: Receiver,
    worker: object,
    tmp_path: Path,
) -> None:
    secret, seen = await _ping(client, auth, receiver)
    script = tmp_path / "verify.js"
    script.write_text(_snippet("verify-node", "js") + _NODE_HARNESS)
    forged = seen.body.replace(b"ping", b"pong")
    cases = [{"body": _b64(body), "headers": seen.headers} for body in (seen.body, forged)]
    node = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "BACKSYNC_WEBHOOK_SECRET": secret},
    )
    stdout, _ = await asyncio.wait_for(node.communicate(json.dumps(cases).encode()), 30)
    assert node.returncode == 0
    assert json.loads(stdout) == ["ping", "no matching signature"]


def _b64(body: bytes) -> str:
    return base64.b64encode(body).decode()
