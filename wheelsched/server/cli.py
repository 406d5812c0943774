"""``wheelsched serve``: run a standalone node (owns every shard, no etcd)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def _fsync_policy(value: str) -> str:
    if value in ("always", "never") or (value.startswith("interval:") and value[9:].isdigit()):
        return value
    raise argparse.ArgumentTypeError("must be always, never or interval:<ms>")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a node", description=__doc__)
    p.add_argument("--data-dir", type=Path, required=True, help="where the shards' logs live")
    p.add_argument("--listen", default="127.0.0.1:7070", help="HOST:PORT for gRPC (port 0: any free)")
    p.add_argument("--advertise", default="", help="HOST:PORT clients should dial (default: --listen)")
    p.add_argument("--node-id", default="", help="name of this node (default: host name)")
    p.add_argument("--shards", type=int, default=16, help="shard count, fixed per data dir (default 16)")
    p.add_argument("--fsync", type=_fsync_policy, default="always",
                   help="always (default) | interval:<ms> | never — see the README")
    p.add_argument("--tick-us", type=int, default=100, help="wheel resolution in µs (default 100)")
    p.add_argument("--snapshot-every", type=int, default=1_000_000,
                   help="snapshot a shard after this many log records (default 1,000,000)")
    p.add_argument("--segment-mb", type=int, default=64, help="WAL segment size in MiB (default 64)")
    p.add_argument("--drain-seconds", type=float, default=5.0,
                   help="on shutdown, how long workers get to ack what they hold (default 5)")
    p.add_argument("--max-payload-bytes", type=int, default=64 * 1024)
    p.add_argument("--max-pending-per-shard", type=int, default=5_000_000)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from wheelsched.engine import Limits
    from wheelsched.server.node import NodeConfig, run

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 1 <= args.shards <= 4096:
        raise SystemExit("error: --shards must be 1-4096")
    if not 1 <= args.tick_us <= 1_000_000:
        raise SystemExit("error: --tick-us must be 1-1000000")
    config = NodeConfig(
        data_dir=args.data_dir, listen=args.listen, advertise=args.advertise, node_id=args.node_id,
        shard_count=args.shards, fsync=args.fsync, tick_us=args.tick_us,
        snapshot_every_records=args.snapshot_every, segment_bytes=args.segment_mb << 20,
        drain_seconds=args.drain_seconds,
        limits=Limits(max_payload_bytes=args.max_payload_bytes,
                      max_pending_per_shard=args.max_pending_per_shard),
    )
    return run(config)
