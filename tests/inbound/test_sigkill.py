"""Nothing acknowledged is lost: ``carebridge serve`` runs as a real process on a temporary
config, a load generator sends to it over SMTP, the process is SIGKILLed mid-stream, and every
message that got 250 is in the store afterwards (and is processed at the next start)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from gateway.models import InboundMessage
from tests.inbound.helpers import Story, compose

# Timing-bound: scripts/test runs these alone, after the parallel part.
pytestmark = pytest.mark.serial

CAREBRIDGE = [sys.executable, "-c", "from gateway.cli import main; main()"]
SENDERS = 8
KILL_AFTER = 40  # acknowledged messages before the kill


def _config(story: Story, tmp_path: Path, port: int) -> Path:
    cfg = story.services.config
    path = tmp_path / "serve.toml"
    path.write_text(
        f'[store]\nurl = "{cfg.store_url}"\n[keys]\nfile = "{cfg.path(cfg.keys.file)}"\n'
        f'[smtp]\nlisten = "127.0.0.1:{port}"\nhostname = "mx.test.example"\n'
        "[web]\nenabled = false\n[delivery]\nenabled = false\n[scheduler]\nenabled = false\n"
        '[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout_seconds = 0.5\n'
        '[log]\nlevel = "INFO"\n'
    )
    return path


async def test_every_acknowledged_message_survives_sigkill(make_intake, story, tmp_path, free_port):
    port = free_port()
    cfg = _config(story, tmp_path, port)
    proc = await asyncio.create_subprocess_exec(
        *CAREBRIDGE,
        "--config",
        str(cfg),
        "serve",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    try:
        while True:  # the part logs once it listens: an event to await, not a sleep
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "carebridge serve exited during start-up"
            if b"smtp listening" in line:
                break
        drain = asyncio.create_task(proc.stderr.read())

        to = f"postmaster@{story.clinic.reply_domain}"
        acknowledged: list[str] = []
        enough = asyncio.Event()
        counter = iter(range(1_000_000))

        async def sender() -> None:
            while True:
                n = next(counter)
                mid = f"<load-{n}@example.org>"
                raw = compose(sender="load@example.org", to=to, body=f"load {n}", message_id=mid)
                try:
                    errors, _ = await aiosmtplib.send(
                        raw,
                        sender="load@example.org",
                        recipients=[to],
                        hostname="127.0.0.1",
                        port=port,
                        timeout=10,
                    )
                except (aiosmtplib.SMTPException, OSError):
                    return  # the server is gone
                if not errors:
                    acknowledged.append(mid)
                    if len(acknowledged) >= KILL_AFTER:
                        enough.set()

        senders = [asyncio.create_task(sender()) for _ in range(SENDERS)]
        await asyncio.wait_for(enough.wait(), 60)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await asyncio.gather(*senders)
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert proc.returncode == -signal.SIGKILL
    async with story.services.sessions() as s:
        rows = (await s.scalars(select(InboundMessage))).all()
    stored = b"\n".join(r.raw for r in rows)
    missing = [mid for mid in acknowledged if mid.encode() not in stored]
    assert len(acknowledged) >= KILL_AFTER
    assert missing == []

    # The next start processes whatever the kill interrupted; nothing stays "received".
    intake = make_intake(story.services)
    await intake.recover()
    await intake.drain()
    async with story.services.sessions() as s:
        states = set((await s.scalars(select(InboundMessage.state))).all())
    assert states == {"kept"}
