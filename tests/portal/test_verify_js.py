"""services/portal/static/verify.js in a real Chromium, on evidence built by the project's own code.

The page is served from 127.0.0.1 (a secure context, so WebCrypto is there) with the portal's CSP as
a response header, so the script must work without inline script or eval. Proofs come from
services/ingest/domain/merkle.py and checkpoints from services/evidence/checkpoint.py; the last test
checks that the browser and the Python verifiers agree on proofs both valid and tampered.
"""

from __future__ import annotations

import base64
import http.server
import json
import random
import re
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from playwright.sync_api import ConsoleMessage, Locator, Page, expect

from services.evidence.checkpoint import NoteSigner, NoteVerifier, sign_checkpoint, verify_checkpoint
from services.evidence.errors import NoteError
from services.ingest.domain import merkle

VERIFY_JS = Path(__file__).resolve().parents[2] / "services" / "portal" / "static" / "verify.js"
CSP = "default-src 'self'; script-src 'self'"
ORIGIN = "awareness.local/log"
LOG_SIZE = 70
# The Go note package's own example (golang.org/x/mod/sumdb/note), as in tests/evidence.
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_NOTE = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
    "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

Evidence = dict[str, Any]


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def flipped(encoded: str, position: int = 0) -> str:
    raw = bytearray(base64.b64decode(encoded))
    raw[position % len(raw)] ^= 0x01
    return b64(bytes(raw))


@dataclass
class Log:
    """A log of LOG_SIZE leaves in an in-memory node store, and the key that signs its checkpoints."""

    store: merkle.InMemoryNodeStore
    leaf_hashes: list[bytes]
    signer: NoteSigner

    @property
    def vkey(self) -> str:
        return self.signer.verifier.vkey

    def note(self, size: int, *, signer: NoteSigner | None = None) -> str:
        return sign_checkpoint(
            origin=ORIGIN,
            tree_size=size,
            root_hash=merkle.root_hash(size, self.store),
            key=signer or self.signer,
        ).encode()

    def inclusion(self, index: int, size: int) -> Evidence:
        proof = merkle.inclusion_proof(leaf_index=index, tree_size=size, store=self.store)
        return {
            "kind": "inclusion",
            "leafIndex": index,
            "leafHash": b64(self.leaf_hashes[index]),
            "treeSize": size,
            "proof": [b64(node) for node in proof],
            "note": self.note(size),
            "verifierKeys": [self.vkey],
        }

    def consistency(self, first: int, second: int, *, with_first_note: bool = False) -> Evidence:
        proof = merkle.consistency_proof(old_size=first, new_size=second, store=self.store)
        evidence: Evidence = {
            "kind": "consistency",
            "firstSize": first,
            "firstRoot": b64(merkle.root_hash(first, self.store)),
            "secondSize": second,
            "proof": [b64(node) for node in proof],
            "note": self.note(second),
            "verifierKeys": [self.vkey],
        }
        if with_first_note:
            evidence["firstNote"] = self.note(first)
        return evidence


def new_signer() -> NoteSigner:
    return NoteSigner(name=ORIGIN, private_key=ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def log() -> Log:
    store = merkle.InMemoryNodeStore()
    leaf_hashes = [merkle.leaf_hash(f"event {number}".encode()) for number in range(LOG_SIZE)]
    store.put_nodes(merkle.nodes_for_append(tree_size=0, leaf_hashes=leaf_hashes, store=store).nodes)
    return Log(store=store, leaf_hashes=leaf_hashes, signer=new_signer())


class _Handler(http.server.SimpleHTTPRequestHandler):
    timeout = 10  # a stuck connection must not hold a thread forever

    def end_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Site:
    root: Path
    url: str

    def page_with(self, evidence: Sequence[Evidence | str]) -> str:
        """A page holding each evidence (a string is used as the JSON text as is); returns its URL."""
        blocks = []
        for number, item in enumerate(evidence):
            text = item if isinstance(item, str) else json.dumps(item)
            text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            blocks.append(
                f'<script type="application/json" id="e{number}">{text}</script>\n'
                f'<div class="evidence" data-evidence="e{number}">'
                '<p class="evidence-summary">Checking…</p></div>'
            )
        name = f"{uuid.uuid4().hex}.html"
        (self.root / name).write_text(
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>verify.js</title>\n'
            '<script src="verify.js" defer></script></head><body>\n'
            # A canary: the CSP must stop it, or these tests prove nothing about inline script.
            '<script>document.documentElement.dataset.inline = "ran";</script>\n'
            + "\n".join(blocks)
            + "\n</body></html>\n",
            encoding="utf-8",
        )
        return f"{self.url}/{name}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("verify-js")
    shutil.copy(VERIFY_JS, root / "verify.js")
    (root / "favicon.ico").write_bytes(b"")  # or Chromium's request for it logs a 404
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="verify-js-site", daemon=True)
    thread.start()
    try:
        yield Site(root=root, url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def open_evidence(page: Page, site: Site, evidence: Sequence[Evidence | str]) -> list[Locator]:
    """Load a page with the evidence, wait until verify.js has judged each one, return the elements."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "inline script" not in message.text:
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.goto(site.page_with(evidence))
    targets = [page.locator(f'[data-evidence="e{number}"]') for number in range(len(evidence))]
    for target in targets:
        expect(target).to_have_attribute("data-verified", re.compile(r"^(true|false)$"))
    assert page.evaluate("document.documentElement.dataset.inline") is None, "the CSP let inline script run"
    assert problems == []
    return targets


def checks(target: Locator) -> list[tuple[str, str]]:
    """(class, text) of each list item."""
    items = target.locator("li")
    return [(item.get_attribute("class") or "", item.inner_text()) for item in items.all()]


def assert_verified(target: Locator, verified: bool) -> None:
    expect(target).to_have_attribute("data-verified", "true" if verified else "false")
    expect(target).to_have_class(re.compile(r"\bevidence-ok\b" if verified else r"\bevidence-fail\b"))
    expect(target.locator(":scope > p.evidence-summary:first-child")).to_have_count(1)
    items = checks(target)
    assert items, "no checks listed"
    for css_class, text in items:
        assert css_class in ("check-ok", "check-fail")
        assert text.startswith("✓ " if css_class == "check-ok" else "✗ "), text
    assert all(css_class == "check-ok" for css_class, _ in items) == verified, items


def item(target: Locator, starting: str) -> tuple[str, str]:
    """The one check whose text (after its marker) starts with `starting`."""
    found = [(css, text) for css, text in checks(target) if text[2:].startswith(starting)]
    assert len(found) == 1, (starting, checks(target))
    return found[0]


# A tree of 1, last leaves, powers of two, odd sizes, and a leaf in the last, incomplete subtree.
INCLUSION_CASES = [
    (0, 1),
    (1, 2),
    (12, 20),
    (19, 20),
    (0, 16),
    (15, 16),
    (5, 16),
    (0, 13),
    (12, 13),
    (64, 70),
]


def test_valid_inclusion_proofs_verify(page: Page, site: Site, log: Log) -> None:
    targets = open_evidence(page, site, [log.inclusion(index, size) for index, size in INCLUSION_CASES])
    key_label = f"{ORIGIN}+{log.signer.verifier.key_hash.hex()}"
    for (index, size), target in zip(INCLUSION_CASES, targets, strict=True):
        assert_verified(target, True)
        leaves = "leaf" if size == 1 else "leaves"
        path_css, path_text = item(target, f"Leaf {index}'s audit path leads to root ")
        assert path_css == "check-ok" and path_text.endswith(f"(tree of {size} {leaves})")
        root_hex = merkle.root_hash(size, log.store).hex()[:8]
        assert f"root {root_hex}…" in path_text
        assert item(target, "Checkpoint signed by")[1] == f"✓ Checkpoint signed by {key_label} (Ed25519)"
        assert item(target, "Checkpoint is well-formed")[0] == "check-ok"
        assert item(target, "Checkpoint covers")[0] == "check-ok"
    expect(targets[0].locator("p.evidence-summary")).to_contain_text("Verified")


def test_tampered_inclusion_proof_fails_the_path_check(page: Page, site: Site, log: Log) -> None:
    tampered = log.inclusion(12, 20)
    tampered["proof"][2] = flipped(tampered["proof"][2], position=7)
    flipped_leaf = log.inclusion(3, 20)
    flipped_leaf["leafHash"] = flipped(flipped_leaf["leafHash"])
    short = log.inclusion(12, 20)
    short["proof"].pop()
    for target in open_evidence(page, site, [tampered, flipped_leaf, short]):
        assert_verified(target, False)
        assert item(target, "Leaf ")[0] == "check-fail"
        assert item(target, "Checkpoint signed by")[0] == "check-ok"


def test_wrong_verifier_key_fails(page: Page, site: Site, log: Log) -> None:
    stranger = log.inclusion(12, 20)
    stranger["verifierKeys"] = [new_signer().verifier.vkey]  # same name, another key
    no_keys = log.inclusion(12, 20)
    no_keys["verifierKeys"] = []
    signed_by_other = log.inclusion(12, 20)
    signed_by_other["note"] = log.note(20, signer=new_signer())
    for target in open_evidence(page, site, [stranger, no_keys, signed_by_other]):
        assert_verified(target, False)
        assert item(target, "Checkpoint carries no signature from a trusted key")[0] == "check-fail"
        assert item(target, "Leaf 12's audit path")[0] == "check-ok"


def test_forged_checkpoint_fails(page: Page, site: Site, log: Log) -> None:
    forged = log.inclusion(12, 20)
    forged["note"] = forged["note"].replace(f"{ORIGIN}\n", "awareness.local/other\n", 1)
    (target,) = open_evidence(page, site, [forged])
    assert_verified(target, False)
    key_label = f"{ORIGIN}+{log.signer.verifier.key_hash.hex()}"
    expected = f"✗ Checkpoint's signature by {key_label} does not verify"
    assert item(target, "Checkpoint's signature by")[1] == expected
    assert item(target, "Leaf 12's audit path")[0] == "check-ok"


def test_verifier_key_with_a_wrong_hash_is_rejected(page: Page, site: Site, log: Log) -> None:
    evidence = log.inclusion(12, 20)
    name, key_hash, key = log.vkey.split("+", 2)
    evidence["verifierKeys"] = [f"{name}+{int(key_hash, 16) ^ 1:08x}+{key}"]
    (target,) = open_evidence(page, site, [evidence])
    assert_verified(target, False)
    css, text = item(target, "Verifier key")
    assert css == "check-fail" and "key hash does not match" in text


def test_checkpoint_of_another_size_fails(page: Page, site: Site, log: Log) -> None:
    evidence = log.inclusion(12, 20)
    evidence["note"] = log.note(21)
    (target,) = open_evidence(page, site, [evidence])
    assert_verified(target, False)
    assert item(target, "Checkpoint is for a tree of 21 leaves, but the proof is for 20 leaves")
    assert item(target, "Checkpoint signed by")[0] == "check-ok"


CONSISTENCY_CASES = [(1, 2), (3, 7), (4, 8), (8, 8), (0, 5), (13, 70), (64, 70)]


def test_consistency_proofs(page: Page, site: Site, log: Log) -> None:
    valid = [log.consistency(first, second) for first, second in CONSISTENCY_CASES]
    with_first_note = log.consistency(13, 20, with_first_note=True)
    tampered = log.consistency(13, 20)
    tampered["proof"][1] = flipped(tampered["proof"][1], position=30)
    wrong_first_note = log.consistency(13, 20, with_first_note=True)
    wrong_first_note["firstNote"] = log.note(12)
    targets = open_evidence(page, site, [*valid, with_first_note, tampered, wrong_first_note])
    for target in [*targets[: len(valid)], targets[-3]]:
        assert_verified(target, True)
        assert item(target, "Consistency proof shows the tree of")[0] == "check-ok"
        assert item(target, "Newer checkpoint signed by")[0] == "check-ok"
    assert item(targets[-3], "Older checkpoint signed by")[0] == "check-ok"
    assert item(targets[-3], "Older checkpoint is the proof's tree of 13 leaves")[0] == "check-ok"
    assert_verified(targets[-2], False)
    assert item(targets[-2], "Consistency proof does not show")[0] == "check-fail"
    assert_verified(targets[-1], False)
    assert item(targets[-1], "Older checkpoint (12 leaves")[0] == "check-fail"


def test_malformed_evidence_is_an_error(page: Page, site: Site, log: Log) -> None:
    bad_hash = log.inclusion(1, 2)
    bad_hash["leafHash"] = "not base64!"
    unpadded = log.inclusion(1, 2)
    unpadded["proof"][0] = unpadded["proof"][0].rstrip("=")
    bad_note = log.inclusion(1, 2)
    bad_note["note"] = bad_note["note"].replace("\u2014 ", "- ")
    targets = open_evidence(page, site, [bad_hash, unpadded, bad_note, "{not json", '{"kind": "other"}'])
    for target in targets:
        assert_verified(target, False)
    assert item(targets[0], "Error: leafHash is not standard base64")
    assert item(targets[1], "Error: proof[0] is not standard base64")
    assert item(targets[2], "Checkpoint is malformed")
    assert item(targets[3], "Error: SyntaxError")
    assert item(targets[4], "Error: the evidence is of an unknown kind")


def test_without_webcrypto_nothing_is_verified(page: Page, site: Site, log: Log) -> None:
    # What an http:// page (not a secure context) would see.
    page.add_init_script("delete Crypto.prototype.subtle;")
    (target,) = open_evidence(page, site, [log.inclusion(12, 20)])
    assert_verified(target, False)
    assert "not a secure (HTTPS) context" in item(target, "Error:")[1]


def test_api_for_user_chosen_inputs(page: Page, site: Site, log: Log) -> None:
    open_evidence(page, site, [])
    verify = "evidence => window.AwarenessVerify.verifyInclusion(evidence)"
    good = page.evaluate(verify, log.inclusion(30, 33))
    assert good["ok"] is True and all(check["ok"] for check in good["checks"])
    tampered = log.inclusion(30, 33)
    tampered["proof"][0] = flipped(tampered["proof"][0])
    assert page.evaluate(verify, tampered)["ok"] is False
    malformed = page.evaluate(verify, None)
    assert malformed["ok"] is False
    assert malformed["checks"] == [{"ok": False, "text": "Error: the evidence is not an object"}]
    consistency = "evidence => window.AwarenessVerify.verifyConsistency(evidence)"
    assert page.evaluate(consistency, log.consistency(5, 33))["ok"] is True

    parse = "([note, keys]) => window.AwarenessVerify.parseSignedNote(note, keys)"
    parsed = page.evaluate(parse, [log.note(33), []])
    assert parsed["ok"] is True
    assert parsed["checkpoint"]["origin"] == ORIGIN and parsed["checkpoint"]["treeSize"] == 33
    # Go's known-answer note: the signature verifies, but its text is no checkpoint.
    go = page.evaluate(parse, [GO_NOTE, [GO_VERIFIER_KEY]])
    assert go["ok"] is False and go["checkpoint"] is None
    assert {"ok": True, "text": "Checkpoint signed by PeterNeumann+c74f20a3 (Ed25519)"} in go["checks"]


def python_inclusion(evidence: Evidence, verifier: NoteVerifier) -> bool:
    try:
        body = verify_checkpoint(evidence["note"], verifier_keys=[verifier])
    except NoteError:
        return False
    return body.tree_size == evidence["treeSize"] and merkle.verify_inclusion(
        leaf_hash=base64.b64decode(evidence["leafHash"]),
        leaf_index=evidence["leafIndex"],
        tree_size=evidence["treeSize"],
        proof=[base64.b64decode(node) for node in evidence["proof"]],
        root=body.root_hash,
    )


def python_consistency(evidence: Evidence, verifier: NoteVerifier) -> bool:
    try:
        body = verify_checkpoint(evidence["note"], verifier_keys=[verifier])
    except NoteError:
        return False
    return body.tree_size == evidence["secondSize"] and merkle.verify_consistency(
        old_size=evidence["firstSize"],
        new_size=evidence["secondSize"],
        old_root=base64.b64decode(evidence["firstRoot"]),
        new_root=body.root_hash,
        proof=[base64.b64decode(node) for node in evidence["proof"]],
    )


def random_inclusion(log: Log, chance: random.Random) -> Evidence:
    size = chance.randint(1, LOG_SIZE)
    evidence = log.inclusion(chance.randrange(size), size)
    match chance.choice(["valid", "flip", "index", "drop", "extra", "leaf", "note", "key", "forged"]):
        case "flip" if evidence["proof"]:
            position = chance.randrange(len(evidence["proof"]))
            evidence["proof"][position] = flipped(evidence["proof"][position], chance.randrange(32))
        case "index" if size > 1:
            evidence["leafIndex"] = (evidence["leafIndex"] + 1) % size
        case "drop" if evidence["proof"]:
            evidence["proof"].pop()
        case "extra":
            evidence["proof"].append(b64(log.leaf_hashes[0]))
        case "leaf":
            evidence["leafHash"] = b64(log.leaf_hashes[(evidence["leafIndex"] + 1) % LOG_SIZE])
        case "note" if size < LOG_SIZE:
            evidence["note"] = log.note(size + 1)
        case "key":
            evidence["note"] = log.note(size, signer=new_signer())
        case "forged":
            evidence["note"] = evidence["note"].replace(f"\n{size}\n", f"\n{size + 1}\n", 1)
    return evidence


def random_consistency(log: Log, chance: random.Random) -> Evidence:
    second = chance.randint(1, LOG_SIZE)
    first = chance.randint(0, second)
    evidence = log.consistency(first, second)
    match chance.choice(["valid", "flip", "drop", "first size", "first root", "second size"]):
        case "flip" if evidence["proof"]:
            position = chance.randrange(len(evidence["proof"]))
            evidence["proof"][position] = flipped(evidence["proof"][position], chance.randrange(32))
        case "drop" if evidence["proof"]:
            evidence["proof"].pop()
        case "first size" if 1 < first < second:
            evidence["firstSize"] = first - 1
        case "first root" if first > 0:
            evidence["firstRoot"] = b64(merkle.root_hash(first - 1, log.store))
        case "second size" if second < LOG_SIZE:
            evidence["secondSize"] = second + 1
    return evidence


def test_browser_and_python_agree(page: Page, site: Site, log: Log) -> None:
    chance = random.Random(20_260_512)
    inclusions = [random_inclusion(log, chance) for _ in range(30)]
    consistencies = [random_consistency(log, chance) for _ in range(30)]
    open_evidence(page, site, [])
    browser_inclusions, browser_consistencies = page.evaluate(
        """async ([inclusions, consistencies]) => {
            const verify = window.AwarenessVerify;
            const ok = (result) => result.ok;
            return [
                await Promise.all(inclusions.map((e) => verify.verifyInclusion(e).then(ok))),
                await Promise.all(consistencies.map((e) => verify.verifyConsistency(e).then(ok))),
            ];
        }""",
        [inclusions, consistencies],
    )
    verifier = log.signer.verifier
    python_inclusions = [python_inclusion(evidence, verifier) for evidence in inclusions]
    python_consistencies = [python_consistency(evidence, verifier) for evidence in consistencies]
    assert browser_inclusions == python_inclusions
    assert browser_consistencies == python_consistencies
    # Both outcomes occur, or the comparison would be hollow.
    assert set(python_inclusions) == {True, False} and set(python_consistencies) == {True, False}
