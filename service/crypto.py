"""Upstream credentials at rest: MultiFernet, so keys rotate without downtime.

The first key in `SECRET_KEYS` encrypts; every key decrypts. Rotating is: put the new
key first (`new,old`) everywhere, run `backsync secrets rotate`, then drop the old key.
`mask` is what responses show instead of a secret.
"""

from __future__ import annotations

from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretBoxError(Exception):
    pass


class SecretBox:
    def __init__(self, keys: list[str]):
        if not keys:
            raise SecretBoxError("no BACKSYNC_SECRET_KEYS configured")
        try:
            fernets = [Fernet(key.encode()) for key in keys]
        except ValueError as exc:
            raise SecretBoxError(
                "BACKSYNC_SECRET_KEYS must be Fernet keys (32 url-safe base64 bytes)"
            ) from exc
        self._primary = fernets[0]
        self._fernet = MultiFernet(fernets)

    def encrypt_json(self, value: Any) -> str:
        return self._fernet.encrypt(orjson.dumps(value)).decode()

    def decrypt_json(self, token: str) -> Any:
        try:
            return orjson.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise SecretBoxError(
                "stored credentials cannot be decrypted with the configured keys"
            ) from exc

    def rotate(self, token: str) -> str:
        """`token` re-encrypted under the first key (readable with any configured key)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as exc:
            raise SecretBoxError("ciphertext cannot be decrypted with any configured key") from exc

    def is_current(self, token: str) -> bool:
        """Whether `token` is already under the first key, so a re-run of a rotation
        skips it instead of rewriting every row again."""
        try:
            self._primary.decrypt(token.encode())
        except InvalidToken:
            return False
        return True


def generate_key() -> str:
    return Fernet.generate_key().decode()


def mask(secret: str) -> str:
    """`****abcd`: enough for a person to recognise their token, useless to anyone else."""
    return "****" + secret[-4:] if len(secret) >= 12 else "****"
