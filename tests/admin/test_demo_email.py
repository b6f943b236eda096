"""``carebridge demo`` names the registration email it wrote only when the file is there.

Run through the real command line on a fresh SQLite store: once with a working outbox, once
with an outbox path that cannot be a directory (so delivery fails), where the demo must say so
in one line and exit non-zero instead of pointing the user at a file that does not exist.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.admin.helpers import Cli, write_toml


def _cli(tmp_path: Path) -> Cli:
    path = tmp_path / "config.toml"
    write_toml(
        path,
        {
            "store": {"url": "sqlite+aiosqlite:///var/carebridge.db"},
            "keys": {"file": "var/keys.json"},
            "smtp": {"enabled": False},
            "delivery": {"maildir": "var/outbox"},
        },
    )
    return Cli(path)


def test_demo_names_the_registration_email_it_wrote(tmp_path: Path) -> None:
    done = _cli(tmp_path)("demo", "--no-serve")
    assert done.returncode == 0, done.stderr
    match = re.search(r"^registration email written to (\S+\.eml) ", done.stdout, re.M)
    assert match, done.stdout
    written = Path(match.group(1))
    assert written.is_file() and written.parent == tmp_path / "var" / "outbox"
    assert b"DKIM-Signature:" in written.read_bytes()


def test_demo_fails_in_one_line_when_the_email_was_not_written(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "outbox").write_text("a file where the outbox directory should be")
    done = _cli(tmp_path)("demo", "--no-serve")
    assert done.returncode != 0
    assert "registration email written" not in done.stdout
    # What was seeded is still shown: the demo password is printed only once.
    assert re.search(r"^staff sign-in: .*, password \S+$", done.stdout, re.M), done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the registration email was not written to "), done.stderr
    assert "Traceback" not in done.stderr
