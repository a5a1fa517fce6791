"""What each provider's subscription check expects of a push URL (a GET, before any
notification), decided from the query alone.

- Fitbit: two GETs with `?verify=<code>`: the subscriber's verification code, which must
  get 204, and a wrong one, which must get 404. So Fitbit needs the URL's
  `verification_code`; without one every `verify` is a 404.
- Strava (WebSub style): `?hub.mode=subscribe&hub.challenge=…&hub.verify_token=…`,
  answered 200 with JSON `{"hub.challenge": "…"}`.
- Oura: `?challenge=…&verification_token=…`, answered 200 with JSON `{"challenge": "…"}`;
  the same echo serves providers that send only `challenge`.
- A GET with none of these: 200 and `{}`, so a person (or a provider's reachability
  check) can see the URL is live. Withings checks with a HEAD (see `router`).

A token sent along (`hub.verify_token`, `verification_token`) is checked only when the
URL has a verification code: the secret URL is already the credential, the code only
proves the check came from the subscription you made.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum


class Answer(Enum):
    ECHO = "echo"
    """200 with the challenge, under the key it came in (or `{}` for a plain GET)."""
    VERIFIED = "verified"
    """204: Fitbit's code matched."""
    REFUSED = "refused"
    """404, as for an unknown URL: the check came from someone who lacks the code."""


@dataclass(frozen=True, slots=True)
class Handshake:
    challenge: str | None = None
    verification_token: str | None = None
    hub_challenge: str | None = None
    hub_verify_token: str | None = None
    verify: str | None = None


def hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def _matches(expected_hash: str | None, given: str | None) -> bool:
    if expected_hash is None or given is None:
        return False
    return hmac.compare_digest(expected_hash, hash_code(given))


def _accepted(expected_hash: str | None, given: str | None) -> bool:
    return expected_hash is None or _matches(expected_hash, given)


def answer(check: Handshake, verification_hash: str | None) -> Answer:
    """How to answer `check` on a URL whose verification code hashes to
    `verification_hash` (None: no code set)."""
    if check.verify is not None:
        return Answer.VERIFIED if _matches(verification_hash, check.verify) else Answer.REFUSED
    if check.hub_challenge is not None:
        ok = _accepted(verification_hash, check.hub_verify_token)
        return Answer.ECHO if ok else Answer.REFUSED
    if check.challenge is not None:
        ok = _accepted(verification_hash, check.verification_token)
        return Answer.ECHO if ok else Answer.REFUSED
    return Answer.ECHO
