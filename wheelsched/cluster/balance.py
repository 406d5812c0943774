"""Which shards a node should claim or give up: a pure function of what it
read from etcd, so every rule here is tested without a cluster.

Each node looks at the same picture (live nodes, shard → owner) and acts
only for itself:

* it claims free shards while it holds fewer than ``ceil(S / N)`` — but
  only up to ``floor(S / N)`` while another node holds fewer than that, so
  a shard released for a newcomer goes to the newcomer, not back to a node
  that already has its floor;
* it releases one shard at a time while it holds more than ``ceil(S / N)``,
  or more than ``floor(S / N)`` while no shard is free and some node holds
  fewer than ``floor(S / N)`` (a newcomer, after everyone settled at the
  ceiling).

Free shards are tried in an order that differs per node (rendezvous
hashing on node id and shard), so nodes starting together mostly reach for
different shards; etcd's create transaction decides the rare tie. Releasing
one shard at a time keeps a join from stopping many shards at once; a
claim takes every free shard up to the share at once, because a free
shard fires nothing until someone claims it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import crc32c


def _preference(node_id: str, shard: int) -> int:
    return crc32c.crc32c(f"{node_id}/{shard}".encode())


def plan(me: str, shard_count: int, owners: Mapping[int, str],
         nodes: Collection[str]) -> tuple[list[int], int | None]:
    """(shards to claim, in order; a shard to release or None).

    ``owners`` maps each held shard to its owner's node id; ``nodes`` are the
    live nodes (``me`` among them)."""
    live = set(nodes) | {me}
    n = len(live)
    high = -(-shard_count // n)
    low = shard_count // n
    counts = dict.fromkeys(live, 0)
    for owner in owners.values():
        if owner in counts:
            counts[owner] += 1
    mine = sorted(s for s, o in owners.items() if o == me)
    free = [s for s in range(shard_count) if s not in owners]
    others_starving = any(c < low for node, c in counts.items() if node != me)
    limit = low if others_starving else high
    if len(mine) < limit and free:
        free.sort(key=lambda s: _preference(me, s))
        return free[: limit - len(mine)], None
    starving = others_starving or counts[me] < low
    if len(mine) > high or (len(mine) > low and not free and starving):
        # give up the shard this node likes least, so a returning node
        # tends to get back the same shards
        return [], max(mine, key=lambda s: (_preference(me, s), s))
    return [], None
