"""The carebridge command as a user runs it: real processes, real files, one-line errors."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.support.cli import cb, write_config


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    assert cb(path, "keys", "init").returncode == 0
    assert cb(path, "db", "upgrade").returncode == 0
    return path


def test_keys_init_makes_0600_file_and_refuses_overwrite(tmp_path: Path):
    path = write_config(tmp_path)
    r = cb(path, "keys", "init")
    assert r.returncode == 0, r.stderr
    mode = stat.S_IMODE((tmp_path / "keys.json").stat().st_mode)
    assert mode == 0o600
    again = cb(path, "keys", "init")
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_bad_config_is_one_line_exit_2(tmp_path: Path):
    path = write_config(tmp_path, extra="[smtp]\nlisten = 25\n")
    r = cb(path, "clinic", "list")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "smtp.listen" in r.stderr and "Traceback" not in r.stderr
    r = cb(tmp_path / "missing.toml", "clinic", "list")
    assert r.returncode == 2 and "not found" in r.stderr


def test_config_from_environment(cfg: Path, tmp_path: Path):
    r = cb(None, "clinic", "list", "--json", env={"CAREBRIDGE_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_missing_key_file_fails_closed(cfg: Path, tmp_path: Path):
    (tmp_path / "keys.json").unlink()
    r = cb(cfg, "clinic", "list")
    assert r.returncode == 2
    assert "carebridge keys init" in r.stderr and "Traceback" not in r.stderr


def test_serve_refuses_unmigrated_database(tmp_path: Path):
    path = write_config(tmp_path)
    cb(path, "keys", "init")
    r = cb(path, "serve")
    assert r.returncode == 2
    assert "carebridge db upgrade" in r.stderr and "Traceback" not in r.stderr


def test_enrol_list_rotate_and_audit_story(cfg: Path, tmp_path: Path):
    r = cb(
        cfg,
        "clinic",
        "add",
        "north",
        "--name",
        "North Clinic",
        "--timezone",
        "America/Chicago",
        "--reply-domain",
        "reply.north.example",
    )
    assert r.returncode == 0, r.stderr
    r = cb(
        cfg,
        "patient",
        "enroll",
        "--clinic",
        "north",
        "--given-name",
        "Zebulon",
        "--family-name",
        "Canaryfield",
        "--dob",
        "1970-01-02",
        "--email",
        "canary-zq7@example.org",
    )
    assert r.returncode == 0, r.stderr
    listing = json.loads(cb(cfg, "patient", "list", "--json").stdout)
    assert len(listing) == 1 and "name" not in listing[0]
    assert listing[0]["status"] == "pending" and "email not confirmed" in listing[0]["pending"]
    assert "Zebulon" not in cb(cfg, "patient", "list").stdout

    r = cb(cfg, "keys", "rotate", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert re.search(r"active key is now k2; re-encrypted \d+ values", r.stdout)
    status = json.loads(cb(cfg, "keys", "status", "--json").stdout)
    by_id = {k["key_id"]: k for k in status}
    assert by_id["k1"]["values"] == 0 and by_id["k1"]["state"] == "retired"
    assert by_id["k2"]["values"] > 0
    phi = json.loads(cb(cfg, "patient", "list", "--show-phi", "--json").stdout)
    assert phi[0]["name"] == "Zebulon Canaryfield"

    ok = cb(cfg, "audit", "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout
    con = sqlite3.connect(tmp_path / "cb.db")
    con.execute("UPDATE audit_event SET action = 'patient.delete' WHERE seq = 3")
    con.commit()
    con.close()
    bad = cb(cfg, "audit", "verify", "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["broken_seq"] == 3


def test_bad_arguments_say_what_was_expected(cfg: Path):
    r = cb(
        cfg,
        "patient",
        "enroll",
        "--clinic",
        "nowhere",
        "--given-name",
        "A",
        "--family-name",
        "B",
        "--dob",
        "23/04/1980",
        "--email",
        "a@example.org",
    )
    assert r.returncode == 2 and "YYYY-MM-DD" in r.stderr
    r = cb(
        cfg,
        "patient",
        "enroll",
        "--clinic",
        "nowhere",
        "--given-name",
        "A",
        "--family-name",
        "B",
        "--dob",
        "1980-04-23",
        "--email",
        "a@example.org",
    )
    assert r.returncode == 2 and "no clinic 'nowhere'" in r.stderr
    r = cb(cfg, "clinic", "add", "Bad Slug", "--name", "x")
    assert r.returncode == 2 and "not valid" in r.stderr
    r = cb(cfg, "clinic", "add", "ok", "--name", "x", "--timezone", "Mars/Base")
    assert r.returncode == 2 and "IANA" in r.stderr
    r = cb(
        cfg,
        "staff",
        "add",
        "--email",
        "x@example.org",
        "--name",
        "X",
        "--role",
        "janitor",
        "--clinic",
        "nowhere",
    )
    assert r.returncode == 2
    for res in (r,):
        assert "Traceback" not in res.stderr


def test_patient_email_with_header_injection_is_refused(cfg: Path):
    cb(cfg, "clinic", "add", "south", "--name", "South")
    r = cb(
        cfg,
        "patient",
        "enroll",
        "--clinic",
        "south",
        "--given-name",
        "A",
        "--family-name",
        "B",
        "--dob",
        "1980-04-23",
        "--email",
        "a@example.org\nBcc: evil@example.com",
    )
    assert r.returncode == 2 and "line break" in r.stderr
    assert "evil" not in r.stderr
