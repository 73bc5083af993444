"""The free-text redaction step (services/ingest/domain/redaction.py), on text shaped like what
GoPhish, mail gateways, EDR agents and identity providers write into summaries and notes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.domain.redaction import (
    ALL_KINDS,
    EMAIL_PATTERN,
    RedactionKind,
    RedactionSettings,
    Redactor,
    parse_redaction_settings,
)

REDACT_ALL = Redactor()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "User jane.doe@example.com reported mail from it-support@examp1e-secure.com, "
            "callback +44 20 7946 0958",
            "User [email] reported mail from [email], callback [phone]",
        ),
        (
            "Sign-in from 203.0.113.42 and 2001:db8::8a2e:370:7334 for j.smith",
            "Sign-in from [ipv4] and [ipv6] for j.smith",
        ),
        (
            "Clicked https://login.example-corp.com/reset?token=abc123&user=jane%40example.com#x",
            "Clicked https://login.example-corp.com/reset?[query]",
        ),
        (
            # "=" is no local-part character here (it separates key=value), so the Message-ID keeps
            # its opening; what names the host and the person is gone.
            "Mail gateway quarantined message <CAF=x1@mail.example.net> from "
            '"Payroll" <payroll-noreply@pay-r0ll.example.org> to Jürgen.Müller@beispiel.de.',
            'Mail gateway quarantined message <CAF=[email]> from "Payroll" <[email]> to [email].',
        ),
        (
            "EDR: powershell.exe on LAPTOP-7 connected to 198.51.100.23:443 and [2001:db8:0:1::a]:8443",
            "EDR: powershell.exe on LAPTOP-7 connected to [ipv4]:443 and [[ipv6]]:8443",
        ),
        (
            "Okta: MFA factor reset by admin from fe80::1%eth0, previous login ::1, "
            "proxy ::ffff:192.0.2.128 and 2001:0db8:85a3:0000:0000:8a2e:0370:7334.",
            "Okta: MFA factor reset by admin from [ipv6], previous login [ipv6], proxy [ipv6] and [ipv6].",
        ),
        (
            "GoPhish: Clicked Link (https://portal.example-corp.com/login?rid=7Hk2pQ). "
            "Landing page https://203.0.113.9/track#user=jane.",
            "GoPhish: Clicked Link (https://portal.example-corp.com/login?[query]). "
            "Landing page https://[ipv4]/track#[query].",
        ),
        (
            "Note from helpdesk: reached j.smith on (415) 555-0132 and on +1-415-555-0132, "
            "asked to call back at 415.555.0132.",
            "Note from helpdesk: reached j.smith on [phone] and on [phone], asked to call back at [phone].",
        ),
    ],
)
def test_realistic_summaries_are_redacted(text: str, expected: str) -> None:
    assert REDACT_ALL.redact(text) == expected


@pytest.mark.parametrize(
    ("region", "text"),
    [
        ("US", "Caller said: call me at (415) 555-0132 after lunch"),
        ("US", "Caller said: call me at 415-555-0132 after lunch"),
        ("US", "Caller said: call me at +1 415 555 0132 after lunch"),
        ("GB", "Caller said: call me at 020 7946 0958 after lunch"),
        ("US", "Caller said: call me at +44 20 7946 0958 after lunch"),
        ("US", "Caller said: call me at +49 30 901820 after lunch"),
        ("DE", "Caller said: call me at 030 901820 after lunch"),
        ("US", "Caller said: call me at +49 (0)30 901820 after lunch"),
        ("FR", "Caller said: call me at 06 12 34 56 78 after lunch"),
        ("US", "Caller said: call me at +33 6 12 34 56 78 after lunch"),
    ],
)
def test_phone_numbers_in_several_formats(region: str, text: str) -> None:
    assert Redactor(phone_region=region).redact(text) == "Caller said: call me at [phone] after lunch"


def test_a_national_number_is_read_in_the_sources_region() -> None:
    text = "Vishing call from 020 7946 0958 reported"
    assert Redactor(phone_region="GB").redact(text) == "Vishing call from [phone] reported"
    # In the US plan 020... is no number, so a US source's text keeps it.
    assert Redactor(phone_region="US").redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "Agent updated to version 10.4.2 at 12:30:45 on 2026-11-30",
        "Campaign Q4-2026-117 sent 1,204 mails; order 483920 shipped",
        "Training SEC-101 completed 2026-11-30 12:30 with score 87%",
        "Hash prefix cafe dead:beef Foo::Bar, MAC 00:1a:2b:3c:4d:5e, build 1.2.3.4.5",
        "Risk score 0.93 for 3 sign-ins within 10:00 minutes (ratio 1:2:3)",
        "Report button used; no link clicked. See https://intranet.example.com/policies/phishing.",
        "Not an address: 256.1.1.1 or 10.0.0 or 999.999.999.999",
        "mailto-less handle @jane and user@localhost and a@b",
        "",
    ],
)
def test_what_is_not_personal_is_left_alone(text: str) -> None:
    assert REDACT_ALL.redact(text) == text


@pytest.mark.parametrize("region", ["US", "GB", "DE", "FR"])
def test_long_identifiers_are_no_phone_numbers_in_any_region(region: str) -> None:
    # Each has seven digits or more, so the matcher sees it; each would pass as a "possible" number.
    text = (
        "Ticket 20261130 closed; order 4839201 and invoice 1234567 paid; build 2026.11.30.1 deployed; "
        "serial 0000001; ratio 100 / 2026 / 117; ids 1234 5678 9012"
    )
    assert Redactor(phone_region=region).redact(text) == text


def test_trailing_punctuation_stays_outside_the_url() -> None:
    text = "Links: https://a.example.com/x?y=1, (https://b.example.com/?t=2), https://c.example.com/?"
    assert REDACT_ALL.redact(text) == (
        "Links: https://a.example.com/x?[query], (https://b.example.com/?[query]), https://c.example.com/?"
    )


def test_each_kind_can_be_chosen_alone() -> None:
    text = (
        "jane@example.com from 203.0.113.42 and 2001:db8::1 called +44 20 7946 0958 "
        "about https://x.example.com/a?b=c"
    )
    expected = {
        RedactionKind.EMAIL: "[email] from 203.0.113.42 and 2001:db8::1 called +44 20 7946 0958 "
        "about https://x.example.com/a?b=c",
        RedactionKind.IPV4: "jane@example.com from [ipv4] and 2001:db8::1 called +44 20 7946 0958 "
        "about https://x.example.com/a?b=c",
        RedactionKind.IPV6: "jane@example.com from 203.0.113.42 and [ipv6] called +44 20 7946 0958 "
        "about https://x.example.com/a?b=c",
        RedactionKind.PHONE: "jane@example.com from 203.0.113.42 and 2001:db8::1 called [phone] "
        "about https://x.example.com/a?b=c",
        RedactionKind.URL_QUERY: "jane@example.com from 203.0.113.42 and 2001:db8::1 called +44 20 7946 0958 "
        "about https://x.example.com/a?[query]",
    }
    assert set(expected) == ALL_KINDS
    for kind, redacted in expected.items():
        assert Redactor(frozenset({kind})).redact(text) == redacted, kind
    assert Redactor(frozenset()).redact(text) == text


def test_an_email_in_a_query_goes_with_the_query() -> None:
    text = "https://t.example.com/c?email=jane.doe@example.com&id=9"
    assert Redactor(frozenset({RedactionKind.URL_QUERY})).redact(text) == "https://t.example.com/c?[query]"
    assert (
        Redactor(frozenset({RedactionKind.EMAIL})).redact(text)
        == "https://t.example.com/c?email=[email]&id=9"
    )


def test_settings_choose_the_redactor_per_source() -> None:
    configured = parse_redaction_settings("*=all;edr=email,ipv4;legacy-import=none;gophish=all@GB")
    assert configured.default == Redactor()
    assert configured.for_source("idp") == Redactor()
    assert configured.for_source("edr") == Redactor(frozenset({RedactionKind.EMAIL, RedactionKind.IPV4}))
    assert configured.for_source("legacy-import") == Redactor(frozenset())
    assert configured.for_source("gophish") == Redactor(ALL_KINDS, "GB")

    text = "Call 020 7946 0958 or mail jane@example.com from 203.0.113.42, 2001:db8::1"
    assert configured.for_source("gophish").redact(text) == "Call [phone] or mail [email] from [ipv4], [ipv6]"
    assert (
        configured.for_source("edr").redact(text)
        == "Call 020 7946 0958 or mail [email] from [ipv4], 2001:db8::1"
    )
    assert configured.for_source("legacy-import").redact(text) == text


@pytest.mark.parametrize("value", ["", " ", ";", "*=all"])
def test_empty_settings_redact_everything_everywhere(value: str) -> None:
    configured = parse_redaction_settings(value)
    assert configured == RedactionSettings(Redactor(), {})
    assert configured.for_source("anything") == Redactor(ALL_KINDS, "US")


def test_settings_tolerate_spaces_and_case() -> None:
    configured = parse_redaction_settings(" * = none ; mail-gw = Email , URL_QUERY @ fr ;")
    assert configured.default == Redactor(frozenset())
    assert configured.for_source("mail-gw") == Redactor(
        frozenset({RedactionKind.EMAIL, RedactionKind.URL_QUERY}), "FR"
    )


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("edr", "'edr'"),
        ("=all", "'=all'"),
        ("edr=", "'edr='"),
        ("edr=email,sms", "'sms'"),
        ("edr=all,email", "'all'"),
        ("edr=none,phone", "'none'"),
        ("edr=email;edr=phone", "'edr'"),
        ("edr=phone@ZZ", "'ZZ'"),
        ("edr=phone@", "''"),
        ("*=all;*=none", "'*'"),
        ("edr=email,", "''"),
    ],
)
def test_bad_settings_name_the_bad_part(value: str, names: str) -> None:
    with pytest.raises(ValueError, match="redaction entry") as raised:
        parse_redaction_settings(value)
    assert names in str(raised.value)


def test_a_redactor_refuses_an_unknown_region() -> None:
    with pytest.raises(ValueError, match="'XX'"):
        Redactor(phone_region="XX")


@pytest.mark.parametrize(
    "text",
    [
        "User [email] reported mail from [email], callback [phone] ([ipv4], [ipv6])",
        "Clicked https://login.example-corp.com/reset?[query]. Again: https://x.example.com/?[query])",
        "Call +44 20 7946 0958 or (415) 555-0132, 4155550132 4155550133 4155550134",
        "a@b.co@c.com x@[192.0.2.1] 1.2.3.4.5.6.7.8 ::ffff:1.2.3.4 2001:db8::1:2:3:4:5",
    ],
)
def test_redaction_is_idempotent(text: str) -> None:
    once = REDACT_ALL.redact(text)
    assert REDACT_ALL.redact(once) == once


# Pieces that make hypothesis build near-misses and neighbours: addresses glued to digits, colons,
# dots, placeholders and each other.
_PIECES = st.sampled_from(
    [
        *"0123456789abcdefx:.@%[]()+- /?#=&_é\n",
        "https://",
        "jane@example.com",
        "+44 20 7946 0958",
        "(415) 555-0132",
        "::1",
        "fe80::",
        "203.0.113.42",
        "[email]",
        "[phone]",
        "[ipv4]",
        "[ipv6]",
        "?[query]",
    ]
)
_TEXT = st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=40).map("".join))
_REDACTORS = st.builds(
    Redactor,
    st.frozensets(st.sampled_from(list(RedactionKind))),
    st.sampled_from(["US", "GB", "DE", "FR"]),
)


@settings(max_examples=400, deadline=None)
@given(_TEXT, _REDACTORS)
def test_any_text_is_redacted_without_error_and_idempotently(text: str, redactor: Redactor) -> None:
    once = redactor.redact(text)
    assert redactor.redact(once) == once
    if RedactionKind.EMAIL in redactor.kinds:
        assert EMAIL_PATTERN.search(once) is None
