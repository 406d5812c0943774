"""Issue #7: configuration precedence (flags > WHEELSCHED_* env > TOML file >
defaults), --print-config, and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from wheelsched.config import SETTINGS, ConfigError, render_toml, resolve


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults() -> None:
    values, sources = resolve({}, env={})
    assert values == {s.name: s.default for s in SETTINGS}
    assert set(sources.values()) == {"default"}


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    cfg = write(tmp_path / "w.toml", 'shards = 8\ntick_us = 250\nfsync = "never"\nlog-format = "json"\n')
    env = {"WHEELSCHED_SHARDS": "12", "WHEELSCHED_TICK_US": "300"}
    values, sources = resolve({"shards": "32", "listen": None}, env=env, config_file=cfg)
    assert values["shards"] == 32 and sources["shards"] == "flag --shards"
    assert values["tick_us"] == 300 and sources["tick_us"] == "env WHEELSCHED_TICK_US"
    assert values["fsync"] == "never" and sources["fsync"] == f"file {cfg}"
    assert values["log_format"] == "json"
    assert values["listen"] == "127.0.0.1:7070" and sources["listen"] == "default"


def test_config_file_from_env_and_serve_table(tmp_path: Path) -> None:
    cfg = write(tmp_path / "w.toml", '[serve]\ndrain_seconds = 1.5\nmetrics = "127.0.0.1:9464"\n')
    values, _ = resolve({}, env={"WHEELSCHED_CONFIG": str(cfg)})
    assert values["drain_seconds"] == 1.5
    assert values["metrics"] == "127.0.0.1:9464"


@pytest.mark.parametrize(
    ("toml", "env", "flags", "message"),
    [
        ("shardz = 3\n", {}, {}, "unknown key 'shardz'"),
        ("shards = 0\n", {}, {}, "shards: must be an integer 1..4096"),
        ('shards = "many"\n', {}, {}, "shards: must be an integer"),
        ("shards = true\n", {}, {}, "shards: must be an integer"),
        ("", {"WHEELSCHED_FSYNC": "sometimes"}, {}, "fsync: must be always, never or interval:<ms>"),
        ("", {"WHEELSCHED_DRAIN_SECONDS": "soon"}, {}, "drain_seconds: must be a number"),
        ("", {}, {"listen": "localhost"}, "listen: must be HOST:PORT"),
        ("", {}, {"log_format": "xml"}, "log_format: must be one of text, json"),
        ("", {}, {"tls_cert": "c.pem"}, "tls_cert and tls_key: give both or neither"),
        ("", {}, {"tls_client_ca": "ca.pem"}, "tls_client_ca: needs tls_cert"),
        ("shards = [\n", {}, {}, "is not valid TOML"),
    ],
)
def test_errors_name_the_setting_and_source(tmp_path: Path, toml, env, flags, message) -> None:
    cfg = write(tmp_path / "w.toml", toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")) as info:
        resolve(flags, env=env, config_file=cfg)
    text = str(info.value)
    if env:
        assert next(iter(env)) in text  # which variable was wrong
    if toml and "unknown" in message:
        assert str(cfg) in text


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve({}, env={}, config_file=tmp_path / "nope.toml")


def test_rendered_config_is_valid_toml_and_round_trips(tmp_path: Path) -> None:
    values, sources = resolve({"shards": "7", "data_dir": str(tmp_path), "fsync": "interval:5"}, env={})
    text = render_toml(values, sources)
    cfg = write(tmp_path / "again.toml", text)
    again, _ = resolve({}, env={}, config_file=cfg)
    assert again == values


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WHEELSCHED_")}
    return subprocess.run([sys.executable, "-m", "wheelsched", "serve", *args], capture_output=True,
                          text=True, timeout=60, env={**base, **(env or {})})


def test_print_config_cli(tmp_path: Path) -> None:
    cfg = write(tmp_path / "w.toml", 'shards = 8\nlisten = "0.0.0.0:7000"\n')
    res = _serve("--config", str(cfg), "--print-config", "--listen", "127.0.0.1:7001",
                 env={"WHEELSCHED_SHARDS": "9", "WHEELSCHED_TARGET": "ignored:1"})
    assert res.returncode == 0, res.stderr
    printed = tomllib.loads(res.stdout)
    assert printed["shards"] == 9
    assert printed["listen"] == "127.0.0.1:7001"
    assert printed["fsync"] == "always"
    assert "# env WHEELSCHED_SHARDS" in res.stdout
    assert "# flag --listen" in res.stdout


def test_bad_config_exits_2_with_a_clear_error(tmp_path: Path) -> None:
    cfg = write(tmp_path / "w.toml", "bogus = 1\n")
    res = _serve("--config", str(cfg), "--data-dir", str(tmp_path / "d"))
    assert res.returncode == 2
    assert "error: config: unknown key 'bogus'" in res.stderr
    res = _serve("--data-dir", str(tmp_path / "d"), env={"WHEELSCHED_TICK_US": "-1"})
    assert res.returncode == 2
    assert "tick_us: must be an integer 1..1000000 (got '-1' from WHEELSCHED_TICK_US)" in res.stderr
    res = _serve()
    assert res.returncode == 2
    assert "data_dir is required" in res.stderr
    res = _serve("--data-dir", str(tmp_path / "d"), "--tokens-file", str(tmp_path / "missing"))
    assert res.returncode == 2
    assert "tokens_file: cannot read" in res.stderr
