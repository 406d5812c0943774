"""The node's configuration: one table of settings, four sources.

Precedence, highest first: command-line flags, ``WHEELSCHED_<NAME>``
environment variables, a TOML file (``--config PATH``), the defaults below.
Every setting has one name: ``data_dir`` in TOML, ``WHEELSCHED_DATA_DIR`` in
the environment, ``--data-dir`` on the command line. An unknown key in the
file, or a value that does not parse or is out of range in any source, is a
``ConfigError`` that names the setting and where the value came from.

Only the environment variables named here are read: other ``WHEELSCHED_*``
variables (``WHEELSCHED_TARGET``, ``WHEELSCHED_TOKEN``,
``WHEELSCHED_PURE_PYTHON``) belong to the client and the build.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "WHEELSCHED_"


class ConfigError(ValueError):
    """A bad configuration: unknown key, unparsable or out-of-range value."""


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"must be an integer {lo}..{hi}")
        if isinstance(value, str):
            try:
                value = int(value.replace("_", ""), 10)
            except ValueError:
                raise ValueError(f"must be an integer {lo}..{hi}") from None
        if not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"must be an integer {lo}..{hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"must be a number {lo}..{hi}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number {lo}..{hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be a number {lo}..{hi}")
        return value

    return parse


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _path(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str):
        raise ValueError("must be a path (a string)")
    return value


def _address(optional: bool) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        value = _str(value)
        if optional and value == "":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return value

    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        value = _str(value).lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _fsync(value: Any) -> str:
    value = _str(value)
    if value in ("always", "never") or (value.startswith("interval:") and value[9:].isdigit()):
        return value
    raise ValueError("must be always, never or interval:<ms>")


def _log_level(value: Any) -> str:
    value = _str(value).upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    metavar: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


# The reference (README "Configuration reference" lists the same table).
SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", None, _path, "where the shards' logs live (required)", "DIR"),
    Setting("listen", "127.0.0.1:7070", _address(False), "HOST:PORT for gRPC (port 0: any free)",
            "HOST:PORT"),
    Setting("advertise", "", _address(True), "HOST:PORT clients should dial (default: listen)",
            "HOST:PORT"),
    Setting("node_id", "", _str, "name of this node (default: host name)", "NAME"),
    Setting("shards", 16, _int(1, 4096), "shard count, fixed per data dir", "N"),
    Setting("fsync", "always", _fsync, "always | interval:<ms> | never (see Durability)", "POLICY"),
    Setting("tick_us", 100, _int(1, 1_000_000), "timing-wheel resolution in µs", "N"),
    Setting("snapshot_every", 1_000_000, _int(1, 1 << 62),
            "snapshot a shard after this many log records", "N"),
    Setting("segment_mb", 64, _int(1, 1 << 16), "WAL segment size in MiB", "N"),
    Setting("drain_seconds", 5.0, _float(0, 86_400),
            "on shutdown, how long workers get to ack what they hold", "S"),
    Setting("max_payload_bytes", 64 * 1024, _int(0, 64 << 20), "larger payloads: RESOURCE_EXHAUSTED",
            "N"),
    Setting("max_pending_per_shard", 5_000_000, _int(1, 1 << 62),
            "unfinished jobs per shard before RESOURCE_EXHAUSTED", "N"),
    Setting("log_level", "INFO", _log_level, "DEBUG | INFO | WARNING | ERROR", "LEVEL"),
    Setting("log_format", "text", _choice("text", "json"), "text (readable) | json (one object a line)",
            "FORMAT"),
    Setting("metrics", "", _address(True), "serve Prometheus /metrics on HOST:PORT (off if empty)",
            "HOST:PORT"),
    Setting("tls_cert", "", _path, "PEM certificate chain for the gRPC port (with tls_key: TLS)", "PEM"),
    Setting("tls_key", "", _path, "PEM private key of tls_cert", "PEM"),
    Setting("tls_client_ca", "", _path, "PEM CA bundle: require client certificates signed by it (mTLS)",
            "PEM"),
    Setting("tokens_file", "", _path, "bearer tokens, one 'TOKEN ROLE' a line (admin | read-only)",
            "FILE"),
    Setting("slow_fsync_ms", 100.0, _float(0, 3_600_000),
            "count and log WAL fsyncs slower than this (ms)", "MS"),
    Setting("event_log_seconds", 10.0, _float(0.01, 86_400),
            "interval of the aggregated event log lines (slow fsyncs, snapshots, dead jobs)", "S"),
    Setting("rate_limit_jobs_per_s", 0.0, _float(0, 1_000_000_000),
            "per-client rate of jobs written by Schedule/BatchSchedule/Cancel/Requeue (0 = off)", "N"),
    Setting("rate_limit_burst", 0, _int(0, 1 << 31),
            "per-client burst of the rate limit (0 = one second's worth)", "N"),
    Setting("etcd", "", _str, "HOST:PORT[,HOST:PORT...] of etcd: join a cluster (empty: standalone)",
            "ENDPOINTS"),
    Setting("cluster", "default", _str, "cluster name (the etcd key prefix /wheelsched/NAME/)", "NAME"),
    Setting("lease_ttl", 5, _int(2, 3600), "cluster mode: etcd lease TTL in s (failover takes about this)",
            "S"),
)
BY_NAME = {s.name: s for s in SETTINGS}


def _parse(setting: Setting, value: Any, source: str) -> Any:
    try:
        return setting.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{setting.name}: {exc} (got {value!r} from {source})") from None


def load_file(path: str | Path) -> dict[str, Any]:
    """The settings in a TOML file (flat, or under a ``[serve]`` table)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if set(data) == {"serve"} and isinstance(data["serve"], dict):
        data = data["serve"]
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in BY_NAME:
            raise ConfigError(f"unknown key {key!r} in {path} (known: {', '.join(BY_NAME)})")
        out[name] = _parse(BY_NAME[name], value, str(path))
    return out


def resolve(flags: Mapping[str, Any], env: Mapping[str, str] | None = None,
            config_file: str | Path | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The effective settings and where each came from.

    ``flags`` holds only the flags given on the command line (None = not
    given); ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    values = {s.name: s.default for s in SETTINGS}
    sources = dict.fromkeys(values, "default")
    if config_file is None:
        config_file = env.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        for name, value in load_file(config_file).items():
            values[name] = value
            sources[name] = f"file {config_file}"
    for s in SETTINGS:
        if s.env in env:
            values[s.name] = _parse(s, env[s.env], s.env)
            sources[s.name] = f"env {s.env}"
    for name, value in flags.items():
        if value is None:
            continue
        if name not in BY_NAME:
            raise ConfigError(f"unknown setting {name!r}")
        s = BY_NAME[name]
        values[name] = _parse(s, value, s.flag)
        sources[name] = f"flag {s.flag}"
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        raise ConfigError("tls_cert and tls_key: give both or neither")
    if values["etcd"]:
        from wheelsched.cluster.etcd import parse_endpoints
        try:
            parse_endpoints(values["etcd"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not values["cluster"] or "/" in values["cluster"]:
            raise ConfigError("cluster: must be a non-empty name without '/'")
        if not values["node_id"]:
            raise ConfigError("node_id: required with etcd (each node of a cluster needs its own name)")
    if values["tls_client_ca"] and not values["tls_cert"]:
        raise ConfigError("tls_client_ca: needs tls_cert and tls_key (client certificates need TLS)")
    return values, sources


def render_toml(values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> str:
    """The effective settings as TOML (what ``--print-config`` prints): a
    valid config file, with each value's source as a comment."""
    lines = []
    for s in SETTINGS:
        value = values[s.name]
        if value is None:
            text = f"# {s.name} = (not set)"
        else:
            if isinstance(value, bool):
                lit = "true" if value else "false"
            elif isinstance(value, int | float):
                lit = repr(value)
            else:
                lit = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            text = f"{s.name} = {lit}"
        if sources is not None:
            text = f"{text:<48} # {sources[s.name]}"
        lines.append(text)
    return "\n".join(lines) + "\n"
