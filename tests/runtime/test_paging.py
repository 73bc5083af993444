"""The suite's one page-token codec: only tokens it issued, for the same list and filters, decode."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runtime.errors import InvalidArgumentError
from services.runtime.paging import TAG_BYTES, PageTokens

TOKENS = PageTokens.from_secret(b"s" * 32)
FILTERS = {"type": "phishing_click", "source": "mail-gw"}
METHOD = "ingest.ListEvents"


def refused(
    token: str, *, method: str = METHOD, filters: object = FILTERS, shape: tuple[type, ...] = (int, str)
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        TOKENS.decode(token, method=method, filters=filters, shape=shape)
    assert raised.value.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in raised.value.violations] == ["page_token"]


def test_a_token_round_trips_and_an_empty_one_is_the_first_page() -> None:
    token = TOKENS.encode([1_700_000_000_000_000, "evt-1"], method=METHOD, filters=FILTERS)
    assert TOKENS.decode(token, method=METHOD, filters=FILTERS, shape=(int, str)) == (
        1_700_000_000_000_000,
        "evt-1",
    )
    assert TOKENS.decode("", method=METHOD, filters=FILTERS, shape=(int, str)) is None


def test_replicas_sharing_the_service_secret_accept_each_others_tokens() -> None:
    token = TOKENS.encode([7], method=METHOD)
    assert PageTokens.from_secret(b"s" * 32).decode(token, method=METHOD, shape=(int,)) == (7,)
    with pytest.raises(InvalidArgumentError):
        PageTokens.from_secret(b"t" * 32).decode(token, method=METHOD, shape=(int,))


def test_the_key_is_not_the_service_secret() -> None:
    # A token tagged with the bare secret (what a holder of another derived key could make) is refused.
    forged = PageTokens(b"s" * 32).encode([7], method=METHOD)
    refused(forged, shape=(int,), filters=None)


def test_a_token_for_other_filters_or_another_list_is_refused() -> None:
    token = TOKENS.encode([5, "evt-5"], method=METHOD, filters=FILTERS)
    refused(token, filters={**FILTERS, "source": "edr"})
    refused(token, filters=None)
    refused(token, method="ingest.ListTrainingExamples")


def test_forged_and_truncated_tokens_are_refused() -> None:
    token = TOKENS.encode([5, "evt-5"], method=METHOD, filters=FILTERS)
    unsigned = base64.urlsafe_b64encode(b'[6,"evt-6"]').decode().rstrip("=")
    for bad in (
        unsigned,
        token[:-1],
        token[:-4],
        token + "A",
        token + "=",
        "%%%",
        "a\x00b",
        "A" * 5000,
        base64.urlsafe_b64encode(b"\x00" * 40).decode(),
        base64.urlsafe_b64encode(b"x" * TAG_BYTES).decode().rstrip("="),
    ):
        refused(bad)


@given(index=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
def test_any_one_character_changed_is_refused(index: int, replacement: str) -> None:
    token = TOKENS.encode([5, "evt-5"], method=METHOD, filters=FILTERS)
    index %= len(token)
    if token[index] == replacement:
        return
    refused(token[:index] + replacement + token[index + 1 :])


# Positions are ids, names and 64-bit numbers: up to four of them, names of up to 32 characters
# from anywhere in Unicode.
POSITION_VALUES = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=32))


@given(
    position=st.lists(POSITION_VALUES, max_size=4),
    filters=st.dictionaries(st.text(), st.text()),
)
def test_every_issued_position_decodes_to_itself(position: list[int | str], filters: dict[str, str]) -> None:
    shape = tuple(type(value) for value in position)
    token = TOKENS.encode(position, method=METHOD, filters=filters)
    assert TOKENS.decode(token, method=METHOD, filters=filters, shape=shape) == tuple(position)


def test_a_position_too_long_to_decode_is_never_issued() -> None:
    with pytest.raises(ValueError, match="at most 1024 characters"):
        TOKENS.encode(["\U0001d4d1" * 200], method=METHOD)


def test_a_position_of_the_wrong_shape_is_invalid_argument_not_a_cast_error() -> None:
    # Only a bug or an older release could issue these; they must still not become INTERNAL.
    for position, shape in (
        (["not-a-number"], (int,)),
        ([True], (int,)),
        ([1.5], (int,)),
        ([1, "a", 2], (int, str)),
        ([], (int,)),
        ([3], (str,)),
    ):
        token = TOKENS.encode(position, method=METHOD)  # type: ignore[arg-type]
        refused(token, filters=None, shape=shape)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PageTokens(b"short")


async def test_fetch_page_asks_for_one_row_more_and_tokens_the_last_row_kept() -> None:
    asked: list[int] = []

    async def fetch(limit: int) -> list[tuple[int, str]]:
        asked.append(limit)
        return [(n, f"id-{n}") for n in range(min(limit, 5))]

    rows, token = await TOKENS.fetch_page(
        fetch, size=3, position=lambda row: row, method=METHOD, filters=FILTERS
    )

    assert asked == [4]
    assert rows == [(0, "id-0"), (1, "id-1"), (2, "id-2")]
    assert TOKENS.decode(token, method=METHOD, filters=FILTERS, shape=(int, str)) == (2, "id-2")


async def test_fetch_page_gives_no_token_when_no_row_is_left_over() -> None:
    async def fetch(limit: int) -> list[tuple[int, str]]:
        return [(0, "id-0"), (1, "id-1")]

    rows, token = await TOKENS.fetch_page(fetch, size=2, position=lambda row: row, method=METHOD)

    assert rows == [(0, "id-0"), (1, "id-1")]
    assert token == ""
