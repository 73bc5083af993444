from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import stat
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.gdpr.domain.errors import KeyringError, KeyUnwrapError
from services.gdpr.domain.keys import (
    Keyring,
    PeriodGranularity,
    WrappedKey,
    data_key_aad,
    generate_kek_file,
    key_period,
    load_keyring,
    lookup_key,
    new_data_key,
    new_kek,
    new_key_id,
    new_pseudonym,
    normalise_identifier,
    period_bounds,
    rewrap,
    unwrap_key,
    wrap_key,
    write_keyring_file,
)

SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32


# --- lookup and pseudonyms ---------------------------------------------------------------------------


def test_lookup_is_deterministic_under_one_secret_and_differs_under_another() -> None:
    first = lookup_key("alice@example.com", secret=SECRET)
    assert first == lookup_key("alice@example.com", secret=SECRET)
    assert len(first) == 32
    assert first != lookup_key("alice@example.com", secret=OTHER_SECRET)
    assert first != lookup_key("bob@example.com", secret=SECRET)


def test_lookup_matches_an_independent_hmac_of_the_normalised_identifier() -> None:
    expected = hmac.new(SECRET, b"alice@example.com", hashlib.sha256).digest()
    assert lookup_key("  Alice@EXAMPLE.com\n", secret=SECRET) == expected


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        (" Alice@Example.COM ", "alice@example.com"),
        ("STRASSE@example.de", "strasse@example.de"),
        ("straße@example.de", "strasse@example.de"),  # casefold, not lower
        ("\uff41\uff4c\uff49\uff43\uff45@example.com", "alice@example.com"),  # NFKC folds full-width letters
        ("alice+news@example.com", "alice+news@example.com"),  # tags are kept: distinct mailboxes
    ],
)
def test_normalisation(raw: str, normalised: str) -> None:
    assert normalise_identifier(raw) == normalised


def test_lookup_rejects_short_secret_and_empty_identifier() -> None:
    with pytest.raises(ValueError):
        lookup_key("alice@example.com", secret=b"short")
    with pytest.raises(ValueError):
        lookup_key("   ", secret=SECRET)


def test_pseudonyms_are_random_and_never_shared() -> None:
    pseudonyms = [new_pseudonym() for _ in range(2000)]
    assert len(set(pseudonyms)) == len(pseudonyms)
    assert all(re.fullmatch(r"psn_[a-z2-7]{26}", pseudonym) for pseudonym in pseudonyms)
    # 128 random bits: character usage over many pseudonyms covers the whole base32 alphabet.
    assert set("".join(p[4:] for p in pseudonyms)) >= set("abcdefghijklmnopqrstuvwxyz234567")


def test_pseudonym_does_not_encode_the_lookup_key() -> None:
    pseudonym = new_pseudonym()
    lookup = lookup_key("alice@example.com", secret=SECRET)
    assert lookup.hex() not in pseudonym
    assert base64.b32encode(lookup).decode().lower().rstrip("=")[:26] != pseudonym[4:]


def test_key_ids_are_random() -> None:
    ids = {new_key_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"dk_[a-z2-7]{26}", key_id) for key_id in ids)


# --- periods and data keys ---------------------------------------------------------------------------


def test_key_period_uses_utc_month_and_year() -> None:
    late_evening_west = datetime(2026, 11, 30, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert key_period(late_evening_west) == "2026-12"
    assert key_period(datetime(2026, 11, 5, tzinfo=UTC)) == "2026-11"
    assert (
        key_period(datetime(2026, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-3))), granularity="year")
        == "2027"
    )
    with pytest.raises(ValueError):
        key_period(datetime(2026, 11, 5))


@pytest.mark.parametrize(
    "moment", [datetime(2024, 2, 29, 12, tzinfo=UTC), datetime(2026, 12, 31, 23, 59, tzinfo=UTC)]
)
@pytest.mark.parametrize("granularity", ["month", "year"])
def test_period_bounds_contain_the_moment_that_produced_the_period(
    moment: datetime, granularity: PeriodGranularity
) -> None:
    period = key_period(moment, granularity=granularity)
    start, end = period_bounds(period)
    assert start <= moment < end
    assert key_period(start, granularity=granularity) == period
    assert key_period(end - timedelta(microseconds=1), granularity=granularity) == period
    assert key_period(end, granularity=granularity) != period


@pytest.mark.parametrize("bad", ["2026-13", "2026-00", "26-11", "+026", "2026-1", "2026/11", ""])
def test_period_bounds_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        period_bounds(bad)


def test_data_keys_are_32_random_bytes() -> None:
    keys = {new_data_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(key) == 32 for key in keys)


def test_aad_fields_cannot_be_shifted_into_each_other() -> None:
    assert data_key_aad(pseudonym="psn_a", period="2026-11", key_id="dk_1") != data_key_aad(
        pseudonym="psn_a2", period="026-11", key_id="dk_1"
    )


# --- wrapping ----------------------------------------------------------------------------------------


def _aad(pseudonym: str = "psn_alice", period: str = "2026-11", key_id: str = "dk_1") -> bytes:
    return data_key_aad(pseudonym=pseudonym, period=period, key_id=key_id)


def test_wrap_unwrap_round_trip() -> None:
    kek, data_key = new_kek(), new_data_key()
    wrapped = wrap_key(data_key, kek=kek, kek_id="kek_a", aad=_aad())
    assert wrapped.kek_id == "kek_a"
    assert len(wrapped.nonce) == 12
    assert data_key not in wrapped.ciphertext
    assert unwrap_key(wrapped, keks={"kek_a": kek}, aad=_aad()) == data_key


def test_two_wraps_of_one_key_use_fresh_nonces() -> None:
    kek, data_key = new_kek(), new_data_key()
    first = wrap_key(data_key, kek=kek, kek_id="kek_a", aad=_aad())
    second = wrap_key(data_key, kek=kek, kek_id="kek_a", aad=_aad())
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


@pytest.mark.parametrize(
    "other_aad",
    [_aad(pseudonym="psn_bob"), _aad(period="2026-12"), _aad(key_id="dk_2"), b""],
    ids=["other-subject", "other-period", "other-key-id", "empty"],
)
def test_unwrap_fails_when_aad_does_not_match(other_aad: bytes) -> None:
    kek = new_kek()
    wrapped = wrap_key(new_data_key(), kek=kek, kek_id="kek_a", aad=_aad())
    with pytest.raises(KeyUnwrapError) as caught:
        unwrap_key(wrapped, keks={"kek_a": kek}, aad=other_aad)
    assert caught.value.reason == "KEY_UNWRAP_FAILED"


def test_wrapped_key_swapped_onto_another_subject_does_not_unwrap() -> None:
    keyring = Keyring.generate()
    alice_aad, bob_aad = _aad(pseudonym="psn_alice"), _aad(pseudonym="psn_bob")
    alice_wrapped = keyring.wrap(new_data_key(), aad=alice_aad)
    keyring.wrap(new_data_key(), aad=bob_aad)
    # An attacker with database access copies Alice's wrapped key onto Bob's row.
    with pytest.raises(KeyUnwrapError):
        keyring.unwrap(alice_wrapped, aad=bob_aad)


def test_unwrap_fails_on_tampering_unknown_or_wrong_kek() -> None:
    kek = new_kek()
    wrapped = wrap_key(new_data_key(), kek=kek, kek_id="kek_a", aad=_aad())
    flipped = bytes([wrapped.ciphertext[0] ^ 1]) + wrapped.ciphertext[1:]
    with pytest.raises(KeyUnwrapError):
        unwrap_key(
            WrappedKey(kek_id="kek_a", nonce=wrapped.nonce, ciphertext=flipped),
            keks={"kek_a": kek},
            aad=_aad(),
        )
    with pytest.raises(KeyUnwrapError):
        unwrap_key(wrapped, keks={"kek_b": kek}, aad=_aad())
    with pytest.raises(KeyUnwrapError):
        unwrap_key(wrapped, keks={"kek_a": new_kek()}, aad=_aad())


def test_wrap_rejects_wrong_key_sizes() -> None:
    with pytest.raises(ValueError):
        wrap_key(new_data_key(), kek=b"x" * 16, kek_id="kek_a", aad=b"")
    with pytest.raises(ValueError):
        wrap_key(b"x" * 16, kek=new_kek(), kek_id="kek_a", aad=b"")


# --- rotation ----------------------------------------------------------------------------------------


def test_rotation_rewraps_every_key_and_the_old_kek_is_no_longer_needed() -> None:
    old_keyring = Keyring.generate()
    old_id = old_keyring.active_id
    stored = []
    for index in range(40):
        aad = _aad(pseudonym=f"psn_{index}", period=f"2026-{index % 12 + 1:02d}", key_id=f"dk_{index}")
        data_key = new_data_key()
        stored.append((aad, data_key, old_keyring.wrap(data_key, aad=aad)))

    rotating = old_keyring.with_new_active()
    assert rotating.active_id != old_id
    rewrapped = [(aad, data_key, rotating.rewrap(wrapped, aad=aad)) for aad, data_key, wrapped in stored]

    retired = rotating.without(old_id)
    assert old_id not in retired
    for (aad, data_key, before), (_, _, after) in zip(stored, rewrapped, strict=True):
        assert after.kek_id == retired.active_id
        assert after.ciphertext != before.ciphertext
        assert retired.unwrap(after, aad=aad) == data_key
        # Keys still under the retired KEK would now be unreadable: rotation really changed them.
        with pytest.raises(KeyUnwrapError):
            retired.unwrap(before, aad=aad)
        with pytest.raises(KeyUnwrapError):
            old_keyring.unwrap(after, aad=aad)


def test_rewrap_function_and_idempotence() -> None:
    old_kek, new_kek_bytes, data_key = new_kek(), new_kek(), new_data_key()
    wrapped = wrap_key(data_key, kek=old_kek, kek_id="kek_old", aad=_aad())
    moved = rewrap(
        wrapped, old_keks={"kek_old": old_kek}, new_kek=new_kek_bytes, new_kek_id="kek_new", aad=_aad()
    )
    assert moved.kek_id == "kek_new"
    assert unwrap_key(moved, keks={"kek_new": new_kek_bytes}, aad=_aad()) == data_key
    # Already rotated: rerunning an interrupted rotation leaves it as is, without needing the old KEK.
    again = rewrap(moved, old_keks={}, new_kek=new_kek_bytes, new_kek_id="kek_new", aad=_aad())
    assert again == moved
    with pytest.raises(KeyUnwrapError):
        rewrap(wrapped, old_keks={}, new_kek=new_kek_bytes, new_kek_id="kek_new", aad=_aad())


# --- keyring -----------------------------------------------------------------------------------------


def test_keyring_json_round_trip_and_repr_hides_keys() -> None:
    keyring = Keyring.generate().with_new_active()
    parsed = Keyring.from_json(keyring.to_json())
    assert parsed.active_id == keyring.active_id
    assert dict(parsed) == dict(keyring)
    for kek in keyring.values():
        assert base64.b64encode(kek).decode() not in repr(keyring)
        assert kek.hex() not in repr(keyring)


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        json.dumps({"keys": {"k": base64.b64encode(b"x" * 32).decode()}}),
        json.dumps({"active": "missing", "keys": {"k": base64.b64encode(b"x" * 32).decode()}}),
        json.dumps({"active": "k", "keys": {"k": base64.b64encode(b"x" * 16).decode()}}),
        json.dumps({"active": "k", "keys": {"k": "!!not base64!!"}}),
        json.dumps({"active": "k", "keys": {}}),
    ],
)
def test_keyring_rejects_malformed_documents(document: str) -> None:
    with pytest.raises(KeyringError) as caught:
        Keyring.from_json(document)
    assert caught.value.reason == "KEYRING_INVALID"


def test_keyring_cannot_drop_active_or_unknown_kek() -> None:
    keyring = Keyring.generate()
    with pytest.raises(KeyringError):
        keyring.without(keyring.active_id)
    with pytest.raises(KeyringError):
        keyring.without("kek_unknown")
    with pytest.raises(KeyringError):
        keyring.with_new_active(kek_id=keyring.active_id)


def test_generate_kek_file_creates_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "var" / "gdpr" / "keyring.json"
    assert generate_kek_file(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    keyring = load_keyring(path)
    assert len(keyring) == 1
    assert generate_kek_file(path) is False
    assert path.read_bytes() == content
    assert [p.name for p in path.parent.iterdir()] == ["keyring.json"]  # no temporary left behind


def test_generate_kek_file_concurrent_starts_agree(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait(timeout=10)
        results.append(generate_kek_file(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(results) == [False] * 7 + [True]
    assert len(load_keyring(path)) == 1


def test_write_keyring_file_replaces_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    generate_kek_file(path)
    rotated = load_keyring(path).with_new_active()
    write_keyring_file(path, rotated)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reloaded = load_keyring(path)
    assert reloaded.active_id == rotated.active_id
    assert len(reloaded) == 2


def test_load_keyring_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyringError):
        load_keyring(tmp_path / "absent.json")
