import pytest

from service.errors import InvalidInput
from service.pagination import decode_cursor, decode_positions, encode_cursor, encode_positions

LOC: list[str | int] = ["query", "after"]


def test_equal_position_vectors_make_equal_cursors_and_zeros_are_left_out() -> None:
    one = encode_positions({"tsk_b": 2, "tsk_a": 7, "tsk_c": 0})
    other = encode_positions({"tsk_a": 7, "tsk_b": 2})

    assert one == other
    assert "=" not in one and "+" not in one and "/" not in one
    assert decode_positions(one, LOC) == {"tsk_a": 7, "tsk_b": 2}
    assert decode_positions(None, LOC) == decode_positions("", LOC) == {}
    assert decode_positions(encode_positions({}), LOC) == {}


def test_a_list_cursor_is_not_a_feed_cursor() -> None:
    list_cursor = encode_cursor("tsk_ag2m3kq7aaaaaaaaaaaaaaaaaa")

    assert decode_cursor(list_cursor) == "tsk_ag2m3kq7aaaaaaaaaaaaaaaaaa"
    with pytest.raises(InvalidInput) as error:
        decode_positions(list_cursor, LOC)
    assert error.value.errors is not None and error.value.errors[0].loc == LOC
