"""In-process benchmark of the signing domain, next to the raw primitives it is built on.

``run()`` times each operation for ``seconds`` and reports throughput and latency percentiles;
``ratio_to_baseline`` is the operation's throughput as a fraction of its raw primitive's, so the
cost of the ASN.1 / note encoding around the signature shows directly.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from services.evidence.checkpoint import NoteSigner, sign_checkpoint, verify_checkpoint
from services.signing.domain.pki import KeyPurpose, init_pki, load_keyring
from services.signing.domain.tsa import TimeStampAuthority, build_timestamp_request, verify_timestamp_token

_ORIGIN = "bench.awareness.dev/log"


def _measure(operation: Callable[[], object], *, seconds: float) -> tuple[float, list[int]]:
    latencies: list[int] = []
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        before = time.perf_counter_ns()
        operation()
        latencies.append(time.perf_counter_ns() - before)
        if time.perf_counter() >= deadline:
            break
    return len(latencies) / (time.perf_counter() - started), latencies


def _percentile_us(sorted_latencies: list[int], fraction: float) -> float:
    index = min(len(sorted_latencies) - 1, int(fraction * len(sorted_latencies)))
    return sorted_latencies[index] / 1000


def run(*, seconds: float = 3.0) -> list[dict[str, object]]:
    """Time every operation for ``seconds`` each; one row per operation."""
    with tempfile.TemporaryDirectory() as directory:
        init_pki(Path(directory), common_name_prefix="Awareness Bench")
        keyring = load_keyring(Path(directory))
    checkpoint_key = keyring.active(KeyPurpose.CHECKPOINT).ed25519_private_key()
    checkpoint_public_key = checkpoint_key.public_key()
    tsa_key = keyring.active(KeyPurpose.TIMESTAMP).ecdsa_private_key()
    tsa = TimeStampAuthority.from_keyring(keyring)
    signer = NoteSigner(name=_ORIGIN, private_key=checkpoint_key)
    root_hash = hashlib.sha256(b"bench").digest()
    note = sign_checkpoint(origin=_ORIGIN, tree_size=1_000_000, root_hash=root_hash, key=signer).encode()
    data = note.encode()
    request = build_timestamp_request(data=data, nonce=12345)
    token = tsa.respond(request)
    ed25519_signature = checkpoint_key.sign(root_hash)
    ecdsa_signature = tsa_key.sign(root_hash, ec.ECDSA(hashes.SHA256()))
    tsa_public_key = tsa_key.public_key()
    verifiers = [signer.verifier]

    # (operation, callable, baseline operation or None)
    cases: list[tuple[str, Callable[[], object], str | None]] = [
        ("raw_ed25519_sign", lambda: checkpoint_key.sign(root_hash), None),
        ("raw_ed25519_verify", lambda: checkpoint_public_key.verify(ed25519_signature, root_hash), None),
        ("raw_ecdsa_p256_sign", lambda: tsa_key.sign(root_hash, ec.ECDSA(hashes.SHA256())), None),
        (
            "raw_ecdsa_p256_verify",
            lambda: tsa_public_key.verify(ecdsa_signature, root_hash, ec.ECDSA(hashes.SHA256())),
            None,
        ),
        (
            "checkpoint_sign",
            lambda: sign_checkpoint(origin=_ORIGIN, tree_size=1_000_000, root_hash=root_hash, key=signer),
            "raw_ed25519_sign",
        ),
        ("checkpoint_verify", lambda: verify_checkpoint(note, verifier_keys=verifiers), "raw_ed25519_verify"),
        ("timestamp_respond", lambda: tsa.respond(request), "raw_ecdsa_p256_sign"),
        (
            "timestamp_verify",
            lambda: verify_timestamp_token(token, data=data, trusted_roots=[keyring.root_certificate]),
            "raw_ecdsa_p256_verify",
        ),
    ]
    throughput: dict[str, float] = {}
    rows: list[dict[str, object]] = []
    for name, operation, baseline in cases:
        ops_per_second, latencies = _measure(operation, seconds=seconds)
        latencies.sort()
        throughput[name] = ops_per_second
        rows.append(
            {
                "operation": name,
                "ops_per_second": round(ops_per_second, 1),
                "p50_us": round(_percentile_us(latencies, 0.50), 1),
                "p99_us": round(_percentile_us(latencies, 0.99), 1),
                "samples": len(latencies),
                "baseline": baseline,
                "ratio_to_baseline": None
                if baseline is None
                else round(ops_per_second / throughput[baseline], 3),
            }
        )
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    header = f"{'operation':<24}{'ops/s':>12}{'p50 us':>10}{'p99 us':>10}{'samples':>9}  vs baseline"
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = row["ratio_to_baseline"]
        versus = "" if ratio is None else f"{ratio:.3f} x {row['baseline']}"
        lines.append(
            f"{row['operation']!s:<24}{row['ops_per_second']!s:>12}{row['p50_us']!s:>10}"
            f"{row['p99_us']!s:>10}{row['samples']!s:>9}  {versus}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the signing domain in process")
    parser.add_argument("--seconds", type=float, default=3.0, help="time spent on each operation")
    args = parser.parse_args(argv)
    print(format_table(run(seconds=args.seconds)))


if __name__ == "__main__":
    main()
