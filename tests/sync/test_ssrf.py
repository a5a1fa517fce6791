"""The SSRF guard (SPEC §2) through the real outbound client: every forbidden address
class is refused before a byte is sent, allow-listed targets reach the loopback
upstream, and the connection goes to the address that was checked."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.config import Settings
from service.http_client import create_upstream_client, target_policy
from service.sync import Limits, PageRequest, TargetPolicy, TargetRefused, check_target, fetch_one
from service.sync.client import UpstreamClient
from service.sync.errors import UpstreamUnavailable
from service.sync.ssrf import Resolver, address_class, check_url
from tests.fixtures.upstream import Upstream
from tests.sync.helpers import collect, collect_until_error, rows, source


def guarded(*allowed: str, block: bool = True, resolver: Resolver | None = None) -> UpstreamClient:
    settings = Settings(
        _env_file=None,
        block_private_targets=block,
        allowed_targets=list(allowed),
    )
    if resolver is None:
        return create_upstream_client(settings)
    return create_upstream_client(settings, resolver=resolver)


@pytest.fixture
async def strict() -> AsyncIterator[UpstreamClient]:
    """The production default: private targets blocked, nothing allow-listed."""
    async with guarded() as client:
        yield client


def port_of(upstream: Upstream) -> int:
    port = httpx.URL(upstream.base_url).port
    assert port is not None
    return port


async def refusal(client: UpstreamClient, url: str) -> TargetRefused:
    """The engine's error for one page of `url` (a raw URL, as a next link would be)."""
    src = source("http://placeholder.invalid/")
    with pytest.raises(TargetRefused) as caught:
        await fetch_one(client, src, Limits(), PageRequest(url=url, params=None))
    return caught.value


# ---- address classes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local (cloud metadata service)"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "shared (carrier-grade NAT, 100.64.0.0/10)"),
        ("100.127.255.254", "shared (carrier-grade NAT, 100.64.0.0/10)"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified ('this network', 0.0.0.0/8)"),  # noqa: S104 (a target, not a bind)
        ("0.1.2.3", "unspecified ('this network', 0.0.0.0/8)"),
        ("192.0.2.1", "special-purpose (not globally routable)"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private (unique local)"),
        ("fd12:3456::1", "private (unique local)"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("::127.0.0.1", "reserved"),
        ("2001:db8::1", "special-purpose (not globally routable)"),
        ("::ffff:127.0.0.1", "loopback (IPv4-mapped 127.0.0.1)"),
        (
            "::ffff:169.254.169.254",
            "link-local (cloud metadata service) (IPv4-mapped 169.254.169.254)",
        ),
        ("::ffff:10.0.0.1", "private (IPv4-mapped 10.0.0.1)"),
        ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata service) (NAT64 169.254.169.254)"),
        ("2002:7f00:1::1", "loopback (6to4 127.0.0.1)"),
    ],
)
def test_each_forbidden_class_is_named(address: str, expected: str) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "93.184.216.34", "172.32.0.1", "100.128.0.1", "2606:4700::1111",
     "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)  # fmt: skip
def test_public_addresses_pass(address: str) -> None:
    """Including the IPv6 forms of public IPv4 (NAT64 on IPv6-only hosts must keep working)."""
    assert address_class(ipaddress.ip_address(address)) is None


# ---- refusals through the client ----------------------------------------------------


async def test_the_loopback_upstream_is_refused_and_never_reached(
    upstream: Upstream, strict: UpstreamClient
) -> None:
    url = upstream.route("/data", lambda _: JSONResponse([{"id": 1}]))

    with pytest.raises(TargetRefused) as caught:
        await collect(strict, source(url))

    assert caught.value.as_dict() == {
        "code": "target_refused",
        "message": caught.value.message,
        "http_status": None,
        "retryable": False,
    }
    assert "127.0.0.1 is a loopback address" in caught.value.message
    assert upstream.requests == []


async def test_a_hostname_is_judged_by_what_it_resolves_to(
    upstream: Upstream, strict: UpstreamClient
) -> None:
    upstream.route("/data", lambda _: JSONResponse([{"id": 1}]))

    with pytest.raises(
        TargetRefused, match=r"localhost resolves to 127\.0\.0\.1, which is a loopback"
    ):
        await collect(strict, source(f"http://localhost:{port_of(upstream)}/data"))

    assert upstream.requests == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 (a target, not a bind)
        ("[::1]", "loopback"),
        ("[::]", "unspecified"),
        ("[fe80::1]", "link-local"),
        ("[fd00::1]", "unique local"),
        ("[ff02::1]", "multicast"),
        ("[::ffff:127.0.0.1]", "IPv4-mapped 127.0.0.1"),
        ("[::ffff:169.254.169.254]", "cloud metadata"),
        ("[64:ff9b::7f00:1]", "NAT64 127.0.0.1"),
        ("[2002:a00:1::1]", "6to4 10.0.0.1"),
    ],
)
async def test_ip_literals_of_every_class_are_refused(
    strict: UpstreamClient, host: str, expected: str
) -> None:
    error = await refusal(strict, f"http://{host}:8080/latest/meta-data/")

    assert expected in error.message
    assert error.retryable is False


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "017700000001", "127.1", "0x7f000001"])
async def test_decimal_octal_and_short_forms_are_loopback_too(
    upstream: Upstream, strict: UpstreamClient, host: str
) -> None:
    """httpx passes such hosts through as names; the resolver reads them as 127.0.0.1
    (inet_aton), so the guard judges what the socket would really reach."""
    upstream.route("/x", lambda _: JSONResponse([]))
    url = f"http://{host}:{port_of(upstream)}/x"

    error = await refusal(strict, url)

    assert "resolves to 127.0.0.1, which is a loopback address" in error.message
    assert upstream.requests == []
    async with guarded("127.0.0.1") as allowed:  # and it really is the upstream
        response = await allowed.get(url)
    assert response.status_code == 200


async def test_any_forbidden_answer_refuses_the_host(upstream: Upstream) -> None:
    """A name with one public and one private answer could reach either."""

    async def mixed(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    async with guarded(resolver=mixed) as client:
        error = await refusal(client, "http://mixed.example/")

    assert "mixed.example resolves to 10.0.0.7, which is a private address" in error.message


# ---- URL shape ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://example.com/file", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme 'gopher' is not allowed"),
        ("http://user:pw@example.com/", "credentials in the URL"),
        ("http://token@example.com/", "credentials in the URL"),
    ],
)
def test_only_plain_http_urls_pass(url: str, expected: str) -> None:
    with pytest.raises(TargetRefused, match=expected):
        check_url(url)


@pytest.mark.parametrize("block", [True, False])
async def test_a_next_link_with_another_scheme_is_refused_whatever_the_policy(
    upstream: Upstream, block: bool
) -> None:
    url = upstream.route(
        "/feed", lambda _: JSONResponse({"data": [{"id": 1}], "next": "file:///etc/passwd"})
    )
    src = source(url, records_path="data", pagination={"type": "next_url", "next_url_path": "next"})

    async with guarded("127.0.0.1", block=block) as client:
        seen, error = await collect_until_error(client, src)

    assert rows(seen) == [{"id": 1}]
    assert isinstance(error, TargetRefused)
    assert "scheme 'file'" in error.message


# ---- allow-list and switch ----------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "host"),
    [
        (["localhost"], "localhost"),
        (["LocalHost"], "localhost"),
        (["127.0.0.0/8"], "127.0.0.1"),
        (["127.0.0.1"], "127.0.0.1"),
        (["10.0.0.0/8", " 127.0.0.1/32 "], "localhost"),
    ],
)
async def test_allow_listed_hosts_and_networks_reach_the_upstream(
    upstream: Upstream, allowed: list[str], host: str
) -> None:
    upstream.route("/data", lambda _: JSONResponse([{"id": 1}]))

    async with guarded(*allowed) as client:
        pages = await collect(client, source(f"http://{host}:{port_of(upstream)}/data"))

    assert rows(pages) == [{"id": 1}]
    assert len(upstream.hits("/data")) == 1


async def test_an_allowed_network_allows_only_itself(strict: UpstreamClient) -> None:
    async with guarded("127.0.0.0/8") as client:
        error = await refusal(client, "http://169.254.169.254/")

    assert "cloud metadata" in error.message


async def test_block_private_targets_false_allows_loopback(upstream: Upstream) -> None:
    url = upstream.route("/data", lambda _: JSONResponse([{"id": 1}]))

    async with guarded(block=False) as client:
        pages = await collect(client, source(url))

    assert rows(pages) == [{"id": 1}]


def test_a_malformed_cidr_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="not a valid CIDR"):
        TargetPolicy.from_entries(["10.0.0.0/33"])


def test_policy_from_settings() -> None:
    settings = Settings(
        _env_file=None,
        allowed_targets="api.internal, 10.0.0.0/8,[fd00::1]",  # as the env var gives it
    )

    policy = target_policy(settings)

    assert policy.block_private is True
    assert policy.allowed_hosts == {"api.internal"}
    assert [str(net) for net in policy.allowed_networks] == ["10.0.0.0/8", "fd00::1/128"]


# ---- no DNS rebinding ---------------------------------------------------------------


class ChangingDNS:
    """A resolver whose answer changes on every call, as a rebinding attacker's does."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self._answers: Iterator[Sequence[str]] = iter(answers)
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        return next(self._answers)


async def test_the_connection_goes_to_the_address_that_was_checked(upstream: Upstream) -> None:
    """`rebind.test` exists only in this resolver: the request reaches the upstream only
    if the socket connects to the checked answer, without a second lookup of its own.
    The next connection asks again and gets the metadata address: refused."""
    hosts: list[str] = []

    def handler(request: Request) -> Response:
        hosts.append(request.headers["host"])
        return JSONResponse([{"id": 1}])

    upstream.route("/data", handler)
    dns = ChangingDNS(["127.0.0.1"], ["169.254.169.254"], ["127.0.0.1"])
    url = f"http://rebind.test:{port_of(upstream)}/data"

    async with guarded("127.0.0.1/32", resolver=dns) as client:
        pages = await collect(client, source(url))
    assert rows(pages) == [{"id": 1}]
    assert dns.calls == ["rebind.test"]  # one lookup for check and connect together
    assert hosts == [f"rebind.test:{port_of(upstream)}"]  # the Host header keeps the name

    async with guarded("127.0.0.1/32", resolver=dns) as client:
        error = await refusal(client, url)
    assert "rebind.test resolves to 169.254.169.254" in error.message
    assert len(upstream.hits("/data")) == 1


async def test_an_unresolvable_host_is_a_retryable_connect_failure() -> None:
    async def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async with guarded(resolver=nxdomain) as client:
        with pytest.raises(UpstreamUnavailable) as caught:
            await collect(client, source("http://nowhere.invalid/"))

    assert caught.value.retryable is True
    assert (
        caught.value.message == "could not resolve host nowhere.invalid (Name or service not known)"
    )


# ---- check_target (registration) ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://localhost/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://2130706433/", "loopback"),
        ("ftp://example.com/", "scheme 'ftp'"),
        ("http://user:secret@example.com/", "credentials"),
    ],
)
async def test_check_target_refuses(url: str, expected: str) -> None:
    with pytest.raises(TargetRefused, match=expected) as caught:
        await check_target(url, TargetPolicy())

    assert caught.value.code == "target_refused"


@pytest.mark.parametrize(
    ("url", "policy"),
    [
        ("http://93.184.216.34/data", TargetPolicy()),
        ("http://localhost/", TargetPolicy.from_entries(["localhost"])),
        ("http://10.1.2.3/", TargetPolicy.from_entries(["10.0.0.0/8"])),
        ("http://[::ffff:10.1.2.3]/", TargetPolicy.from_entries(["10.0.0.0/8"])),
        ("http://localhost/", TargetPolicy(block_private=False)),
    ],
)
async def test_check_target_passes(url: str, policy: TargetPolicy) -> None:
    await check_target(url, policy)


async def test_check_target_leaves_an_unresolvable_host_to_the_fetch() -> None:
    async def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    await check_target("https://api.example.com/v2", TargetPolicy(), resolver=nxdomain)


async def test_check_target_still_checks_the_scheme_when_private_targets_are_allowed() -> None:
    with pytest.raises(TargetRefused, match="scheme"):
        await check_target("gopher://localhost:6379/", TargetPolicy(block_private=False))
