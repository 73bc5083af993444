"""An independent RFC 6962 reference, written from the RFC text and sharing no code with merkle.py.

Section 2.1 defines, for a list D[n] of n inputs and k the largest power of two smaller than n:
  MTH({}) = SHA-256()
  MTH({d(0)}) = SHA-256(0x00 || d(0))
  MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
Section 2.1.1 (audit paths):
  PATH(0, {d(0)}) = {}
  PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])        for m < k
  PATH(m, D[n]) = PATH(m - k, D[k:n]) : MTH(D[0:k])    for m >= k
Section 2.1.2 (consistency proofs):
  PROOF(m, D[n]) = SUBPROOF(m, D[n], true)
  SUBPROOF(m, D[m], true) = {}
  SUBPROOF(m, D[m], false) = {MTH(D[m])}
  SUBPROOF(m, D[n], b) = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])        for m <= k
  SUBPROOF(m, D[n], b) = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  for m > k

The verifiers below walk these recursions backwards, not the RFC 9162 bit loops production uses,
so a misunderstanding shared by both is unlikely.
"""

from __future__ import annotations

import hashlib


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(entries: list[bytes]) -> bytes:
    n = len(entries)
    if n == 0:
        return _sha256(b"")
    if n == 1:
        return _sha256(b"\x00" + entries[0])
    k = _k(n)
    return _sha256(b"\x01" + mth(entries[:k]) + mth(entries[k:]))


def path(m: int, entries: list[bytes]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*path(m, entries[:k]), mth(entries[k:])]
    return [*path(m - k, entries[k:]), mth(entries[:k])]


def proof(m: int, entries: list[bytes]) -> list[bytes]:
    return subproof(m, entries, True)


def subproof(m: int, entries: list[bytes], b: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if b else [mth(entries)]
    k = _k(n)
    if m <= k:
        return [*subproof(m, entries[:k], b), mth(entries[k:])]
    return [*subproof(m - k, entries[k:], False), mth(entries[:k])]


def _node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right)


def root_from_path(m: int, n: int, leaf_hash: bytes, audit_path: list[bytes]) -> bytes | None:
    """Walk the PATH recursion backwards: its last element is the sibling at the top split."""
    if n == 1:
        return leaf_hash if not audit_path else None
    if not audit_path:
        return None
    k = _k(n)
    *rest, sibling = audit_path
    if m < k:
        below = root_from_path(m, k, leaf_hash, rest)
        return None if below is None else _node(below, sibling)
    below = root_from_path(m - k, n - k, leaf_hash, rest)
    return None if below is None else _node(sibling, below)


def verify_path(*, leaf_hash: bytes, m: int, n: int, audit_path: list[bytes], root: bytes) -> bool:
    if not 0 <= m < n:
        return False
    return root_from_path(m, n, leaf_hash, list(audit_path)) == root


def _roots_from_subproof(
    m: int, n: int, b: bool, consistency: list[bytes], old_root: bytes
) -> tuple[bytes, bytes] | None:
    """(hash of the old part, hash of the new part) of this subtree, walking SUBPROOF backwards."""
    if m == n:
        if b:
            # The whole old tree: the verifier already holds its root, so the proof omits it.
            return (old_root, old_root) if not consistency else None
        return (consistency[0], consistency[0]) if len(consistency) == 1 else None
    if not consistency:
        return None
    k = _k(n)
    *rest, last = consistency
    if m <= k:
        below = _roots_from_subproof(m, k, b, rest, old_root)
        return None if below is None else (below[0], _node(below[1], last))
    below = _roots_from_subproof(m - k, n - k, False, rest, old_root)
    return None if below is None else (_node(last, below[0]), _node(last, below[1]))


def verify_proof(*, m: int, n: int, consistency: list[bytes], old_root: bytes, new_root: bytes) -> bool:
    if not 0 < m < n:
        return m == n and not consistency and old_root == new_root
    roots = _roots_from_subproof(m, n, True, list(consistency), old_root)
    return roots == (old_root, new_root)
