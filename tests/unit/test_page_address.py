"""Where a page request goes (`service.sync.pages._address`), as the cycle check sees it."""

from service.sync.pages import _address
from service.sync.paginators import PageRequest


def test_a_query_in_the_url_and_the_same_params_are_one_address_in_any_order() -> None:
    in_url = _address(PageRequest("https://api.example.com/v1/x?b=2&a=1", None))
    as_params = _address(PageRequest("https://api.example.com/v1/x", {"a": 1, "b": "2"}))
    mixed = _address(PageRequest("https://api.example.com/v1/x?b=2", {"a": "1"}))

    assert in_url == as_params == mixed
    assert in_url is not None and in_url[0] == "https://api.example.com/v1/x"


def test_params_win_over_the_same_name_in_the_url_as_they_do_when_sent() -> None:
    assert _address(PageRequest("https://h/x?p=1", {"p": 2})) == _address(
        PageRequest("https://h/x?p=2", None)
    )


def test_different_pages_are_different_addresses() -> None:
    addresses = {
        _address(PageRequest("https://h/x?p=1", None)),
        _address(PageRequest("https://h/x?p=2", None)),
        _address(PageRequest("https://h/y?p=1", None)),
        _address(PageRequest("https://h:8443/x?p=1", None)),
        _address(PageRequest("https://h/a%2Fb", None)),  # an encoded slash is not a path step
        _address(PageRequest("https://h/a/b", None)),
    }
    assert len(addresses) == 6


def test_a_url_that_cannot_be_parsed_has_no_address() -> None:
    assert _address(PageRequest("http://[::1", None)) is None
