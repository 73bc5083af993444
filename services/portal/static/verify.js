// Checks the log's evidence in the browser, so a reader need not trust the server that sent it.
//
// Each element [data-evidence="<id>"] names a <script type="application/json" id="<id>"> holding an
// inclusion or consistency proof and a C2SP signed checkpoint note; the result is written into the
// element as a summary and one list item per check. Only WebCrypto is used (SHA-256 and Ed25519).
// The formats follow services/evidence/checkpoint.py and services/ingest/domain/merkle.py.
"use strict";

(function () {
  const HASH_SIZE = 32;
  const KEY_HASH_SIZE = 4;
  const SIGNATURE_SIZE = 64;
  const MAX_SIGNATURES = 64;
  const MAX_NOTE_CHARS = 1 << 20;
  const EM_DASH = "\u2014";
  const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
  const CONTROL_CHARACTERS = /[\x00-\x09\x0b-\x1f]/;
  const encoder = new TextEncoder();

  // Malformed input: reported as an "Error: …" check rather than thrown at the caller.
  class EvidenceError extends Error {}

  function fromBase64(text, what, size) {
    // atob alone is lenient (missing padding, spaces); the log always writes padded standard base64.
    if (typeof text !== "string" || text === "" || !BASE64.test(text)) {
      throw new EvidenceError(`${what} is not standard base64`);
    }
    const bytes = Uint8Array.from(atob(text), (character) => character.charCodeAt(0));
    if (size !== undefined && bytes.length !== size) {
      throw new EvidenceError(`${what} is ${bytes.length} bytes, not ${size}`);
    }
    return bytes;
  }

  const toHex = (bytes) => Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  const short = (hash) => `${toHex(hash).slice(0, 8)}…`;
  const leaves = (n) => `${n} ${n === 1n ? "leaf" : "leaves"}`;
  const sameBytes = (a, b) => a.length === b.length && a.every((byte, i) => byte === b[i]);
  const concat = (...parts) => Uint8Array.from(parts.flatMap((part) => Array.from(part)));
  const check = (ok, passed, failed) => ({ ok, text: ok ? passed : failed });

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  }

  const nodeHash = (left, right) => sha256(concat([1], left, right));

  // Sizes and indices are BigInt: the bit tricks below would wrap at 2^31 with plain numbers.
  function size(value, what) {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new EvidenceError(`${what} is not a non-negative integer`);
    }
    return BigInt(value);
  }

  function hashList(values, what) {
    if (!Array.isArray(values)) throw new EvidenceError(`${what} is not a list`);
    return values.map((value, i) => fromBase64(value, `${what}[${i}]`, HASH_SIZE));
  }

  // RFC 9162 section 2.1.3.2; returns the root the path leads to, or null if it cannot fit the tree.
  async function rootFromInclusionProof(leafIndex, treeSize, leafHash, proof) {
    if (leafIndex >= treeSize) return null;
    let fn = leafIndex;
    let sn = treeSize - 1n;
    let result = leafHash;
    for (const sibling of proof) {
      if (sn === 0n) return null;
      if (fn & 1n || fn === sn) {
        result = await nodeHash(sibling, result);
        while (fn !== 0n && !(fn & 1n)) [fn, sn] = [fn >> 1n, sn >> 1n];
      } else {
        result = await nodeHash(result, sibling);
      }
      [fn, sn] = [fn >> 1n, sn >> 1n];
    }
    return sn === 0n ? result : null;
  }

  // RFC 9162 section 2.1.4.2, with the merkle.py conventions for size 0 and equal sizes.
  async function consistent(firstSize, secondSize, firstRoot, secondRoot, proof) {
    if (firstSize > secondSize) return false;
    if (firstSize === secondSize) return proof.length === 0 && sameBytes(firstRoot, secondRoot);
    if (firstSize === 0n) return proof.length === 0;
    if (proof.length === 0) return false;
    // When the first tree is a perfect subtree, its root is the path's starting point.
    const path = (firstSize & (firstSize - 1n)) === 0n ? [firstRoot, ...proof] : proof;
    let fn = firstSize - 1n;
    let sn = secondSize - 1n;
    while (fn & 1n) [fn, sn] = [fn >> 1n, sn >> 1n];
    let first = path[0];
    let second = path[0];
    for (const value of path.slice(1)) {
      if (sn === 0n) return false;
      if (fn & 1n || fn === sn) {
        first = await nodeHash(value, first);
        second = await nodeHash(value, second);
        while (fn !== 0n && !(fn & 1n)) [fn, sn] = [fn >> 1n, sn >> 1n];
      } else {
        second = await nodeHash(second, value);
      }
      [fn, sn] = [fn >> 1n, sn >> 1n];
    }
    return sn === 0n && sameBytes(first, firstRoot) && sameBytes(second, secondRoot);
  }

  function checkKeyName(name) {
    if (!name || /[\s+]/.test(name)) throw new EvidenceError(`key name "${name}" is invalid`);
  }

  // "<text>\n<signature lines>": the text ends in a newline and a blank line precedes the signatures.
  function splitNote(note) {
    if (typeof note !== "string") throw new EvidenceError("the note is not text");
    if (note.length > MAX_NOTE_CHARS) throw new EvidenceError("the note is too large");
    if (CONTROL_CHARACTERS.test(note)) throw new EvidenceError("the note contains control characters");
    const separator = note.lastIndexOf("\n\n");
    if (separator < 0) throw new EvidenceError("the note has no blank line before its signatures");
    const text = note.slice(0, separator + 1);
    const block = note.slice(separator + 2);
    if (!block.endsWith("\n")) throw new EvidenceError("the note's signature lines are missing");
    const lines = block.slice(0, -1).split("\n");
    if (lines.length > MAX_SIGNATURES) throw new EvidenceError("the note has too many signatures");
    return { text, signatures: lines.map(parseSignatureLine) };
  }

  // "— <key name> <base64(4-byte key hash || signature)>"
  function parseSignatureLine(line) {
    if (!line.startsWith(`${EM_DASH} `)) {
      throw new EvidenceError("a signature line does not start with an em dash and a space");
    }
    const rest = line.slice(2);
    const space = rest.indexOf(" ");
    const [name, encoded] = [rest.slice(0, space), rest.slice(space + 1)];
    if (space < 0 || encoded.includes(" ")) throw new EvidenceError("a signature line is malformed");
    checkKeyName(name);
    const decoded = fromBase64(encoded, `the signature by ${name}`);
    if (decoded.length <= KEY_HASH_SIZE) throw new EvidenceError(`the signature by ${name} is too short`);
    return { name, keyHash: decoded.slice(0, KEY_HASH_SIZE), signature: decoded.slice(KEY_HASH_SIZE) };
  }

  // Checkpoint text: origin, decimal tree size, base64 root hash, then optional extension lines.
  function parseCheckpoint(text) {
    const lines = text.slice(0, -1).split("\n");
    if (lines.length < 3) throw new EvidenceError("the checkpoint has fewer than three lines");
    const [origin, sizeLine, rootLine, ...extensions] = lines;
    if (!origin) throw new EvidenceError("the checkpoint origin is empty");
    if (!/^(?:0|[1-9][0-9]*)$/.test(sizeLine)) throw new EvidenceError("the checkpoint tree size is invalid");
    if (extensions.some((line) => !line)) throw new EvidenceError("a checkpoint extension line is empty");
    const root = fromBase64(rootLine, "the checkpoint root hash");
    return { origin, treeSize: BigInt(sizeLine), root, extensions };
  }

  // "<name>+<8 hex key hash>+<base64(0x01 || public key)>"; the hash is recomputed, never trusted.
  async function parseVerifierKey(vkey) {
    const match = typeof vkey === "string" && /^([^+]*)\+([0-9a-fA-F]{8})\+(.*)$/s.exec(vkey);
    if (!match) throw new EvidenceError("it is not <name>+<hex key hash>+<base64 key>");
    const [, name, hashHex, encoded] = match;
    checkKeyName(name);
    const typed = fromBase64(encoded, "its public key");
    if (typed.length !== 33 || typed[0] !== 1) throw new EvidenceError("it is not an Ed25519 key");
    const keyHash = (await sha256(concat(encoder.encode(`${name}\n`), typed))).slice(0, KEY_HASH_SIZE);
    if (toHex(keyHash) !== hashHex.toLowerCase()) {
      throw new EvidenceError("its key hash does not match its name and public key");
    }
    const key = await crypto.subtle.importKey("raw", typed.slice(1), { name: "Ed25519" }, false, ["verify"]);
    return { name, keyHash, key, label: `${name}+${toHex(keyHash)}` };
  }

  // A rejected key is a failed check: the page was sent a key it cannot use.
  async function trustedKeys(vkeys, checks) {
    if (!Array.isArray(vkeys)) throw new EvidenceError("verifierKeys is not a list");
    const keys = [];
    for (const vkey of vkeys) {
      try {
        keys.push(await parseVerifierKey(vkey));
      } catch (error) {
        const shown = typeof vkey === "string" ? vkey.split("+", 2).join("+") : "?";
        checks.push({ ok: false, text: `Verifier key ${shown} rejected: ${reason(error)}` });
      }
    }
    return keys;
  }

  // As c2sp.org/signed-note says: unknown keys are ignored, a bad signature by a known key fails the
  // note, and a note that no known key signed fails too.
  async function checkSignatures(note, keys, label, checks) {
    const message = encoder.encode(note.text);
    let signedBy = 0;
    for (const { name, keyHash, signature } of note.signatures) {
      const key = keys.find((known) => known.name === name && sameBytes(known.keyHash, keyHash));
      if (!key) continue;
      const valid =
        signature.length === SIGNATURE_SIZE &&
        (await crypto.subtle.verify("Ed25519", key.key, signature, message));
      const passed = `${label} signed by ${key.label} (Ed25519)`;
      checks.push(check(valid, passed, `${label}'s signature by ${key.label} does not verify`));
      if (!valid) return;
      signedBy += 1;
    }
    if (signedBy === 0) checks.push({ ok: false, text: `${label} carries no signature from a trusted key` });
  }

  // Parses a signed checkpoint and checks its signatures (optional only for parseSignedNote). The
  // signatures are checked even when the text is not a checkpoint: they cover any note.
  async function readCheckpoint(noteText, vkeys, label, checks, signatureRequired = true) {
    const keys = await trustedKeys(vkeys, checks);
    let note;
    try {
      note = splitNote(noteText);
    } catch (error) {
      checks.push({ ok: false, text: `${label} is malformed: ${reason(error)}` });
      return null;
    }
    const formatAt = checks.length;
    if (signatureRequired || vkeys.length > 0) await checkSignatures(note, keys, label, checks);
    let checkpoint;
    try {
      checkpoint = parseCheckpoint(note.text);
    } catch (error) {
      checks.splice(formatAt, 0, { ok: false, text: `${label} is not a checkpoint: ${reason(error)}` });
      return null;
    }
    const { origin, treeSize, root } = checkpoint;
    const described = `${origin}, ${leaves(treeSize)}, root ${short(root)}`;
    checks.splice(formatAt, 0, { ok: true, text: `${label} is well-formed: ${described}` });
    return checkpoint;
  }

  function requireObject(evidence) {
    const isObject = typeof evidence === "object" && evidence !== null;
    if (!isObject) throw new EvidenceError("the evidence is not an object");
  }

  function sizeCheck(label, checkpointSize, proofSize) {
    return check(
      checkpointSize === proofSize,
      `${label} covers the proof's tree of ${leaves(proofSize)}`,
      `${label} is for a tree of ${leaves(checkpointSize)}, but the proof is for ${leaves(proofSize)}`,
    );
  }

  async function verifyInclusion(evidence) {
    return run(async (checks) => {
      requireObject(evidence);
      const leafIndex = size(evidence.leafIndex, "leafIndex");
      const treeSize = size(evidence.treeSize, "treeSize");
      const leafHash = fromBase64(evidence.leafHash, "leafHash", HASH_SIZE);
      const proof = hashList(evidence.proof, "proof");
      const checkpoint = await readCheckpoint(evidence.note, evidence.verifierKeys, "Checkpoint", checks);
      const root = await rootFromInclusionProof(leafIndex, treeSize, leafHash, proof);
      // The path check passes only when the path ends at the checkpoint's root: that is the claim.
      const [path, tree] = [`Leaf ${leafIndex}'s audit path`, `(tree of ${leaves(treeSize)})`];
      if (root === null) {
        checks.unshift({ ok: false, text: `${path} does not fit a tree of ${leaves(treeSize)}` });
      } else if (checkpoint === null) {
        checks.unshift({ ok: false, text: `${path} leads to root ${short(root)} ${tree}: no checkpoint` });
      } else {
        const reached = `${path} leads to root ${short(root)}`;
        const other = `, not the checkpoint root ${short(checkpoint.root)}`;
        const matches = sameBytes(root, checkpoint.root);
        checks.unshift(check(matches, `${reached} ${tree}`, `${reached}${other} ${tree}`));
        checks.push(sizeCheck("Checkpoint", checkpoint.treeSize, treeSize));
      }
    });
  }

  async function verifyConsistency(evidence) {
    return run(async (checks) => {
      requireObject(evidence);
      const firstSize = size(evidence.firstSize, "firstSize");
      const secondSize = size(evidence.secondSize, "secondSize");
      const firstRoot = fromBase64(evidence.firstRoot, "firstRoot", HASH_SIZE);
      const proof = hashList(evidence.proof, "proof");
      const keys = evidence.verifierKeys;
      const second = await readCheckpoint(evidence.note, keys, "Newer checkpoint", checks);
      if (second !== null) {
        const sameSize = second.treeSize === secondSize;
        checks.push(sizeCheck("Newer checkpoint", second.treeSize, secondSize));
        const ok = sameSize && (await consistent(firstSize, secondSize, firstRoot, second.root, proof));
        const trees =
          `the tree of ${leaves(secondSize)} (root ${short(second.root)}) ` +
          `extends the tree of ${leaves(firstSize)} (root ${short(firstRoot)})`;
        const [shows, fails] = ["Consistency proof shows", "Consistency proof does not show that"];
        checks.unshift(check(ok, `${shows} ${trees}`, `${fails} ${trees}`));
      }
      // The older checkpoint is optional; when given, it must be the tree the proof starts from.
      if (evidence.firstNote !== undefined && evidence.firstNote !== null) {
        const first = await readCheckpoint(evidence.firstNote, keys, "Older checkpoint", checks);
        if (first !== null) {
          const claimed = `the proof's tree of ${leaves(firstSize)} (root ${short(firstRoot)})`;
          const actual = `(${leaves(first.treeSize)}, root ${short(first.root)})`;
          const same = first.treeSize === firstSize && sameBytes(first.root, firstRoot);
          const [is, isNot] = [`is ${claimed}`, `${actual} is not ${claimed}`];
          checks.push(check(same, `Older checkpoint ${is}`, `Older checkpoint ${isNot}`));
        }
      }
    });
  }

  // Parses a signed checkpoint note; with verifier keys, also checks its signatures. The checkpoint
  // comes back in plain JSON types: the tree size as a number, the root hash in base64.
  async function parseSignedNote(note, verifierKeys = []) {
    let parsed = null;
    const result = await run(async (checks) => {
      parsed = await readCheckpoint(note, verifierKeys, "Checkpoint", checks, false);
    });
    const checkpoint = parsed && {
      origin: parsed.origin,
      treeSize: Number(parsed.treeSize),
      root: btoa(String.fromCharCode(...parsed.root)),
      extensions: parsed.extensions,
    };
    return { ...result, checkpoint };
  }

  function reason(error) {
    if (error instanceof EvidenceError) return error.message;
    if (error?.name === "NotSupportedError") return "this browser cannot check Ed25519 signatures";
    return `${error?.name}: ${error?.message}`;
  }

  // Runs the checks; malformed input becomes a failed "Error: …" check, and no check means no pass.
  async function run(body) {
    const checks = [];
    try {
      if (!globalThis.crypto?.subtle) {
        throw new EvidenceError("this page is not a secure (HTTPS) context, so the browser has no WebCrypto");
      }
      await body(checks);
    } catch (error) {
      checks.push({ ok: false, text: `Error: ${reason(error)}` });
    }
    return { ok: checks.length > 0 && checks.every((each) => each.ok), checks };
  }

  // Text and classes only: the CSP forbids inline styles, and textContent keeps any input inert.
  // `passed` replaces the summary of a result that holds (pages that check something narrower).
  function render(target, result, passed) {
    const summary = document.createElement("p");
    summary.className = "evidence-summary";
    summary.textContent = result.ok
      ? passed || "✓ Verified in your browser: every check below passed."
      : "✗ Not verified: at least one check below failed.";
    const list = document.createElement("ul");
    for (const { ok, text } of result.checks) {
      const item = document.createElement("li");
      item.className = ok ? "check-ok" : "check-fail";
      item.textContent = `${ok ? "✓" : "✗"} ${text}`;
      list.append(item);
    }
    target.replaceChildren(summary, list);
    target.classList.remove("evidence-ok", "evidence-fail");
    target.classList.add(result.ok ? "evidence-ok" : "evidence-fail");
    target.dataset.verified = String(result.ok);
  }

  async function verifyElement(target) {
    let result;
    try {
      const source = document.getElementById(target.dataset.evidence);
      if (source?.type !== "application/json") throw new EvidenceError("the evidence data is missing");
      const evidence = JSON.parse(source.textContent);
      if (evidence?.kind === "inclusion") result = await verifyInclusion(evidence);
      else if (evidence?.kind === "consistency") result = await verifyConsistency(evidence);
      else throw new EvidenceError("the evidence is of an unknown kind");
    } catch (error) {
      result = { ok: false, checks: [{ ok: false, text: `Error: ${reason(error)}` }] };
    }
    render(target, result);
  }

  // Each element is verified once, even when htmx brings new content in later.
  const started = new WeakSet();
  function verifyAll() {
    for (const target of document.querySelectorAll("[data-evidence]")) {
      if (started.has(target)) continue;
      started.add(target);
      if (!target.hasAttribute("aria-live")) target.setAttribute("aria-live", "polite");
      verifyElement(target);
    }
  }

  window.AwarenessVerify = { verifyInclusion, verifyConsistency, parseSignedNote, render };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", verifyAll);
  else verifyAll();
  document.addEventListener("htmx:load", verifyAll);
})();
