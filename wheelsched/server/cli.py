"""``wheelsched serve``: run a standalone node (owns every shard, no etcd).

Settings come from flags, then WHEELSCHED_<NAME> environment variables, then
a TOML file (--config), then defaults; --print-config shows the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wheelsched.config import SETTINGS, ConfigError, render_toml, resolve


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run a node", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH", default=None,
                   help="TOML file of settings (default: $WHEELSCHED_CONFIG)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings (TOML, with their sources) and exit")
    for s in SETTINGS:
        default = "required" if s.default is None else repr(s.default)
        p.add_argument(s.flag, dest=s.name, default=None, metavar=s.metavar or None,
                       help=f"{s.help} (default {default}; env {s.env})")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    flags = {s.name: getattr(args, s.name) for s in SETTINGS}
    try:
        values, sources = resolve(flags, config_file=args.config)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        sys.stdout.write(render_toml(values, sources))
        return 0
    if values["data_dir"] is None:
        print("error: config: data_dir is required (--data-dir, WHEELSCHED_DATA_DIR or data_dir in "
              "the config file)", file=sys.stderr)
        return 2

    from wheelsched.engine import Limits
    from wheelsched.server import logs
    from wheelsched.server.node import NodeConfig, run

    logs.setup(values["log_level"], values["log_format"])
    config = NodeConfig(
        data_dir=Path(values["data_dir"]), listen=values["listen"], advertise=values["advertise"],
        node_id=values["node_id"], shard_count=values["shards"], fsync=values["fsync"],
        tick_us=values["tick_us"], snapshot_every_records=values["snapshot_every"],
        segment_bytes=values["segment_mb"] << 20, drain_seconds=values["drain_seconds"],
        limits=Limits(max_payload_bytes=values["max_payload_bytes"],
                      max_pending_per_shard=values["max_pending_per_shard"]),
        metrics=values["metrics"], tls_cert=values["tls_cert"], tls_key=values["tls_key"],
        tls_client_ca=values["tls_client_ca"], tokens_file=values["tokens_file"],
        slow_fsync_ms=values["slow_fsync_ms"], event_log_seconds=values["event_log_seconds"],
        rate_limit_jobs_per_s=values["rate_limit_jobs_per_s"],
        rate_limit_burst=values["rate_limit_burst"],
        etcd=values["etcd"], cluster=values["cluster"], lease_ttl=values["lease_ttl"],
    )
    try:
        return run(config)
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
        return 2
