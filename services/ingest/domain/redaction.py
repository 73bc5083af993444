"""Redaction of free text: contact details and addresses replaced by typed placeholders.

Free-text fields (the summary and the details docs/data-minimisation.md declares as free text) are
written by the sources' people and programs, and they carry whatever those chose to write: the
reporter's e-mail address, a call-back number, the address a sign-in came from, a password-reset
link with its token. The personal fields are sealed with the subject's data key anyway, but
minimisation asks more than protection: what the purpose does not need is not stored at all. The
purpose (did the person report, click, sign in from somewhere unusual) needs none of these, so
they are replaced before anything is stored:

- e-mail addresses by ``[email]``;
- phone numbers by ``[phone]``, found with Google's libphonenumber (``phonenumbers``), which knows
  each country's numbering plan, so a number written without a country code is read in the
  source's region and version numbers, dates, times and order numbers are left alone;
- IPv4 and IPv6 addresses by ``[ipv4]`` and ``[ipv6]``, candidates found by pattern and kept only
  if :mod:`ipaddress` accepts them (``10.4.2`` and ``12:30:45`` are not addresses);
- the query string and fragment of an http(s) URL by ``[query]``: scheme, host and path say what
  was clicked, the query is where tokens and recipients' identifiers travel
  (``https://login.example.com/reset?[query]``).

Which kinds apply, and the phone region, are configurable per source
(``AWARENESS_INGEST_REDACTION``, :func:`parse_redaction_settings`): an import of historical records
that were already redacted, or a source whose free text is known to be clean, can skip the work.

Redaction runs on the append path for every event, and most texts contain nothing to redact, so
each kind first checks a cheap sign (an ``@``, ``://``, enough digits, ...) before its matcher
runs. It never raises on any ``str``, and it is idempotent: redacting redacted text changes nothing.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import phonenumbers

__all__ = [
    "ALL_KINDS",
    "EMAIL_PATTERN",
    "RedactionKind",
    "RedactionSettings",
    "Redactor",
    "parse_redaction_settings",
]


class RedactionKind(enum.StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    URL_QUERY = "url_query"


ALL_KINDS: frozenset[RedactionKind] = frozenset(RedactionKind)

# Local part as RFC 5322's dot-atom (no quoted strings), Unicode letters allowed (RFC 6531), less
# "/", "=" and "?": legal, but unseen in real addresses and the separators of the URLs and key=value
# pairs around them. The domain is dot-separated labels ending in an alphabetic TLD or a punycode
# one, or an address literal.
_LOCAL_CHAR = r"[\w!#$%&'*+^`{|}~-]"
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
# The lookbehinds start a match only where a local part can begin: without them every position
# inside a long word would be tried, quadratic in its length.
EMAIL_PATTERN = re.compile(
    rf"(?<!{_LOCAL_CHAR})(?<!{_LOCAL_CHAR}\.){_LOCAL_CHAR}++(?:\.{_LOCAL_CHAR}++)*+@"
    rf"(?:(?:{_LABEL}\.)+(?:[^\W\d_]{{2,63}}|xn--[a-z0-9-]{{1,59}})(?![\w-])|\[[0-9A-Fa-f:.]+\])",
    re.IGNORECASE,
)

# Scheme, host and path, then the query and/or fragment up to white space or a character that does
# not appear unescaped in URLs written in prose.
_URL = re.compile(r"(?i)\bhttps?://[^\s?#<>\"'`]*+([?#][^\s<>\"'`]*+)")
# Punctuation that ends a sentence or closes a bracket around the URL rather than belonging to it.
_URL_TRAILING = ".,;:!?)'\"}"

# Candidates only: ipaddress decides. Not preceded or followed by what would make them part of a
# longer token (a version 1.2.3.4.5, a word, a scoped or longer IPv6 candidate).
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\.?[\w])")
_IPV6 = re.compile(
    r"(?<![\w:.%])(?:[0-9A-Fa-f]{0,4}:){2,8}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?"
    r"(?:%[\w.-]+)?(?![\w:%]|\.\w)"
)
_HEX_DIGIT = re.compile(r"[0-9A-Fa-f]")
# Runs of digits joined by what libphonenumber accepts inside a number (its _VALID_PUNCTUATION:
# dashes, spaces, dots, slashes, brackets, tildes, the "x" of carrier codes, full-width forms).
_PHONE_PUNCTUATION = (
    "\\-x\u2010-\u2015\u2212\u30fc\uff0d-\uff0f \u00a0\u00ad\u200b\u2060\u3000"
    "()\uff08\uff09\uff3b\uff3d.\\[\\]/~\u2053\u223c\uff5e"
)
# A run may open with up to two leads ("+", "(", "(+"), as the matcher's candidates do.
_PHONE_RUN = re.compile(
    rf"(?:[+\uff0b(\uff08\[\uff3b][{_PHONE_PUNCTUATION}]*){{0,2}}\d[\d{_PHONE_PUNCTUATION}]*\d"
)
_SEVEN_DIGITS = re.compile(r"\d(?:\D*\d){6}")  # the shortest numbers libphonenumber calls valid
# ISO dates do not count towards a run's digits: "on 2026-11-30 12:30" is common and no number.
_ISO_DATE = re.compile(r"(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])")
# Text beside a run that the matcher looks at: the letter before or after (abc8005001234 is no
# number) and a time stamp's ":30" after.
_PHONE_CONTEXT_BEFORE = 1
_PHONE_CONTEXT_AFTER = 3

# libphonenumber's VALID: a number that is valid in its country's plan, not merely the right length;
# laxer levels redact dates, times and order numbers.
_PHONE_LENIENCY = phonenumbers.Leniency.VALID
# A text reaching it is pathological; the matcher gives up (leaving the rest) rather than stall an append.
_PHONE_MAX_TRIES = 10_000


def _redact_urls(text: str) -> str:
    if "://" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        query = match.group(1)
        kept = query.rstrip(_URL_TRAILING)
        if len(kept) <= 1:  # a bare "?" or "#", or only punctuation: nothing to hide
            return match.group(0)
        trailing = query[len(kept) :]
        return match.group(0)[: match.start(1) - match.start(0)] + kept[0] + "[query]" + trailing

    return _URL.sub(replace, text)


def _redact_emails(text: str) -> str:
    if "@" not in text:
        return text
    return EMAIL_PATTERN.sub("[email]", text)


def _is_ipv6(candidate: str) -> bool:
    # An address in text has a digit (2001:, fe80::1, ::1); hex-only words joined by "::" are
    # far more often identifiers (Bad::Cafe) than addresses.
    if not any(c.isdigit() for c in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _redact_ipv6(text: str) -> str:
    # The pattern needs two colons at least: a URL's single "://" never starts it.
    if text.count(":") < 2 or _HEX_DIGIT.search(text) is None:
        return text
    return _IPV6.sub(lambda m: "[ipv6]" if _is_ipv6(m.group(0)) else m.group(0), text)


def _is_ipv4(candidate: str) -> bool:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


def _redact_ipv4(text: str) -> str:
    if text.count(".") < 3:
        return text
    return _IPV4.sub(lambda m: "[ipv4]" if _is_ipv4(m.group(0)) else m.group(0), text)


def _phone_windows(text: str) -> list[tuple[int, int]]:
    """Spans of `text` worth giving the matcher: each run of digits and phone punctuation holding at
    least seven digits, with its context; overlapping spans merged."""
    windows: list[tuple[int, int]] = []
    for run in _PHONE_RUN.finditer(text):
        if _SEVEN_DIGITS.search(_ISO_DATE.sub("", run.group(0))) is None:
            continue
        start = max(0, run.start() - _PHONE_CONTEXT_BEFORE)
        end = min(len(text), run.end() + _PHONE_CONTEXT_AFTER)
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows


def _redact_phones(text: str, region: str) -> str:
    # The matcher parses every digit group it meets (dates, times, ids), each a few tens of µs, so
    # it sees only the windows around runs long enough to be a number.
    if _SEVEN_DIGITS.search(text) is None:
        return text
    spans: list[tuple[int, int]] = []
    for window_start, window_end in _phone_windows(text):
        matcher = phonenumbers.PhoneNumberMatcher(
            text[window_start:window_end], region, leniency=_PHONE_LENIENCY, max_tries=_PHONE_MAX_TRIES
        )
        spans.extend((window_start + match.start, window_start + match.end) for match in matcher)
    if not spans:
        return text
    parts: list[str] = []
    position = 0
    for start, end in spans:
        parts.append(text[position:start])
        parts.append("[phone]")
        position = end
    parts.append(text[position:])
    return "".join(parts)


# Order matters: a URL's query may hold an e-mail address, an e-mail address's domain may look like
# an IPv4 address, and the digits of IP addresses would otherwise be offered to the phone matcher.
_STEPS: tuple[tuple[RedactionKind, Callable[[str], str]], ...] = (
    (RedactionKind.URL_QUERY, _redact_urls),
    (RedactionKind.EMAIL, _redact_emails),
    (RedactionKind.IPV6, _redact_ipv6),
    (RedactionKind.IPV4, _redact_ipv4),
)

# Replacing one match can expose another (the phone matcher judges a number by its neighbours); each
# further pass only runs when the previous changed something, so clean text pays for one pass.
_MAX_PASSES = 4


@dataclass(frozen=True, slots=True)
class Redactor:
    """Redacts the `kinds` from free text; `phone_region` is the ISO 3166 region in which a phone
    number written without +country code is read (libphonenumber's region codes)."""

    kinds: frozenset[RedactionKind] = ALL_KINDS
    phone_region: str = "US"
    # The steps of one pass for these kinds, in _STEPS order then phones: chosen once, not per text.
    _steps: tuple[Callable[[str], str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.phone_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"unknown phone region {self.phone_region!r} (an ISO 3166 code such as US, GB, DE)"
            )
        unknown = [kind for kind in self.kinds if not isinstance(kind, RedactionKind)]
        if unknown:
            raise ValueError(f"unknown redaction kinds {unknown!r}")
        steps = [step for kind, step in _STEPS if kind in self.kinds]
        if RedactionKind.PHONE in self.kinds:
            steps.append(functools.partial(_redact_phones, region=self.phone_region))
        object.__setattr__(self, "_steps", tuple(steps))  # frozen: set once, here

    def redact(self, text: str) -> str:
        if not self.kinds or not text:
            return text
        for _ in range(_MAX_PASSES):
            redacted = self._pass(text)
            if redacted == text:
                break
            text = redacted
        return text

    def _pass(self, text: str) -> str:
        for step in self._steps:
            text = step(text)
        return text


@dataclass(frozen=True, slots=True)
class RedactionSettings:
    """The redactor of each source; sources not named use `default`."""

    default: Redactor = field(default_factory=Redactor)
    per_source: Mapping[str, Redactor] = field(default_factory=lambda: MappingProxyType({}))

    def for_source(self, source: str) -> Redactor:
        return self.per_source.get(source, self.default)


_DEFAULT_SOURCE = "*"
_KIND_NAMES = ", ".join(kind.value for kind in RedactionKind)


def _parse_kinds(entry: str, value: str) -> frozenset[RedactionKind]:
    names = [name.strip().lower() for name in value.split(",")]
    if names == ["all"]:
        return ALL_KINDS
    if names == ["none"]:
        return frozenset()
    kinds: set[RedactionKind] = set()
    for name in names:
        if name in ("all", "none"):
            raise ValueError(f"redaction entry {entry!r}: {name!r} cannot be combined with other kinds")
        try:
            kinds.add(RedactionKind(name))
        except ValueError:
            raise ValueError(
                f"redaction entry {entry!r}: unknown kind {name!r} (all, none, or some of {_KIND_NAMES})"
            ) from None
    return frozenset(kinds)


def parse_redaction_settings(value: str) -> RedactionSettings:
    """Parses ``AWARENESS_INGEST_REDACTION``: ``source=kinds`` entries separated by ``;``, where
    ``*`` is every source not named, kinds are comma-separated (email, phone, ipv4, ipv6,
    url_query) or ``all`` or ``none``, and an optional ``@REGION`` sets the phone region, e.g.
    ``*=all;edr=email,ipv4;legacy-import=none;gophish=all@GB``. Empty: every kind for every source
    (region US). Raises ValueError naming the bad entry."""
    default = Redactor()
    per_source: dict[str, Redactor] = {}
    seen: set[str] = set()
    for raw in value.split(";"):
        entry = raw.strip()
        if not entry:
            continue  # a trailing or doubled ";"
        source, equals, spec = entry.partition("=")
        source = source.strip()
        if not equals:
            raise ValueError(f"redaction entry {entry!r}: expected source=kinds")
        if not source:
            raise ValueError(f"redaction entry {entry!r}: the source is empty (use * for every source)")
        if source in seen:
            raise ValueError(f"redaction entry {entry!r}: source {source!r} is named twice")
        seen.add(source)
        kinds_part, at, region_part = spec.partition("@")
        if not kinds_part.strip():
            raise ValueError(f"redaction entry {entry!r}: no kinds (use none to redact nothing)")
        kinds = _parse_kinds(entry, kinds_part)
        region = region_part.strip().upper() if at else "US"
        if at and region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"redaction entry {entry!r}: unknown phone region {region_part.strip()!r}")
        redactor = Redactor(kinds, region)
        if source == _DEFAULT_SOURCE:
            default = redactor
        else:
            per_source[source] = redactor
    return RedactionSettings(default, MappingProxyType(per_source))
