"""The RFC 8288 `Link` parser, through the paginator that uses it: which URL is next."""

from __future__ import annotations

import httpx
import pytest

from service.sync import PageRequest
from service.sync.paginators import PageResponse, next_request
from service.sync.spec import LinkHeaderPagination

PAGE_URL = "https://api.example.com/v1/items?page=1"


def next_of(*link_values: str, url: str = PAGE_URL) -> str | None:
    headers = httpx.Headers([("Link", value) for value in link_values])
    current = PageRequest(url=url, params={"page": 1}, index=4)
    following = next_request(
        LinkHeaderPagination(type="link_header"), current, PageResponse([], headers, url, 0)
    )
    if following is None:
        return None
    assert following.params is None  # the URL carries everything
    assert following.index == 5
    return following.url


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('<https://a.example/2>; rel="next"', "https://a.example/2"),
        ("<https://a.example/2>; rel=next", "https://a.example/2"),
        ('<https://a.example/2>; REL="NEXT"', "https://a.example/2"),
        ('<https://a.example/9>; rel="next last"', "https://a.example/9"),
        ('<https://a.example/9>; rel="last   next"', "https://a.example/9"),
        ('<https://a.example/2> ;  rel = "next" ', "https://a.example/2"),
        (
            '<https://a.example/1>; rel="first", <https://a.example/1>; rel="prev", '
            '<https://a.example/3>; rel="next", <https://a.example/9>; rel="last"',
            "https://a.example/3",
        ),
        ('<https://a.example/2>; title="page two"; rel="next"', "https://a.example/2"),
        ('<https://a.example/2>; rel="next"; title="x"', "https://a.example/2"),
    ],
)
def test_next_is_found(value: str, expected: str) -> None:
    assert next_of(value) == expected


def test_commas_and_semicolons_inside_urls() -> None:
    value = (
        '<https://a.example/items?ids=1,2,3&x=a;b>; rel="prev", '
        '<https://a.example/items?ids=4,5,6&x=c;d>; rel="next"'
    )

    assert next_of(value) == "https://a.example/items?ids=4,5,6&x=c;d"


def test_quoted_parameters_may_hold_commas_semicolons_and_angle_brackets() -> None:
    """A title is not a relation, however much it looks like one."""
    value = (
        '<https://a.example/1>; title="see <this>, then; rel=next", '
        '<https://a.example/2>; rel="next"'
    )

    assert next_of(value) == "https://a.example/2"


def test_escaped_quotes_inside_a_quoted_parameter() -> None:
    value = (
        r'<https://a.example/1>; title="a \"quoted\"; rel=next"; rel="prev", '
        "<https://a.example/2>; rel=next"
    )

    assert next_of(value) == "https://a.example/2"


def test_only_the_first_rel_of_a_link_counts() -> None:
    assert next_of('<https://a.example/1>; rel="prev"; rel="next"') is None


def test_a_param_called_url_does_not_replace_the_target() -> None:
    assert next_of('<https://a.example/2>; url="https://evil.example/"; rel="next"') == (
        "https://a.example/2"
    )


def test_next_in_a_second_link_header_line() -> None:
    assert next_of('<https://a.example/0>; rel="first"', '<https://a.example/2>; rel="next"') == (
        "https://a.example/2"
    )


@pytest.mark.parametrize(
    "value",
    [
        '<https://a.example/1>; rel="first", <https://a.example/0>; rel="prev"',
        '<https://a.example/2>; rel="nextpage"',
        '<https://a.example/2>; rel="prefetch"; title="next"',
        "",
        "garbage without brackets; rel=next",
        '<https://a.example/2; rel="next"',  # never closed
    ],
)
def test_no_next(value: str) -> None:
    assert next_of(value) is None


def test_no_link_header_at_all() -> None:
    assert next_of() is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/v1/items?page=2", "https://api.example.com/v1/items?page=2"),
        ("?page=2", "https://api.example.com/v1/items?page=2"),
        ("items?page=2", "https://api.example.com/v1/items?page=2"),
        ("//cdn.example.com/p2", "https://cdn.example.com/p2"),
    ],
)
def test_relative_targets_resolve_against_the_page_url(target: str, expected: str) -> None:
    assert next_of(f'<{target}>; rel="next"') == expected
