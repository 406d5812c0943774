"""``wheelsched jobs schedule|get|list|cancel|requeue``: the Client from a shell.

Output is ``key: value`` lines for one job and a table for ``list``;
``--json`` prints JSON instead (an object per job, an array for ``list``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from wheelsched import errors

DEFAULT_TARGET = "127.0.0.1:7070"

EXIT_HELP = """\
exit status: 0 on success, 2 for INVALID_ARGUMENT (bad input, from the
server or caught before sending) and for usage errors, 1 for every other
error (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, UNAVAILABLE, ...).
Errors are printed to stderr as "error: <STATUS>: <message>".
The target defaults to $WHEELSCHED_TARGET, else 127.0.0.1:7070."""


def connection_options() -> argparse.ArgumentParser:
    """The options every command that talks to a node takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--target",
        default=os.environ.get("WHEELSCHED_TARGET") or DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"node to talk to; for a cluster, any nodes, comma separated (default: "
             f"$WHEELSCHED_TARGET or {DEFAULT_TARGET})",
    )
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    common.add_argument("--tls-ca", default=os.environ.get("WHEELSCHED_TLS_CA") or None, metavar="PEM",
                        help="CA of the node's certificate: connect with TLS (default: $WHEELSCHED_TLS_CA)")
    common.add_argument("--tls-client-cert", default=os.environ.get("WHEELSCHED_CLIENT_CERT") or None,
                        metavar="PEM", help="client certificate for mTLS ($WHEELSCHED_CLIENT_CERT)")
    common.add_argument("--tls-client-key", default=os.environ.get("WHEELSCHED_CLIENT_KEY") or None,
                        metavar="PEM", help="its private key ($WHEELSCHED_CLIENT_KEY)")
    common.add_argument("--token", default=os.environ.get("WHEELSCHED_TOKEN") or None,
                        help="bearer token (default: $WHEELSCHED_TOKEN; prefer the variable: "
                             "flags show in ps)")
    common.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="per-call deadline (10)"
    )
    return common


def register(subparsers: Any) -> None:
    """Add the ``jobs`` command group to the ``wheelsched`` parser."""
    common = connection_options()

    def add(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=help,
            epilog=EXIT_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    jobs = subparsers.add_parser(
        "jobs",
        help="schedule, inspect, cancel and requeue jobs",
        description="Schedule, inspect, cancel and requeue jobs on a wheelsched node.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = jobs.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND", required=True)

    p = add(sub, "schedule", "schedule a job (exactly one of --due, --delay, --cron)")
    p.add_argument("--queue", "-q", required=True)
    p.add_argument("--id", help="job id, the idempotency key (generated if omitted)")
    p.add_argument(
        "--payload", default="", help="payload text; @FILE reads a file, @- reads stdin"
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument("--due", help="ISO 8601 time (naive means UTC) or unix seconds")
    when.add_argument("--delay", type=float, metavar="SECONDS")
    when.add_argument("--cron", metavar="EXPR", help='e.g. "0 9 * * *" (quote it)')
    p.add_argument("--tz", help="IANA time zone of --cron (default UTC)")
    p.add_argument("--misfire", choices=("fire_once", "fire_all", "skip"))
    p.add_argument("--priority", type=int, default=0)
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--lease-timeout", type=float, metavar="SECONDS")
    p.add_argument("--after", action="append", metavar="ID",
                   help="run after this job has succeeded (repeatable; the job must exist)")
    p.add_argument("--on-dependency-failure", choices=("cancel", "run_anyway"),
                   help="when a dependency ends DEAD or CANCELLED: cancel this job (default) or run it")
    p.set_defaults(func=_cmd_schedule)

    p = add(sub, "get", "show one job")
    p.add_argument("id")
    p.add_argument("--full", action="store_true", help="include the payload")
    p.add_argument("--deps", action="store_true",
                   help="list its dependencies, those still open, and the jobs waiting for it")
    p.set_defaults(func=_cmd_get)

    p = add(sub, "list", "list jobs, filtered by queue and state")
    p.add_argument("--queue", "-q")
    p.add_argument(
        "--state",
        action="append",
        type=str.upper,
        choices=("SCHEDULED", "DISPATCHED", "SUCCEEDED", "DEAD", "CANCELLED", "WAITING"),
        help="repeatable; default every state",
    )
    p.add_argument("--limit", type=int, default=100, help="at most this many (0: all; default 100)")
    p.set_defaults(func=_cmd_list)

    p = add(sub, "cancel", "cancel a job")
    p.add_argument("id")
    p.set_defaults(func=_cmd_cancel)

    p = add(sub, "requeue", "bring a DEAD job back, due now")
    p.add_argument("id")
    p.set_defaults(func=_cmd_requeue)


# ---------------------------------------------------------------- commands


def parse_due(text: str) -> datetime | float:
    """--due: unix seconds or ISO 8601 ("2030-01-01T09:00:00Z"; naive is UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise errors.InvalidArgument(
            "due", f"{text!r} is neither ISO 8601 nor unix seconds"
        ) from None


def read_payload(text: str) -> bytes:
    if text.startswith("@"):
        name = text[1:]
        if name == "-":
            return sys.stdin.buffer.read()
        try:
            with open(name, "rb") as f:
                return f.read()
        except OSError as err:
            raise errors.InvalidArgument("payload", f"cannot read {name}: {err.strerror}") from None
    return text.encode()


def client_from_args(args: argparse.Namespace) -> Any:
    from wheelsched.client.client import Client  # grpc only for commands that need it

    return Client(args.target, timeout=args.timeout, tls_ca=args.tls_ca, tls_cert=args.tls_client_cert,
                  tls_key=args.tls_client_key, token=args.token)


def _cmd_schedule(args: argparse.Namespace) -> int:
    def call() -> Any:
        with client_from_args(args) as c:
            return c.schedule(
                args.queue,
                read_payload(args.payload),
                id=args.id,
                due=parse_due(args.due) if args.due is not None else None,
                delay=args.delay,
                cron=args.cron,
                tz=args.tz,
                misfire=args.misfire,
                priority=args.priority,
                max_attempts=args.max_attempts,
                lease_timeout=args.lease_timeout,
                after=args.after,
                on_dependency_failure=args.on_dependency_failure,
            )

    return _run(args, call)


def _cmd_get(args: argparse.Namespace) -> int:
    def call() -> Any:
        with client_from_args(args) as c:
            # the FULL view carries the dependents (and the payload: shown with --full only)
            job = c.get(args.id, full=args.full or args.deps)
            if args.deps and not args.full:
                job = dataclasses.replace(job, payload=b"")
            return job

    return _run(args, call, deps=args.deps)


def _cmd_cancel(args: argparse.Namespace) -> int:
    def call() -> Any:
        with client_from_args(args) as c:
            return c.cancel(args.id)

    return _run(args, call)


def _cmd_requeue(args: argparse.Namespace) -> int:
    def call() -> Any:
        with client_from_args(args) as c:
            return c.requeue(args.id)

    return _run(args, call)


def _cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        return _fail(errors.InvalidArgument("limit", "must be >= 0"))

    def call() -> Any:
        page = min(args.limit, 1000) if args.limit else 1000
        with client_from_args(args) as c:
            jobs = c.list(queue=args.queue, states=args.state, page_size=page)
            return list(itertools.islice(jobs, args.limit or None))

    return _run(args, call, many=True)


# ---------------------------------------------------------------- output


def _run(args: argparse.Namespace, call: Any, many: bool = False, deps: bool = False) -> int:
    try:
        result = call()
    except errors.WheelschedError as err:
        return _fail(err)
    out = sys.stdout
    if args.json:
        data = [j.to_dict() for j in result] if many else result.to_dict()
        json.dump(data, out, indent=None if many else 2)
        out.write("\n")
    elif many:
        out.write(format_table(result))
    else:
        out.write(format_job(result))
        if deps:
            out.write(format_deps(result))
    return 0


def _fail(err: errors.WheelschedError) -> int:
    status = getattr(err, "status", "INTERNAL")
    print(f"error: {status}: {err}", file=sys.stderr)
    return 2 if status == "INVALID_ARGUMENT" else 1


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if hasattr(value, "total_seconds"):
        return f"{value.total_seconds():g}s"
    return str(value)


def format_job(job: Any) -> str:
    """``key: value`` lines; empty and default fields are left out."""
    d = job.to_dict()
    rows: list[tuple[str, str]] = []
    for key in (
        "id", "queue", "state", "attempt", "priority", "next_fire_time", "due", "delay",
        "cron", "tz", "misfire", "create_time", "finish_time", "last_error", "executions",
        "misfires", "dead_executions", "max_attempts", "min_backoff", "max_backoff",
        "max_doublings", "jitter", "lease_timeout", "shard", "epoch", "on_dependency_failure",
    ):  # fmt: skip
        value = getattr(job, key)
        if value in (None, "") or (key in ("executions", "misfires", "dead_executions") and not value):
            continue
        rows.append((key, _fmt(value)))
    if job.after:
        rows.append(("after", _ids(job.after)))
        if job.open_dependencies:
            rows.append(("open_dependencies", _ids(job.open_dependencies)))
    if job.payload:
        text = d["payload"]
        rows.append(("payload", repr(text) if text is not None else f"base64:{d['payload_base64']}"))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k + ':':<{width + 1}} {v}\n" for k, v in rows)


def _ids(ids: Sequence[str], shown: int = 5) -> str:
    """A short list of ids: the first few and how many in all."""
    text = ", ".join(ids[:shown])
    return text if len(ids) <= shown else f"{text}, ... ({len(ids)} jobs)"


def format_deps(job: Any) -> str:
    """``--deps``: every dependency (open ones marked), then the dependents."""
    open_ids = set(job.open_dependencies)
    lines = [f"dependencies ({len(job.after)}, {len(open_ids)} open):"]
    lines += [f"  {dep}{'  (open)' if dep in open_ids else ''}" for dep in job.after]
    lines.append(f"dependents still waiting ({len(job.dependents)}):")
    lines += [f"  {dep}" for dep in job.dependents]
    return "\n".join(lines) + "\n"


def format_table(jobs: Sequence[Any]) -> str:
    header = ("ID", "QUEUE", "STATE", "ATTEMPT", "NEXT FIRE (UTC)", "SCHEDULE")
    rows = [header]
    for j in jobs:
        sched = f"cron {j.cron} {j.tz or ''}".strip() if j.cron else _fmt(j.due or j.delay)
        rows.append((j.id, j.queue, j.state, str(j.attempt), _fmt(j.next_fire_time), sched))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"({len(jobs)} job{'s' if len(jobs) != 1 else ''})")
    return "\n".join(lines) + "\n"
