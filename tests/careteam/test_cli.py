"""The care-team commands as an operator runs them, on a real store.

Most calls go through typer's runner in this process (a fresh interpreter costs ~2 s each);
the error cases run the real ``carebridge`` process, because the one-line error (no
traceback) is made by ``main()`` around the app.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from tests.support.cli import cb as cb_process
from tests.support.cli import write_config


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cb(cfg: Path, *args: str) -> Ran:
    # The CLI configures the "carebridge" logger for a process of its own (handler on the
    # runner's stderr, no propagation); put it back so later tests' caplog still sees logs.
    logger = logging.getLogger("carebridge")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        result = CliRunner().invoke(app, ["--config", str(cfg), *args])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cb(path, "keys", "init").returncode == 0
    assert cb(path, "db", "upgrade").returncode == 0
    r = cb(path, "clinic", "add", "north", "--name", "North Clinic", "--reply-domain",
           "reply.north.example", "--timezone", "America/Chicago")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return path


def test_apikey_create_list_revoke(cfg: Path) -> None:
    r = cb(cfg, "apikey", "create", "lab-system", "--role", "integration")
    assert r.returncode == 0, r.stderr
    value = r.stdout.strip()
    assert value.startswith("cbk_") and len(value) > 40
    prefix = value.split("_")[1]
    assert "cannot be shown again" in r.stderr
    # Only the hash is stored.
    assert value.encode() not in (cfg.parent / "cb.db").read_bytes()

    listed = json.loads(cb(cfg, "apikey", "list", "--json").stdout)
    assert [(k["prefix"], k["role"], k["revoked"]) for k in listed] == [
        (prefix, "integration", False)
    ]
    assert value not in json.dumps(listed)

    assert cb(cfg, "apikey", "revoke", prefix).returncode == 0
    listed = json.loads(cb(cfg, "apikey", "list", "--json").stdout)
    assert listed[0]["revoked"] is True

    bad = cb_process(cfg, "apikey", "create", "x", "--role", "root")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "role" in bad.stderr
    missing = cb_process(cfg, "apikey", "revoke", "nope")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_routing_rules_in_order_and_editable(cfg: Path) -> None:
    rules = json.loads(cb(cfg, "routing", "list", "--clinic", "north", "--json").stdout)
    assert [(r["request_type"], r["pool"]) for r in rules] == [
        ("appointment", "appointments"),
        ("medication_renewal", "refills"),
        ("immunization_record", "records"),
        ("question", "care-team"),
    ]
    added = cb(cfg, "pool", "add", "--clinic", "north", "dr-x", "--name", "Dr. X's team")
    assert added.returncode == 0
    staffed = cb(cfg, "staff", "add", "--clinic", "north", "--email", "x@north.example",
                 "--name", "Dr. X", "--role", "provider")  # fmt: skip
    assert staffed.returncode == 0, staffed.stderr
    staff_id = staffed.stdout.split()[1]
    assert cb(cfg, "pool", "add-member", "--clinic", "north", "dr-x", staff_id).returncode == 0
    r = cb(cfg, "routing", "add", "--clinic", "north", "--type", "*", "--pool", "dr-x",
           "--sla-hours", "4")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rules = json.loads(cb(cfg, "routing", "list", "--clinic", "north", "--json").stdout)
    last = rules[-1]
    assert (last["position"], last["request_type"], last["pool"]) == (5, "*", "dr-x")
    assert last["sla_hours"] == 4
    assert cb(cfg, "routing", "move", "--clinic", "north", last["id"], "--up").returncode == 0
    rules = json.loads(cb(cfg, "routing", "list", "--clinic", "north", "--json").stdout)
    assert [r["request_type"] for r in rules][3:] == ["*", "question"]
    assert cb(cfg, "routing", "remove", "--clinic", "north", last["id"]).returncode == 0
    assert len(json.loads(cb(cfg, "routing", "list", "--clinic", "north", "--json").stdout)) == 4

    bad = cb_process(
        cfg, "routing", "add", "--clinic", "north", "--type", "pizza", "--pool", "dr-x"
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "pizza" in bad.stderr
    table = cb(cfg, "pool", "list", "--clinic", "north")
    assert "refills" in table.stdout and "dr-x" in table.stdout


def test_calendar_show_and_set(cfg: Path) -> None:
    shown = json.loads(cb(cfg, "calendar", "show", "--clinic", "north", "--json").stdout)
    assert shown["timezone"] == "America/Chicago"
    assert shown["hours"]["mon"] == "08:00-17:00" and shown["hours"]["sat"] == ""
    r = cb(cfg, "calendar", "set", "--clinic", "north", "--hours", "sat=09:00-12:00",
           "--hours", "fri=", "--holiday", "2026-12-25", "--country", "US")  # fmt: skip
    assert r.returncode == 0, r.stderr
    shown = json.loads(cb(cfg, "calendar", "show", "--clinic", "north", "--json").stdout)
    assert shown["hours"]["sat"] == "09:00-12:00" and shown["hours"]["fri"] == ""
    assert shown["hours"]["mon"] == "08:00-17:00"
    assert shown["holidays"] == ["2026-12-25"] and shown["holiday_country"] == "US"
    bad = cb_process(cfg, "calendar", "set", "--clinic", "north", "--hours", "mon=8-5pm")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "mon" in bad.stderr
    shown = json.loads(cb(cfg, "calendar", "show", "--clinic", "north", "--json").stdout)
    assert shown["hours"]["mon"] == "08:00-17:00"


def test_in_process_cli_leaves_logging_as_it_found_it(cfg: Path) -> None:
    logger = logging.getLogger("carebridge")
    before = (logger.handlers[:], logger.propagate)
    cb(cfg, "routing", "list", "--clinic", "north")
    assert (logger.handlers[:], logger.propagate) == before
