from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

import pymerkle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.domain import merkle
from services.ingest.domain.errors import InvalidProofRequestError, MissingTreeNodeError
from tests.ingest import rfc6962_reference as ref

MAX_SIZE = 64

# Certificate Transparency's published RFC 6962 test inputs and tree heads for sizes 0..8.
CT_INPUTS = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657")] + [
    bytes.fromhex("606162636465666768696a6b6c6d6e6f")
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION_LEAF0_SIZE8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]


class CountingStore:
    """Wraps a store and records every batched read, to show proofs cost O(log n) node reads."""

    def __init__(self, inner: merkle.InMemoryNodeStore) -> None:
        self.inner = inner
        self.calls = 0
        self.keys_read = 0

    def get_nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        self.calls += 1
        self.keys_read += len(keys)
        return self.inner.get_nodes(keys)


def entries(count: int, *, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(0, 40)) for _ in range(count)]


def build_store(
    data: Sequence[bytes], *, batch_sizes: Sequence[int] | None = None
) -> merkle.InMemoryNodeStore:
    """Append `data` in batches of the given sizes (default: one leaf at a time)."""
    store = merkle.InMemoryNodeStore()
    size = 0
    batches = list(batch_sizes) if batch_sizes is not None else [1] * len(data)
    for batch in batches:
        hashes = [merkle.leaf_hash(d) for d in data[size : size + batch]]
        plan = merkle.nodes_for_append(tree_size=size, leaf_hashes=hashes, store=store)
        store.put_nodes(plan.nodes)
        size = plan.tree_size
        assert plan.root == ref.mth(list(data[:size]))
    assert size == len(data)
    return store


@pytest.fixture(scope="module")
def log64() -> tuple[list[bytes], merkle.InMemoryNodeStore]:
    data = entries(MAX_SIZE)
    # Odd batch sizes so batches straddle subtree boundaries.
    return data, build_store(data, batch_sizes=[1, 2, 5, 3, 8, 13, 1, 31])


def test_hash_primitives_follow_rfc6962_prefixes():
    assert merkle.leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = b"L" * 32, b"R" * 32
    assert merkle.node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert merkle.empty_root() == hashlib.sha256(b"").digest()


def test_roots_match_certificate_transparency_vectors():
    store = build_store(CT_INPUTS)
    for size, expected in enumerate(CT_ROOTS):
        assert merkle.root_hash(size, store).hex() == expected


def test_inclusion_proof_matches_certificate_transparency_vector():
    store = build_store(CT_INPUTS)
    proof = merkle.inclusion_proof(leaf_index=0, tree_size=8, store=store)
    assert [p.hex() for p in proof] == CT_INCLUSION_LEAF0_SIZE8


def test_roots_equal_reference_for_every_size(log64):
    data, store = log64
    for size in range(MAX_SIZE + 1):
        assert merkle.root_hash(size, store) == ref.mth(data[:size]), size


def test_inclusion_proofs_equal_reference_for_every_leaf_of_every_size(log64):
    data, store = log64
    for size in range(1, MAX_SIZE + 1):
        root = merkle.root_hash(size, store)
        for index in range(size):
            proof = merkle.inclusion_proof(leaf_index=index, tree_size=size, store=store)
            assert proof == ref.path(index, data[:size]), (index, size)
            leaf = merkle.leaf_hash(data[index])
            assert ref.verify_path(leaf_hash=leaf, m=index, n=size, audit_path=proof, root=root)
            assert merkle.verify_inclusion(
                leaf_hash=leaf, leaf_index=index, tree_size=size, proof=proof, root=root
            )


def test_consistency_proofs_equal_reference_for_every_pair_of_sizes(log64):
    data, store = log64
    for new_size in range(1, MAX_SIZE + 1):
        new_root = merkle.root_hash(new_size, store)
        for old_size in range(1, new_size + 1):
            old_root = merkle.root_hash(old_size, store)
            proof = merkle.consistency_proof(old_size=old_size, new_size=new_size, store=store)
            expected = ref.proof(old_size, data[:new_size]) if old_size < new_size else []
            assert proof == expected, (old_size, new_size)
            assert ref.verify_proof(
                m=old_size, n=new_size, consistency=proof, old_root=old_root, new_root=new_root
            )
            assert merkle.verify_consistency(
                old_size=old_size, new_size=new_size, old_root=old_root, new_root=new_root, proof=proof
            )


def _flip_bit(value: bytes, bit: int) -> bytes:
    altered = bytearray(value)
    altered[bit // 8 % len(altered)] ^= 1 << (bit % 8)
    return bytes(altered)


def test_tampered_inclusion_proofs_fail(log64):
    data, store = log64
    rng = random.Random(3)
    for size in range(2, MAX_SIZE + 1):
        root = merkle.root_hash(size, store)
        for index in range(size):
            leaf = merkle.leaf_hash(data[index])
            proof = merkle.inclusion_proof(leaf_index=index, tree_size=size, store=store)
            position = rng.randrange(len(proof))
            altered = [
                *proof[:position],
                _flip_bit(proof[position], rng.randrange(256)),
                *proof[position + 1 :],
            ]
            # (leaf hash, leaf index, tree size, proof, root), each altered in one way
            cases: list[tuple[bytes, int, int, list[bytes], bytes]] = [
                (leaf, index, size, altered, root),
                (_flip_bit(leaf, 5), index, size, proof, root),
                (leaf, index, size, proof[:-1], root),
                (leaf, index, size, [*proof, root], root),
                (leaf, index, size, proof, _flip_bit(root, 0)),
                (leaf, (index + 1) % size, size, proof, root),
                (leaf, index, size + 1, proof, root),
            ]
            for case_leaf, case_index, case_size, case_proof, case_root in cases:
                # A changed index or size can describe the same path shape; skip the rare honest match.
                if ref.verify_path(
                    leaf_hash=case_leaf, m=case_index, n=case_size, audit_path=case_proof, root=case_root
                ):
                    continue
                assert not merkle.verify_inclusion(
                    leaf_hash=case_leaf,
                    leaf_index=case_index,
                    tree_size=case_size,
                    proof=case_proof,
                    root=case_root,
                ), (index, size)


def test_tampered_consistency_proofs_fail(log64):
    _, store = log64
    rng = random.Random(5)
    rejected = 0
    for new_size in range(2, MAX_SIZE + 1):
        new_root = merkle.root_hash(new_size, store)
        for old_size in range(1, new_size):
            old_root = merkle.root_hash(old_size, store)
            proof = merkle.consistency_proof(old_size=old_size, new_size=new_size, store=store)
            position = rng.randrange(len(proof))
            altered = [
                *proof[:position],
                _flip_bit(proof[position], rng.randrange(256)),
                *proof[position + 1 :],
            ]
            wrong_old = merkle.root_hash(old_size - 1, store)
            # (old root, new root, proof), each altered in one way
            cases: list[tuple[bytes, bytes, list[bytes]]] = [
                (old_root, new_root, altered),
                (old_root, new_root, proof[1:]),
                (wrong_old, new_root, proof),
                (old_root, old_root, proof),
                (old_root, new_root, []),
            ]
            for case_old, case_new, case_proof in cases:
                assert not merkle.verify_consistency(
                    old_size=old_size,
                    new_size=new_size,
                    old_root=case_old,
                    new_root=case_new,
                    proof=case_proof,
                ), (old_size, new_size)
                rejected += 1
    assert rejected == 5 * (MAX_SIZE * (MAX_SIZE - 1) // 2)


def test_proof_edge_cases():
    store = build_store(entries(5))
    root5 = merkle.root_hash(5, store)
    assert merkle.consistency_proof(old_size=0, new_size=5, store=store) == []
    assert merkle.verify_consistency(
        old_size=0, new_size=5, old_root=merkle.empty_root(), new_root=root5, proof=[]
    )
    assert merkle.verify_consistency(old_size=5, new_size=5, old_root=root5, new_root=root5, proof=[])
    assert not merkle.verify_consistency(
        old_size=5, new_size=5, old_root=root5, new_root=b"\x00" * 32, proof=[]
    )
    assert not merkle.verify_consistency(old_size=6, new_size=5, old_root=root5, new_root=root5, proof=[])
    assert not merkle.verify_inclusion(leaf_hash=root5, leaf_index=5, tree_size=5, proof=[], root=root5)
    # Hashes of the wrong length are rejected instead of raising.
    assert not merkle.verify_inclusion(leaf_hash=b"short", leaf_index=0, tree_size=1, proof=[], root=b"short")
    with pytest.raises(InvalidProofRequestError):
        merkle.inclusion_proof(leaf_index=5, tree_size=5, store=store)
    with pytest.raises(InvalidProofRequestError):
        merkle.consistency_proof(old_size=4, new_size=3, store=store)
    with pytest.raises(MissingTreeNodeError):
        merkle.root_hash(6, store)


def test_single_leaf_tree_needs_no_path():
    store = build_store([b"only"])
    root = merkle.root_hash(1, store)
    assert root == merkle.leaf_hash(b"only")
    assert merkle.inclusion_proof(leaf_index=0, tree_size=1, store=store) == []
    assert merkle.verify_inclusion(leaf_hash=root, leaf_index=0, tree_size=1, proof=[], root=root)


def test_batching_does_not_change_the_stored_nodes():
    data = entries(40, seed=11)
    one_by_one = build_store(data)
    batched = build_store(data, batch_sizes=[40])
    keys = [(level, index) for level in range(7) for index in range(40 >> level)]
    assert one_by_one.get_nodes(keys) == batched.get_nodes(keys)
    # Exactly the perfect subtrees exist: 2n - popcount(n) of them.
    assert len(one_by_one) == len(batched) == 2 * 40 - bin(40).count("1")


def test_append_reads_only_the_frontier():
    store = build_store(entries(45))
    counting = CountingStore(store)
    merkle.nodes_for_append(tree_size=45, leaf_hashes=[merkle.leaf_hash(b"x")] * 10, store=counting)
    assert counting.calls == 1
    assert counting.keys_read == bin(45).count("1")


@pytest.mark.parametrize("size", [5, 64, 100, 255, 256, 257, 1000, 1023])
def test_proofs_read_logarithmically_many_nodes_in_one_batch(size):
    store = build_store(entries(size, seed=size), batch_sizes=[size])
    bound = 2 * math.ceil(math.log2(size)) + 2
    rng = random.Random(size)
    for _ in range(20):
        counting = CountingStore(store)
        merkle.inclusion_proof(leaf_index=rng.randrange(size), tree_size=size, store=counting)
        assert counting.calls == 1 and counting.keys_read <= bound
        counting = CountingStore(store)
        merkle.consistency_proof(old_size=rng.randrange(1, size + 1), new_size=size, store=counting)
        assert counting.calls <= 1 and counting.keys_read <= bound
    counting = CountingStore(store)
    merkle.root_hash(size, counting)
    assert counting.calls == 1 and counting.keys_read <= math.ceil(math.log2(size)) + 1


def test_pymerkle_rfc6962_mode_agrees():
    # pymerkle with security on (its default) prefixes 0x00/0x01 exactly like RFC 6962; with
    # disable_security=True it hashes without prefixes, which is not RFC 6962.
    for size in (1, 2, 3, 7, 8, 13, 33):
        data = entries(size, seed=size)
        tree = pymerkle.InmemoryTree(algorithm="sha256")
        for item in data:
            tree.append_entry(item)
        store = build_store(data)
        assert tree.get_root() == merkle.root_hash(size, store)
        for index in range(size):
            theirs = tree.prove_inclusion(index + 1)  # pymerkle counts leaves from one
            # Its path starts with the leaf itself; the rest is the RFC audit path.
            assert theirs.path[1:] == merkle.inclusion_proof(leaf_index=index, tree_size=size, store=store)
        for old_size in range(1, size + 1):
            # pymerkle's consistency proof has its own layout, but it must accept our roots.
            their_proof = tree.prove_consistency(old_size, size)
            pymerkle.verify_consistency(
                merkle.root_hash(old_size, store), merkle.root_hash(size, store), their_proof
            )
    insecure = pymerkle.InmemoryTree(algorithm="sha256", disable_security=True)
    insecure.append_entry(b"a")
    insecure.append_entry(b"b")
    assert insecure.get_root() != merkle.root_hash(2, build_store([b"a", b"b"]))


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=12),
    data=st.data(),
)
def test_random_appends_produce_reference_roots_and_proofs(batches, data):
    size = sum(batches)
    items = entries(size, seed=size)
    store = build_store(items, batch_sizes=batches)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    tree_size = data.draw(st.integers(min_value=index + 1, max_value=size))
    old_size = data.draw(st.integers(min_value=1, max_value=tree_size))
    root = merkle.root_hash(tree_size, store)
    assert root == ref.mth(items[:tree_size])
    proof = merkle.inclusion_proof(leaf_index=index, tree_size=tree_size, store=store)
    assert proof == ref.path(index, items[:tree_size])
    assert merkle.verify_inclusion(
        leaf_hash=merkle.leaf_hash(items[index]),
        leaf_index=index,
        tree_size=tree_size,
        proof=proof,
        root=root,
    )
    consistency = merkle.consistency_proof(old_size=old_size, new_size=tree_size, store=store)
    old_root = merkle.root_hash(old_size, store)
    assert ref.verify_proof(
        m=old_size, n=tree_size, consistency=consistency, old_root=old_root, new_root=root
    )
    assert merkle.verify_consistency(
        old_size=old_size, new_size=tree_size, old_root=old_root, new_root=root, proof=consistency
    )


@pytest.mark.parametrize("size", [1, 2, 4, 8, 16])
def test_perfect_subtree_hash_is_the_reference_root(size):
    entries = [random.Random(size).randbytes(20) + bytes([i]) for i in range(size)]
    hashes = [merkle.leaf_hash(entry) for entry in entries]
    assert merkle.perfect_subtree_hash(hashes) == ref.mth(entries)


@pytest.mark.parametrize("size", [0, 3, 6])
def test_perfect_subtree_hash_refuses_other_sizes(size):
    with pytest.raises(ValueError, match="power-of-two"):
        merkle.perfect_subtree_hash([b"\x00" * 32] * size)
