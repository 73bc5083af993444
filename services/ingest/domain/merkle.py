"""RFC 6962 Merkle tree over the event log, shaped for a database-backed node store.

Hashing (RFC 6962 section 2.1, SHA-256): leaf_hash(d) = SHA256(0x00 || d), node_hash(l, r) =
SHA256(0x01 || l || r), and the root of the empty tree is SHA256("").

Storage: only the hashes of complete (perfect) subtrees are stored, keyed by (level, index). Node
(level, i) covers leaves [i * 2**level, (i + 1) * 2**level); node (0, i) is the hash of leaf i. Every
range the RFC recursion visits starts on a multiple of a power of two at least its width, so any
such range splits into at most log2(n) perfect pieces: a root, an inclusion proof or a consistency
proof needs O(log n) stored nodes, fetched in a single batched `NodeStore.get_nodes` call.

Verification follows RFC 9162 sections 2.1.3.2 (inclusion) and 2.1.4.2 (consistency) and needs no
store: it is what `awareness verify` and clients run offline.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.ingest.domain.errors import InvalidProofRequestError, MissingTreeNodeError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"

NodeKey = tuple[int, int]
"""(level, index) of a perfect subtree: it covers leaves [index * 2**level, (index + 1) * 2**level)."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256 of 0x00 followed by the leaf data."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256 of 0x01, the left hash and the right hash."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def perfect_subtree_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a perfect subtree (a power-of-two number of leaves), from its leaf hashes."""
    if not leaf_hashes or len(leaf_hashes) & (len(leaf_hashes) - 1):
        raise ValueError(f"a perfect subtree has a power-of-two number of leaves, got {len(leaf_hashes)}")
    level = list(leaf_hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def empty_root() -> bytes:
    """Root hash of the tree with no leaves: SHA-256 of the empty string."""
    return hashlib.sha256(b"").digest()


class NodeStore(Protocol):
    """Read side of the node table. Missing keys are simply absent from the returned mapping."""

    def get_nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]: ...


class InMemoryNodeStore:
    """A NodeStore held in a dict, for tests and the offline tools. Nodes are write-once."""

    def __init__(self) -> None:
        self._nodes: dict[NodeKey, bytes] = {}

    def get_nodes(self, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
        return {key: self._nodes[key] for key in keys if key in self._nodes}

    def put_nodes(self, nodes: Mapping[NodeKey, bytes]) -> None:
        # An append-only tree never rewrites a node; a different value means a bug upstream.
        for key, value in nodes.items():
            existing = self._nodes.get(key)
            if existing is not None and existing != value:
                raise ValueError(f"node {key} already stored with a different hash")
        self._nodes.update(nodes)

    def __len__(self) -> int:
        return len(self._nodes)


@dataclass(frozen=True, slots=True)
class AppendPlan:
    """What appending a batch of leaves changes: the nodes to insert, and the new size and root."""

    nodes: dict[NodeKey, bytes]
    tree_size: int
    root: bytes


def nodes_for_append(*, tree_size: int, leaf_hashes: Sequence[bytes], store: NodeStore) -> AppendPlan:
    """Nodes to insert when `leaf_hashes` are appended to a tree of `tree_size` leaves.

    Reads only the right frontier of the current tree (one node per set bit of tree_size, one
    batched call) and returns every new leaf node (0, n) and every parent the batch completes.
    """
    if tree_size < 0:
        raise InvalidProofRequestError(f"tree size must not be negative, got {tree_size}")
    for position, value in enumerate(leaf_hashes):
        _require_hash(value, what=f"leaf hash #{position}")
    # The frontier: the perfect subtrees that make up the current tree, largest (leftmost) first.
    frontier_keys = _perfect_pieces(0, tree_size)
    known = _fetch(store, frontier_keys)
    new_nodes: dict[NodeKey, bytes] = {}
    size = tree_size
    for value in leaf_hashes:
        level, index, current = 0, size, value
        new_nodes[(level, index)] = current
        # A node with an odd index completes its parent together with its left sibling.
        while index & 1:
            sibling_key = (level, index - 1)
            sibling = new_nodes.get(sibling_key)
            if sibling is None:
                sibling = known[sibling_key]
            current = node_hash(sibling, current)
            level, index = level + 1, index >> 1
            new_nodes[(level, index)] = current
        size += 1
    # Every perfect piece of the new tree is either untouched old frontier or freshly built.
    everything = known | new_nodes
    root = _fold([everything[key] for key in _perfect_pieces(0, size)]) if size else empty_root()
    return AppendPlan(nodes=new_nodes, tree_size=size, root=root)


def root_hash(tree_size: int, store: NodeStore) -> bytes:
    """Root hash of the first `tree_size` leaves (any historical size, not only the current one)."""
    if tree_size < 0:
        raise InvalidProofRequestError(f"tree size must not be negative, got {tree_size}")
    if tree_size == 0:
        return empty_root()
    return _range_hashes([(0, tree_size)], store)[0]


def inclusion_proof(*, leaf_index: int, tree_size: int, store: NodeStore) -> list[bytes]:
    """RFC 6962 PATH(leaf_index, D[0:tree_size]): sibling hashes from the leaf up to the root."""
    if not 0 <= leaf_index < tree_size:
        raise InvalidProofRequestError(f"leaf index {leaf_index} is outside a tree of size {tree_size}")
    return _range_hashes(_inclusion_ranges(leaf_index, tree_size), store)


def consistency_proof(*, old_size: int, new_size: int, store: NodeStore) -> list[bytes]:
    """RFC 6962 PROOF(old_size, D[0:new_size]); empty when old_size is 0 or equals new_size."""
    if not 0 <= old_size <= new_size:
        raise InvalidProofRequestError(f"cannot prove consistency from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    return _range_hashes(_consistency_ranges(old_size, new_size), store)


def verify_inclusion(
    *, leaf_hash: bytes, leaf_index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: does `proof` show the leaf at `leaf_index` is in the tree `root`?"""
    if not 0 <= leaf_index < tree_size or not _all_hashes([leaf_hash, root, *proof]):
        return False
    fn, sn = leaf_index, tree_size - 1
    result = leaf_hash
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            result = node_hash(result, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(result, root)


def verify_consistency(
    *, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: does `proof` show the tree `new_root` extends the tree `old_root`?

    Sizes 0 and equal sizes follow the usual convention (transparency-dev): the proof must be empty,
    and for equal sizes the roots must match.
    """
    if not 0 <= old_size <= new_size or not _all_hashes([old_root, new_root, *proof]):
        return False
    if old_size == new_size:
        return not proof and hmac.compare_digest(old_root, new_root)
    if old_size == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    first_result = second_result = path[0]
    for value in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            first_result = node_hash(value, first_result)
            second_result = node_hash(value, second_result)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            second_result = node_hash(second_result, value)
        fn, sn = fn >> 1, sn >> 1
    return (
        sn == 0
        and hmac.compare_digest(first_result, old_root)
        and hmac.compare_digest(second_result, new_root)
    )


def _largest_power_of_two_below(width: int) -> int:
    """The k of RFC 6962: the largest power of two strictly smaller than width (width >= 2)."""
    return 1 << ((width - 1).bit_length() - 1)


def _inclusion_ranges(leaf_index: int, tree_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose subtree hashes form PATH(leaf_index, D[0:tree_size]), bottom-up."""
    ranges: list[tuple[int, int]] = []
    start, end = 0, tree_size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if leaf_index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose subtree hashes form PROOF(old_size, D[0:new_size]) (0 < old < new)."""
    ranges: list[tuple[int, int]] = []
    start, end, remaining_old, is_original_tree = 0, new_size, old_size, True
    while remaining_old != end - start:
        k = _largest_power_of_two_below(end - start)
        if remaining_old <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            remaining_old -= k
            is_original_tree = False
    # SUBPROOF(m, D[m], false) contributes MTH(D[m]); with b true the verifier already knows it.
    if not is_original_tree:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def _perfect_pieces(start: int, end: int) -> list[NodeKey]:
    """Split [start, end) into perfect subtrees, largest first (the binary digits of the width)."""
    pieces: list[NodeKey] = []
    position, width = start, end - start
    for level in range(width.bit_length() - 1, -1, -1):
        if width >> level & 1:
            if position % (1 << level):
                raise ValueError(f"range [{start}, {end}) is not a subtree of an RFC 6962 tree")
            pieces.append((level, position >> level))
            position += 1 << level
    return pieces


def _fold(pieces: Sequence[bytes]) -> bytes:
    """MTH of a range from its perfect pieces: each piece is the left child of the rest."""
    result = pieces[-1]
    for piece in reversed(pieces[:-1]):
        result = node_hash(piece, result)
    return result


def _range_hashes(ranges: Sequence[tuple[int, int]], store: NodeStore) -> list[bytes]:
    pieces_per_range = [_perfect_pieces(start, end) for start, end in ranges]
    wanted = list(dict.fromkeys(key for pieces in pieces_per_range for key in pieces))
    nodes = _fetch(store, wanted)
    return [_fold([nodes[key] for key in pieces]) for pieces in pieces_per_range]


def _fetch(store: NodeStore, keys: Sequence[NodeKey]) -> dict[NodeKey, bytes]:
    if not keys:
        return {}
    nodes = store.get_nodes(keys)
    missing = [key for key in keys if key not in nodes]
    if missing:
        raise MissingTreeNodeError(missing=missing)
    return nodes


def _require_hash(value: bytes, *, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _all_hashes(values: Sequence[bytes]) -> bool:
    return all(isinstance(value, bytes) and len(value) == HASH_SIZE for value in values)
