"""The shard balancing rules (pure; no etcd)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from wheelsched.cluster.balance import plan


def test_first_node_takes_everything():
    claim, release = plan("a", 16, {}, ["a"])
    assert sorted(claim) == list(range(16)) and release is None


def test_second_node_makes_the_first_release_one_at_a_time():
    owners = dict.fromkeys(range(16), "a")
    claim, release = plan("a", 16, owners, ["a", "b"])
    assert claim == [] and release is not None
    assert plan("b", 16, owners, ["a", "b"]) == ([], None)  # nothing free yet


def test_newcomer_gets_the_released_shard_not_the_releaser():
    # a and b at 6, c at 4 (floor is 5): a releases, and then only c claims
    owners = {s: "a" for s in range(6)} | {s: "b" for s in range(6, 12)} | \
             {s: "c" for s in range(12, 16)}
    claim, release = plan("a", 16, owners, "abc")
    assert release is not None and claim == []
    del owners[release]
    assert plan("a", 16, owners, "abc") == ([], None)  # a has its floor: leaves it
    claim, _ = plan("c", 16, owners, "abc")
    assert claim == [release]


def test_dead_nodes_shards_are_claimed_by_the_living():
    owners = {s: "a" for s in range(5)} | {s: "b" for s in range(5, 10)}  # c died: 10..15 free
    claimed = set()
    for node in "ab":
        claim, release = plan(node, 16, owners | dict.fromkeys(claimed, "x"), "ab")
        claimed |= set(claim)
        assert release is None
    assert claimed == set(range(10, 16))


def _settle(shards: int, nodes: list[str], owners: dict[int, str], rounds: int = 400) -> dict[int, str]:
    """Let every node act in random order until nothing changes (a release
    is applied at once, as after a hand-over)."""
    rng = random.Random(shards * 31 + len(nodes))
    for _ in range(rounds):
        order = list(nodes)
        rng.shuffle(order)
        changed = False
        for node in order:
            claim, release = plan(node, shards, owners, nodes)
            for s in claim:
                owners.setdefault(s, node)
            if release is not None:
                del owners[release]
            changed |= bool(claim) or release is not None
        if not changed:
            return owners
    raise AssertionError(f"no stable split after {rounds} rounds: {owners}")


@settings(max_examples=150, deadline=None)
@given(shards=st.integers(1, 64), n=st.integers(1, 7), start=st.integers(0, 6))
def test_any_start_settles_to_a_fair_stable_split(shards, n, start):
    nodes = [f"n{i}" for i in range(n)]
    # start: some node owned everything, or a random split among some nodes
    rng = random.Random(start)
    owners = {s: nodes[rng.randrange(min(start + 1, n))] for s in range(shards)}
    owners = _settle(shards, nodes, owners)
    counts = [sum(1 for o in owners.values() if o == node) for node in nodes]
    assert sorted(owners) == list(range(shards))
    assert max(counts) - min(counts) <= max(1, -(-shards // n) - shards // n)
    assert all(plan(node, shards, owners, nodes) == ([], None) for node in nodes)
