"""Standard Webhooks signing: secrets, and the three headers every delivery carries.

Signatures are computed here with `hmac` (a dozen lines) rather than with the
`standardwebhooks` package: the tests then verify them with that package, the official
verifier, so they check Backsync against the spec instead of the library against itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

PREFIX = "whsec_"
SECRET_BYTES = 32
"""Standard Webhooks asks for 24 to 64 random bytes."""


def new_secret() -> str:
    """`whsec_` + base64 of fresh random bytes: the form the official libraries read."""
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(
    keys: list[str], message_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The headers of one attempt: signed with each of `keys` (the current secret first,
    then, during a rotation's grace period, the previous one), space separated as the
    spec allows, so a receiver that knows either secret verifies."""
    at = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(at),
        "webhook-signature": " ".join(sign(key, message_id, at, body) for key in keys),
    }
