"""Configuration: the shipped file works, mistakes are one line naming the key and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_loads_with_contract_keys():
    cfg = load_config(ROOT / "config.toml")
    assert cfg.store.url.startswith("sqlite+aiosqlite:///")
    assert cfg.store_url.endswith("/var/carebridge.db") and str(ROOT) in cfg.store_url
    assert cfg.keys.file and cfg.smtp.listen.startswith("127.0.0.1:")
    assert cfg.smtp.hostname and cfg.smtp.max_message_bytes > 0
    assert cfg.web.listen.startswith("127.0.0.1:") and cfg.web.base_url.startswith("http")
    assert cfg.delivery.relay == "" and cfg.delivery.maildir
    assert cfg.dns.nameservers == ()
    raw = tomllib.loads((ROOT / "config.toml").read_text())
    for section, key in [
        ("store", "url"),
        ("keys", "file"),
        ("smtp", "listen"),
        ("smtp", "hostname"),
        ("smtp", "max_message_bytes"),
        ("web", "listen"),
        ("web", "base_url"),
        ("delivery", "relay"),
        ("delivery", "maildir"),
        ("dns", "nameservers"),
    ]:
        assert key in raw[section], f"[{section}] {key} missing from the shipped config.toml"


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"smtp": {"listne": "x"}}, "smtp.listne", "not a known setting"),
        ({"smpt": {}}, "smpt", "not a known section"),
        ({"smtp": {"max_message_bytes": "big"}}, "smtp.max_message_bytes", "must be an integer"),
        ({"smtp": {"listen": "2525"}}, "smtp.listen", "host:port"),
        ({"dns": {"nameservers": "127.0.0.1"}}, "dns.nameservers", "list of strings"),
        ({"store": {"url": "mysql://x"}}, "store.url", "sqlite+aiosqlite"),
        ({"web": {"base_url": "ftp://x"}}, "web.base_url", "http"),
        ({"imap": {"c1": {"host": "h"}}}, "imap.c1.user", "required"),
        ({"smtp": {"require_starttls": 1}}, "smtp.require_starttls", "true or false"),
        ({"delivery": {"lease_seconds": 30}}, "delivery.lease_seconds", "greater than"),
        ({"inbound": {"sweep_seconds": 0}}, "inbound.sweep_seconds", "above 0"),
        ({"delivery": {"max_unconfirmed": 0}}, "delivery.max_unconfirmed", "1 or more"),
        ({"inbound": {"adopt_after_seconds": -1}}, "inbound.adopt_after_seconds", "above 0"),
    ],
)
def test_config_errors_name_key_and_fix(raw, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == key
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_invalid_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[store\nurl=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_config_is_frozen():
    cfg = parse_config({})
    with pytest.raises(AttributeError):
        cfg.smtp.listen = "0.0.0.0:25"  # type: ignore[misc]


def test_imap_sections(tmp_path: Path):
    cfg = parse_config(
        {
            "imap": {
                "north": {
                    "host": "127.0.0.1",
                    "user": "u",
                    "password_file": "pw",
                    "port": 1143,
                    "tls": False,
                }
            }
        }
    )
    assert cfg.imap["north"].port == 1143 and cfg.imap["north"].folder == "INBOX"
