"""Which shard a job lives on: shared by the engine, which stores it there,
and the client, which routes a request for it to the shard's owner."""

from __future__ import annotations

import crc32c


def shard_key(job_id: str) -> str:
    """The part of an id that picks its shard: the first ``{tag}`` if there
    is a non-empty one (co-locating related jobs), else the whole id."""
    start = job_id.find("{")
    if start >= 0:
        end = job_id.find("}", start + 1)
        if end > start + 1:
            return job_id[start + 1 : end]
    return job_id


def shard_of(job_id: str, shard_count: int) -> int:
    """Stable across processes and versions (CRC32C of the UTF-8 key)."""
    return crc32c.crc32c(shard_key(job_id).encode("utf-8")) % shard_count
