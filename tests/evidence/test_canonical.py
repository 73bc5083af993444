"""Canonical JSON: RFC 8785 output for the value types the evidence documents use."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from services.evidence import canonical


def test_canonical_json_sorts_by_utf16_code_units_like_rfc8785():
    # U+1F600 is D83D DE00 in UTF-16, which sorts before U+FF21 although its code point is larger.
    assert (
        canonical.canonical_json({"\uff21": "x", "\U0001f600": "y"})
        == '{"\U0001f600":"y","\uff21":"x"}'.encode()
    )


def test_canonical_json_fast_path_equals_the_explicit_jcs_sort():
    import json
    import random

    rng = random.Random(7)
    alphabet = ["a", "Z", "é", "\u00ff", "\ud7ff", "\ue000", "\uff21", "\U0001f600", "0", " "]
    for _ in range(300):
        details = {
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))): "v"
            for _ in range(rng.randint(0, 6))
        }
        document = {"details": details, "subject": "s", "summary": "x", "v": 1}
        explicit = json.dumps(
            canonical._sorted_for_jcs(document), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        assert canonical.canonical_json(document) == explicit


# --- the append path spells its documents directly: they must equal canonical_json's -------------


_names = st.text(
    alphabet=st.sampled_from(["a", "Z", "_", "é", "\ud7ff", "\ue000", "\uff21", "\U0001f600", '"'])
)
_details = st.dictionaries(_names, st.text(max_size=8), max_size=6)


@settings(max_examples=300, deadline=None)
@given(details=_details, data=st.data())
def test_details_members_spell_the_whole_map_and_each_part_as_details_json(
    details: dict[str, str], data: st.DataObject
) -> None:
    part = data.draw(st.sets(st.sampled_from(sorted(details))) if details else st.just(set()))
    members = canonical.details_members(details)
    if members is None:  # a name at or above U+D800: each document is spelled by details_json
        assert max("".join(details)) >= "\ud800"
        return
    assert canonical.members_json(members, details) == canonical.details_json(details)
    assert canonical.members_json(members, part) == canonical.details_json({n: details[n] for n in part})
    document = json.loads(canonical.members_json(members, part))
    assert canonical.canonical_json(document).decode() == canonical.details_json(document)
