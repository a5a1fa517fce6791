"""Which hosts the engine may talk to (SPEC §2): the SSRF guard.

A task's URL, every next-page URL and every redirect hop come from someone else (a
client, or the upstream's own answers), so any of them may point at the worker's
network: a database on 10.x, Redis on loopback, the cloud metadata service on
169.254.169.254. The guard has two halves:

- `check_url`: the URL's shape (http/https only, no userinfo), checked by the engine
  before every request and every redirect hop;
- `GuardedBackend`: an httpcore network backend that resolves the host itself, refuses
  when *any* address is in a forbidden class, and connects to the address it checked.
  Checking the name and then letting the socket layer resolve it again would leave a
  DNS-rebinding window (the second answer may differ); here there is no second lookup.
  TLS SNI and the Host header still use the hostname: only the TCP connect is pinned.

`check_target` runs the same checks ahead of time, for the API to refuse a task at
registration with a 422.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import httpcore
import httpx

from service.sync.errors import TargetRefused
from service.sync.sockets import AsyncioBackend

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""`(host, port) -> addresses`: the system resolver by default; tests swap it."""

ALLOWED_SCHEMES = ("http", "https")
RESOLVE_TIMEOUT = 5.0
"""How long `check_target` waits for DNS at registration before letting the fetch decide."""


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """What the guard lets through: built once per process from the settings."""

    block_private: bool = True
    allowed_hosts: frozenset[str] = frozenset()
    """Host names that are always allowed, whatever they resolve to."""
    allowed_networks: tuple[IPNetwork, ...] = ()
    """Addresses that are allowed even though they are in a forbidden class."""

    @classmethod
    def from_entries(cls, entries: Iterable[str], *, block_private: bool = True) -> TargetPolicy:
        """`ALLOWED_TARGETS` entries: an IP or CIDR is a network, anything else a host name."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry:
                    raise ValueError(f"allowed target {raw!r} is not a valid CIDR") from None
                hosts.add(entry.rstrip("."))
        return cls(block_private, frozenset(hosts), tuple(networks))

    def host_allowed(self, host: str) -> bool:
        return not self.block_private or host.lower().rstrip(".") in self.allowed_hosts

    def address_allowed(self, address: IPAddress) -> bool:
        """In an allowed network, itself or as the IPv4 address it maps to."""
        mapped = getattr(address, "ipv4_mapped", None)
        candidates = (address,) if mapped is None else (address, mapped)
        return any(ip in net for ip in candidates for net in self.allowed_networks)


# ---- address classes ------------------------------------------------------------------


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), name) for cidr, name in pairs)


_V4_CLASSES = _nets(
    ("0.0.0.0/8", "unspecified ('this network', 0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT, 100.64.0.0/10)"),
    ("169.254.169.254/32", "link-local (cloud metadata service)"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)
_V6_CLASSES = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "private (unique local)"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_v4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4): that is where it goes."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


def address_class(address: IPAddress) -> str | None:
    """The forbidden class `address` is in (for the refusal message), or None if public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            kind, v4 = embedded
            inner = address_class(v4)
            return f"{inner} ({kind} {v4})" if inner else None
    table = _V4_CLASSES if isinstance(address, ipaddress.IPv4Address) else _V6_CLASSES
    for network, name in table:
        if address in network:
            return name
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "special-purpose (not globally routable)"
    return None


def check_addresses(host: str, addresses: Iterable[str], policy: TargetPolicy) -> None:
    """Refuse when any address `host` resolves to is forbidden and not allow-listed.

    Any, not all: a name with one public and one private answer would reach the private
    one whenever the connect picks it.
    """
    if policy.host_allowed(host):
        return
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        name = address_class(address)
        if name is not None and not policy.address_allowed(address):
            raise TargetRefused(_refusal(host, address, name))


def _refusal(host: str, address: IPAddress, name: str) -> str:
    where = host if _is_literal(host, address) else f"{host} resolves to {address}, which"
    article = "an" if name[0] in "aeiou" else "a"
    return (
        f"target refused: {where} is {article} {name} address; outbound requests go only "
        "to public addresses (allow-list it with BACKSYNC_ALLOWED_TARGETS)"
    )


def _is_literal(host: str, address: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) == address
    except ValueError:
        return False


# ---- URL shape ------------------------------------------------------------------------


def parse_url(url: str) -> httpx.URL:
    """`httpx.URL(url)`, kept for the next look at the same URL (an `httpx.URL` is never
    changed in place). A page's URL is looked at twice as text: where it leads, for the
    cycle check (`pages._address`), and its shape, before its request (`check_url`).
    Each parse was about a tenth of a 304 page's CPU in the engine (cProfile, session 12).
    A URL that carries credentials is not kept (`check_url` refuses it anyway)."""
    return httpx.URL(url) if "@" in url else _parsed(url)


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> httpx.URL:
    return httpx.URL(url)


def check_url(url: httpx.URL | str) -> httpx.URL:
    """Scheme and userinfo: checked on every request and redirect hop, whatever the policy.
    A URL is parsed once (`parse_url`)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else parse_url(url)
    except httpx.InvalidURL as exc:
        raise TargetRefused(f"target refused: not a valid URL ({exc})") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise TargetRefused(
            f"target refused: scheme {parsed.scheme or '(none)'!r} is not allowed "
            "(only http and https)"
        )
    if parsed.userinfo:
        raise TargetRefused("target refused: credentials in the URL are not allowed")
    if not parsed.host:
        raise TargetRefused("target refused: the URL has no host")
    return parsed


def default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


# ---- resolution and connecting --------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check_target(
    url: str, policy: TargetPolicy, *, resolver: Resolver = system_resolver
) -> None:
    """Refuse a URL before anything is stored (the API's 422 at registration).

    A host that does not resolve (yet, or right now) passes: DNS may be down for a
    moment, and the fetch checks every connection again anyway.
    """
    parsed = check_url(url)
    if policy.host_allowed(parsed.host):
        return
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            addresses = await resolver(parsed.host, default_port(parsed))
    except (OSError, TimeoutError):
        return
    check_addresses(parsed.host, addresses, policy)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolve once, check every answer, connect to a checked address (no rebinding)."""

    def __init__(
        self,
        policy: TargetPolicy,
        *,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._resolve = resolver
        self._inner = inner or AsyncioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._addresses(host, port)
                check_addresses(host, addresses, self.policy)
                return await self._connect_any(addresses, port, local_address, socket_options)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc

    async def _addresses(self, host: str, port: int) -> Sequence[str]:
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        return addresses

    async def _connect_any(
        self,
        addresses: Sequence[str],
        port: int,
        local_address: str | None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.AsyncNetworkStream:
        """Each checked address in turn (an IP literal: the inner backend resolves nothing)."""
        options = list(socket_options or ())  # may be a one-shot iterable
        error: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, local_address=local_address, socket_options=options
                )
            except httpcore.ConnectError as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("target refused: unix sockets are not an upstream")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
