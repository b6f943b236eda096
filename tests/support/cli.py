"""Running the real ``carebridge`` command in a subprocess, on a config written for the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, **extra: str) -> Path:
    cfg = tmp_path / "carebridge.toml"
    cfg.write_text(
        '[store]\nurl = "sqlite+aiosqlite:///cb.db"\n'
        '[keys]\nfile = "keys.json"\n'
        '[web]\nlisten = "127.0.0.1:0"\n'
        '[delivery]\nmaildir = "outbox"\n' + "".join(extra.values())
    )
    return cfg


def cb(
    cfg: Path | None, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway"]
    if cfg is not None:
        argv += ["--config", str(cfg)]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cfg.parent if cfg else None,
    )
