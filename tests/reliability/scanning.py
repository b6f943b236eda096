"""Where PHI could end up, gathered for the canary scanner: tables, files, logs, CLI output.

Tables are read with plain SQL (``SELECT *``), bypassing the encrypted column types, so the
scanner sees exactly the bytes the database holds, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from gateway.config import LogConfig
from gateway.logs import JsonFormatter, setup_logging
from gateway.models import Base
from gateway.services import Services
from tests.reliability.canary import Scan

ROOT = Path(__file__).resolve().parents[2]


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8", "surrogateescape")


async def scan_tables(services: Services, scan: Scan) -> dict[str, int]:
    """Scan every table's raw stored values; returns the row count per table."""
    counts: dict[str, int] = {}
    async with services.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = (await conn.execute(text(f'SELECT * FROM "{table.name}"'))).all()
            counts[table.name] = len(rows)
            blob = b"\0".join(_as_bytes(v) for row in rows for v in row)
            scan.bytes(f"table {table.name}", blob)
    return counts


def sqlite_files(services: Services) -> list[Path]:
    """The SQLite database file and its WAL (and shared-memory index), if this is SQLite."""
    url = services.config.store_url
    if not url.startswith("sqlite"):
        return []
    base = Path(url.split(":///", 1)[1])
    return [p for p in (base, Path(f"{base}-wal"), Path(f"{base}-shm")) if p.exists()]


def scan_files(scan: Scan, paths: list[Path]) -> None:
    for p in paths:
        scan.bytes(f"file {p.name}", p.read_bytes())


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Production logging at DEBUG, every line (text and JSON forms) copied into a buffer.

    The root logger keeps its level: libraries log at WARNING and above in production too.
    """
    names = ["carebridge", "", "mail.log", "aiosmtpd", "aioimaplib", "uvicorn.access"]
    saved = {
        n: (lg.handlers[:], lg.level, lg.propagate) for n in names for lg in [logging.getLogger(n)]
    }
    buf = io.StringIO()
    setup_logging(LogConfig(level="DEBUG", format="text"))
    text_h = logging.StreamHandler(buf)
    text_h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    json_h = logging.StreamHandler(buf)
    json_h.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for lg in (logging.getLogger("carebridge"), root):
        lg.addHandler(text_h)
        lg.addHandler(json_h)
    try:
        yield buf
    finally:
        for n, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(n)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


def write_cli_config(services: Services, path: Path) -> Path:
    """A config file for the real ``carebridge`` command on the same store and keys."""
    keys = services.config.path(services.config.keys.file)
    path.write_text(
        f'[store]\nurl = "{services.config.store_url}"\n'
        f'[keys]\nfile = "{keys}"\n'
        '[log]\nlevel = "DEBUG"\n'
    )
    return path


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=config.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
