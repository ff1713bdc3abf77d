"""The compiled core's fast paths give what the plain ways give: a header line made or
read by index, a remembered parse, a transport or timer looked up by name."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipserver.sip.flow import Transport, transport_named
from sipserver.sip.header_fields import KEY, NAME, RAW, VALUE, header_text, make_header
from sipserver.sip.header_line import Header
from sipserver.sip.headers import COMPACT_FORMS, header_key, is_token, parse_params
from sipserver.sip.memo import Memo
from sipserver.sip.transaction_machine import _TIMER_INPUTS
from sipserver.sip.transaction_tables import TIMER_ACTIONS, Input
from sipserver.sip.uri import UriError, parse_host_port
from sipserver.sip.validate import _QUOTED, _has_empty_element
from sipserver.sip.via import Via, _parse_via, parse_via, via_text


@pytest.mark.parametrize(
    ("name", "value", "raw"),
    [
        ("Via", "SIP/2.0/TLS h;branch=z9hG4bK1", None),
        ("v", "SIP/2.0/UDP h", "v:  SIP/2.0/UDP h"),
        ("X-Odd", "", "X-Odd:"),
        ("Subject", "two\r\n lines", "Subject: two\r\n lines"),
    ],
)
def test_a_made_header_is_the_class_s_own_and_reads_the_same(
    name: str, value: str, raw: str | None
) -> None:
    made, plain = make_header(name, value, raw), Header(name, value, raw)
    assert made == plain and type(made) is Header
    assert (made[NAME], made[VALUE], made[RAW], made[KEY]) == (
        plain.name,
        plain.value,
        plain.raw,
        plain.key,
    )
    assert header_text(made) == plain.text()


@given(st.text(alphabet="AaBbCcVvFfIi-_. \t", max_size=12))
def test_header_keys_are_the_same_remembered_or_not(name: str) -> None:
    lowered = name.strip().lower()
    expected = COMPACT_FORMS.get(lowered, lowered).lower()  # the rule, worked out here
    assert header_key(name) == header_key(name) == Header(name, "").key == expected
    assert header_key(name) == header_key(name.strip())


def test_a_memo_computes_once_forgets_errors_and_starts_again_when_full() -> None:
    calls: list[str] = []

    def parse(text: str) -> int:
        calls.append(text)
        if not text.isdigit():
            raise ValueError(text)
        return int(text)

    memo = Memo(parse, limit=3)
    assert [memo.get("1"), memo.get("1"), memo.get("2")] == [1, 1, 2]
    assert calls == ["1", "2"]
    for _ in range(2):
        with pytest.raises(ValueError):
            memo.get("x")
    assert calls == ["1", "2", "x", "x"]  # a bad text is parsed (and refused) each time
    memo.get("3")
    assert len(memo) == 3
    memo.get("4")  # full: it starts again rather than growing
    assert len(memo) == 1
    assert memo.get("1") == 1 and calls[-1] == "1"


def test_transports_by_name_are_the_enum_s_and_unknown_ones_none() -> None:
    for transport in Transport:
        assert transport_named(transport.value) is transport
    assert transport_named("sctp") is None
    assert transport_named("TLS") is None  # callers lower-case first, as the enum needs


def test_every_timer_the_tables_start_has_its_input() -> None:
    names = {name for _, name in TIMER_ACTIONS.values()}
    assert names <= set(_TIMER_INPUTS)
    assert all(_TIMER_INPUTS[name] is Input(name) for name in names)


# The rule as a regex: a separator followed (after any whitespace) by another or by the
# end, or one first. validate's substring tests must find exactly what it finds.
EMPTY_ELEMENT = re.compile(r"[;,]\s*(?:[;,]|$)|^\s*[;,]")


@given(st.text(alphabet=st.sampled_from(list(';,ab= \t\r\n\u00a0\u2003\x0b"<>')), max_size=24))
def test_the_empty_element_check_finds_what_the_regex_finds(value: str) -> None:
    unquoted = _QUOTED.sub('""', value) if '"' in value else value
    assert _has_empty_element(value) == (EMPTY_ELEMENT.search(unquoted) is not None)


def test_a_via_written_as_text_parses_back_to_itself_without_a_parse() -> None:
    via = Via("TLS", "sip.example.test", 5061, {"branch": "z9hG4bK-sips123", "rport": None})
    text = via_text(via)
    assert text == str(via)
    assert parse_via(text) is via
    assert _parse_via(text) == via  # what a parse would have given


def test_host_ports_parse_the_same_remembered_and_bad_ones_raise_each_time() -> None:
    assert parse_host_port("Example.TEST:5061") == ("example.test", 5061)
    assert parse_host_port("Example.TEST:5061") == ("example.test", 5061)
    assert parse_host_port("[::1]") == ("::1", None)
    for _ in range(2):
        with pytest.raises(UriError):
            parse_host_port("bad host:5060")
        with pytest.raises(UriError):
            parse_host_port("example.test:70000")


def test_parameter_names_are_checked_the_first_time_and_every_time_when_bad() -> None:
    assert parse_params(";Branch=z9hG4bK1;lr") == {"branch": "z9hG4bK1", "lr": None}
    assert parse_params(";branch=z9hG4bK2") == {"branch": "z9hG4bK2"}
    for _ in range(2):
        with pytest.raises(ValueError, match="bad parameter name"):
            parse_params(";bra nch=1")


@given(st.text(alphabet="ab-.!%*_+`'~ ;:\"@", max_size=8))
def test_token_names_are_told_apart_the_same_remembered_or_not(text: str) -> None:
    expected = TOKEN.fullmatch(text) is not None
    assert is_token(text) is expected
    assert is_token(text) is expected  # the second time from what it remembered


TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")  # RFC 3261 §25.1 token
