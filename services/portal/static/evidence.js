// The evidence pages' checks, in the browser (static/verify.js does the cryptography):
//
// - #receipt-form: reads a receipt JSON file the person holds (it is never uploaded), fetches the
//   audit path of its leaf in its checkpoint's tree and the log's keys from the portal
//   (GET <data-proof-url>?leaf=&size=), and checks the receipt's own leaf hash against the
//   receipt's own signed checkpoint note with AwarenessVerify.verifyInclusion.
// - #timestamp-form: hashes a chosen file with WebCrypto SHA-256 into the form's hex field (only the
//   hash is posted) and shows the openssl command that checks the downloaded reply.
// - [data-note-check]: checks a checkpoint note's signatures (AwarenessVerify.parseSignedNote).
//
// Results use verify.js's format: a summary, a <ul> of check-ok / check-fail items, data-verified.
"use strict";

(function () {
  // Loaded again by each page htmx swaps in: the first copy's htmx:load listener binds new pages.
  if (window.AwarenessEvidence) return;

  const MAX_RECEIPT_BYTES = 1 << 20;
  const DECIMAL = /^(?:0|[1-9][0-9]*)$/;
  const SHA256_HEX = /^[0-9a-fA-F]{64}$/;

  // A receipt that cannot be checked: shown as a failed check, never thrown at the page.
  class ReceiptError extends Error {}

  const toHex = (bytes) => Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  const leaves = (n) => `${n} ${n === 1 ? "leaf" : "leaves"}`;
  const reason = (error) => (error instanceof ReceiptError ? error.message : `${error?.name}: ${error?.message}`);

  // proto3 JSON (what the API returns) writes camelCase names and int64 as strings; awareness
  // verify also takes snake_case names and numbers, so this does too.
  function field(object, camel, snake) {
    if (typeof object !== "object" || object === null) return undefined;
    return object[camel] ?? object[snake];
  }

  function whole(value, what) {
    const text = typeof value === "number" ? String(value) : value;
    if (typeof text !== "string" || !DECIMAL.test(text) || !Number.isSafeInteger(Number(text))) {
      throw new ReceiptError(`the receipt's ${what} is not a whole number`);
    }
    return Number(text);
  }

  // A receipt (GET /v1/events/{id}/receipt) or an AppendEvent answer ({"receipt": {...}}).
  function readReceipt(text) {
    let document;
    try {
      document = JSON.parse(text);
    } catch {
      throw new ReceiptError("the file is not JSON");
    }
    const receipt = field(document, "receipt", "receipt") ?? document;
    if (typeof receipt !== "object" || receipt === null || Array.isArray(receipt)) {
      throw new ReceiptError("the file holds no receipt object");
    }
    const eventId = field(receipt, "eventId", "event_id");
    const leafHash = field(receipt, "leafHash", "leaf_hash");
    const state = field(receipt, "state", "state") ?? "unknown";
    const rawIndex = field(receipt, "leafIndex", "leaf_index");
    if (typeof eventId !== "string" || !eventId) throw new ReceiptError("the receipt names no event (eventId)");
    if (rawIndex === undefined) {
      throw new ReceiptError(`the event is not in the tree yet (state ${state}): fetch its receipt again later`);
    }
    if (typeof leafHash !== "string" || !leafHash) throw new ReceiptError("the receipt carries no leafHash");
    const checkpoint = field(receipt, "checkpoint", "checkpoint");
    const note = field(checkpoint, "note", "note");
    if (typeof note !== "string" || !note) {
      throw new ReceiptError(
        `the receipt has no signed checkpoint yet (state ${state}): fetch it again once the event is checkpointed`,
      );
    }
    const leafIndex = whole(rawIndex, "leafIndex");
    const treeSize = whole(field(checkpoint, "treeSize", "tree_size"), "checkpoint treeSize");
    if (leafIndex >= treeSize) {
      throw new ReceiptError(`leaf ${leafIndex} is outside the checkpoint's tree of ${leaves(treeSize)}`);
    }
    return { eventId, leafIndex, leafHash, treeSize, note };
  }

  async function fetchProof(url, receipt) {
    const query = new URLSearchParams({ leaf: String(receipt.leafIndex), size: String(receipt.treeSize) });
    const response = await fetch(`${url}?${query}`, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    const type = response.headers.get("content-type") || "";
    if (!type.startsWith("application/json")) {
      throw new ReceiptError(`the portal gave no proof (HTTP ${response.status}); is your session still open?`);
    }
    const body = await response.json();
    if (!response.ok) {
      const details = (body.violations || []).map((item) => `${item.field}: ${item.description}`).join("; ");
      throw new ReceiptError(`the portal gave no proof: ${body.error}${details ? ` (${details})` : ""}`);
    }
    return body;
  }

  async function checkReceipt(file, proofUrl) {
    if (file.size > MAX_RECEIPT_BYTES) throw new ReceiptError("the file is too large to be a receipt");
    const receipt = readReceipt(await file.text());
    const read = {
      ok: true,
      text: `Receipt of event ${receipt.eventId} read: leaf ${receipt.leafIndex}, first covered by the checkpoint of ${leaves(receipt.treeSize)}`,
    };
    const proof = await fetchProof(proofUrl, receipt);
    // The leaf hash and the note are the receipt's: the portal supplies only the path and the keys.
    const result = await window.AwarenessVerify.verifyInclusion({
      kind: "inclusion",
      leafIndex: receipt.leafIndex,
      leafHash: receipt.leafHash,
      treeSize: receipt.treeSize,
      proof: proof.proof,
      note: receipt.note,
      verifierKeys: proof.verifierKeys,
    });
    return { ok: result.ok, checks: [read, ...result.checks] };
  }

  // verify.js draws the result; the target starts hidden until there is one.
  function render(target, result, passed) {
    window.AwarenessVerify.render(target, result, passed);
    target.hidden = false;
  }

  const failed = (error) => ({ ok: false, checks: [{ ok: false, text: `Error: ${reason(error)}` }] });

  function bindReceiptForm(form) {
    const input = form.querySelector("input[type=file]");
    const target = document.getElementById("receipt-result");
    if (!input || !target) return;
    form.hidden = false;
    let running = 0;
    async function run() {
      const file = input.files?.[0];
      if (!file) return;
      const mine = ++running;
      target.hidden = false;
      delete target.dataset.verified;
      target.replaceChildren(Object.assign(document.createElement("p"), { textContent: "Checking…" }));
      let result;
      try {
        if (!window.AwarenessVerify) throw new ReceiptError("the verifier (verify.js) did not load");
        result = await checkReceipt(file, form.dataset.proofUrl);
      } catch (error) {
        result = failed(error);
      }
      if (mine === running) render(target, result);
    }
    input.addEventListener("change", run);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      run();
    });
  }

  // The reply's name: the portal's (services/portal/domain/evidence.py tsr_filename).
  const tsrName = (hex) => `timestamp-${hex.toLowerCase().slice(0, 16)}.tsr`;

  function bindTimestampForm(form) {
    const file = form.querySelector("input[type=file]");
    const digest = form.querySelector("input[name=sha256]");
    const status = document.getElementById("timestamp-status");
    const command = document.getElementById("timestamp-command");
    if (!file || !digest || !status || !command) return;
    form.querySelector(".file-hash").hidden = false;
    const caFile = command.dataset.caFile;

    function showCommand() {
      const hex = digest.value.trim().toLowerCase();
      if (!SHA256_HEX.test(hex)) return;
      command.textContent = `openssl ts -verify -digest ${hex} -in ${tsrName(hex)} -CAfile ${caFile}`;
    }

    file.addEventListener("change", async () => {
      const chosen = file.files?.[0];
      if (!chosen) return;
      digest.value = "";
      status.textContent = `Hashing ${chosen.name} in your browser…`;
      try {
        if (!globalThis.crypto?.subtle) throw new ReceiptError("this page has no WebCrypto (it is not HTTPS)");
        const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", await chosen.arrayBuffer()));
        digest.value = toHex(hash);
        showCommand();
        status.textContent = `SHA-256 of ${chosen.name} computed in your browser. Press “Time-stamp” to send only this hash.`;
      } catch (error) {
        status.textContent = `Could not hash ${chosen.name}: ${reason(error)}`;
      }
    });
    digest.addEventListener("input", showCommand);
    form.addEventListener("submit", () => {
      const hex = digest.value.trim().toLowerCase();
      if (!SHA256_HEX.test(hex)) return;
      showCommand();
      status.textContent = `Your browser saves the reply as ${tsrName(hex)}. Check it with the command below.`;
    });
    showCommand();
  }

  async function checkNote(target) {
    let result;
    try {
      const source = document.getElementById(target.dataset.noteCheck);
      if (source?.type !== "application/json") throw new ReceiptError("the note data is missing");
      const data = JSON.parse(source.textContent);
      if (!window.AwarenessVerify) throw new ReceiptError("the verifier (verify.js) did not load");
      if (!data.verifierKeys?.length) throw new ReceiptError("the log publishes no checkpoint key to check with");
      result = await window.AwarenessVerify.parseSignedNote(data.note, data.verifierKeys);
    } catch (error) {
      result = failed(error);
    }
    render(target, result, "✓ Checked in your browser: the note is a checkpoint signed by the log's key.");
  }

  const bound = new WeakSet();
  function bindAll() {
    const each = (selector, bind) => {
      for (const element of document.querySelectorAll(selector)) {
        if (bound.has(element)) continue;
        bound.add(element);
        bind(element);
      }
    };
    each("#receipt-form", bindReceiptForm);
    each("#timestamp-form", bindTimestampForm);
    each("[data-note-check]", checkNote);
  }

  window.AwarenessEvidence = { readReceipt, checkReceipt, tsrName };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", bindAll);
  else bindAll();
  document.addEventListener("htmx:load", bindAll);
})();
