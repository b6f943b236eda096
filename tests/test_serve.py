"""`carebridge serve` as an operator runs it: a real process answering real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.cli import cb, write_config


def test_serve_answers_health_and_stops_on_sigterm(tmp_path: Path, free_port):
    web, smtp = free_port(), free_port()
    cfg = write_config(
        tmp_path,
        extra=f'[smtp]\nlisten = "127.0.0.1:{smtp}"\n',
    )
    text = cfg.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{web}"')
    cfg.write_text(text)
    assert cb(cfg, "keys", "init").returncode == 0
    assert cb(cfg, "db", "upgrade").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(cfg), "serve"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{web}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.1)
        assert ready is not None and ready.status_code == 200, ready and ready.text
        checks = ready.json()["checks"]
        assert checks["database"] and checks["keys"] and checks["web"]
        health = httpx.get(f"http://127.0.0.1:{web}/healthz", timeout=2)
        assert health.json() == {"status": "ok"}
        assert health.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in health.headers["content-security-policy"]
        metrics = httpx.get(f"http://127.0.0.1:{web}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert 'carebridge_outbound_queue_depth{state="queued"}' in metrics.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "Traceback" not in err
