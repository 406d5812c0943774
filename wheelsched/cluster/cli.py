"""``wheelsched cluster status``: nodes, shards, owners, epochs and lag.

Reads the shard map from any node given with ``--target`` (several, comma
separated, are tried in turn), then asks every node of the map for its own
status: which shards it fires now, at which epoch, with how many jobs, how
many due jobs wait for a worker and how late the oldest is (lag), and how
far its WAL is durable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from wheelsched import errors


def register(subparsers: Any) -> None:
    from wheelsched.client.cli import connection_options

    group = subparsers.add_parser("cluster", help="inspect a cluster", description=__doc__.splitlines()[0])
    sub = group.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    status = sub.add_parser("status", parents=[connection_options()], help="nodes, shards, owners, "
                            "epochs and lag", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    status.set_defaults(func=cmd_status)


def collect(client: Any) -> dict[str, Any]:
    """The cluster as one JSON-able dict (what ``--json`` prints)."""
    cmap = client.refresh_shard_map()
    if cmap is None:
        raise errors.Unavailable(f"no node of {client.target} answered")
    nodes = []
    firing: dict[int, dict[str, Any]] = {}
    addresses = [(n.node_id, n.address) for n in cmap.nodes]
    for node_id, address in addresses:
        try:
            st = client.status_of(address)
        except errors.WheelschedError as exc:
            nodes.append({"node_id": node_id, "address": address, "reachable": False, "error": str(exc)})
            continue
        nodes.append({"node_id": st.node_id, "address": address, "reachable": True,
                      "serving": st.serving, "lease_valid": st.lease_valid, "workers": st.workers,
                      "shards": sorted(s.shard for s in st.shards)})
        for s in st.shards:
            firing[s.shard] = {"node_id": st.node_id, "epoch": s.epoch, "firing": s.firing,
                               "jobs": s.jobs, "pending": s.pending, "in_flight": s.in_flight,
                               "ready": s.ready, "lag_ms": s.lag_ms,
                               "wal_durable_seq": s.wal_durable_seq}
    shards = []
    for shard in range(cmap.shard_count):
        owner = cmap.owner(shard)
        row: dict[str, Any] = {"shard": shard, "owner": owner.owner_node_id if owner else "",
                               "epoch": owner.epoch if owner else 0}
        seen = firing.get(shard)
        if seen is not None and (owner is None or seen["node_id"] == owner.owner_node_id):
            row.update({k: v for k, v in seen.items() if k != "node_id"})
        else:
            row["firing"] = False
        shards.append(row)
    return {"cluster": cmap.cluster, "shard_count": cmap.shard_count, "nodes": nodes, "shards": shards}


def render(data: dict[str, Any]) -> str:
    owned = sum(1 for s in data["shards"] if s["owner"])
    firing = sum(1 for s in data["shards"] if s.get("firing"))
    name = data["cluster"] or "(standalone)"
    lines = [f"cluster {name}: {len(data['nodes'])} nodes, {owned}/{data['shard_count']} shards owned, "
             f"{firing} firing", ""]
    lines.append(f"{'NODE':<16} {'ADDRESS':<22} {'SHARDS':>6}  {'LEASE':<6} {'WORKERS':>7}")
    for n in data["nodes"]:
        if not n["reachable"]:
            lines.append(f"{n['node_id']:<16} {n['address']:<22} {'-':>6}  unreachable: {n['error']}")
            continue
        lease = "ok" if n["lease_valid"] else "LOST"
        lines.append(f"{n['node_id']:<16} {n['address']:<22} {len(n['shards']):>6}  {lease:<6} "
                     f"{n['workers']:>7}")
    lines += ["", f"{'SHARD':>5} {'OWNER':<16} {'EPOCH':>8} {'FIRING':<6} {'JOBS':>9} {'PENDING':>9} "
                  f"{'IN_FLIGHT':>9} {'READY':>7} {'LAG_MS':>7}"]
    for s in data["shards"]:
        lines.append(f"{s['shard']:>5} {s['owner'] or '-':<16} {s['epoch']:>8} "
                     f"{'yes' if s.get('firing') else 'no':<6} {s.get('jobs', '-'):>9} "
                     f"{s.get('pending', '-'):>9} {s.get('in_flight', '-'):>9} {s.get('ready', '-'):>7} "
                     f"{s.get('lag_ms', '-'):>7}")
    return "\n".join(lines) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    from wheelsched.client.cli import client_from_args

    try:
        with client_from_args(args) as client:
            data = collect(client)
    except errors.WheelschedError as exc:
        print(f"error: {getattr(exc, 'status', 'INTERNAL')}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(data))
    return 0
