"""Faults the gateway must survive without losing or falsely acknowledging anything.

- The database refuses to commit: SMTP answers 451 (the sender keeps the message), never 250.
- The relay drops the connection in the middle of DATA: the notification is retried later
  and arrives exactly once.
- The disk holding the SQLite store fills up: 451 while full, 250 again once space is freed,
  and the database is intact.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from gateway import db
from gateway.crypto import KeyRing
from gateway.inbound.smtp import SmtpPart
from gateway.models import InboundMessage, Notification
from gateway.outbound import notify
from gateway.outbound.delivery import DeliveryPart
from gateway.services import Services, open_services
from tests.reliability.sink import Sink
from tests.reliability.stories import reply_mail, reply_world
from tests.support.world import World


class CommitRefused(Exception):
    pass


@pytest.fixture
async def smtp(rservices: Services) -> AsyncIterator[SmtpPart]:
    part = SmtpPart(rservices)
    await part.start()
    try:
        yield part
    finally:
        await part.stop()


async def _send(port: int, sender: str, to: str, raw: bytes) -> None:
    await aiosmtplib.send(raw, sender=sender, recipients=[to], hostname="127.0.0.1", port=port)


async def _inbound_count(services: Services) -> int:
    async with services.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(InboundMessage)) or 0)


async def test_refused_commit_answers_451_never_250(services: Services, world, smtp) -> None:
    rw = await reply_world(services, world)
    before = await _inbound_count(services)
    refusing = True

    def refuse(conn) -> None:  # type: ignore[no-untyped-def]
        if refusing:
            raise CommitRefused("injected: the database refuses to commit")

    # On the Engine class: every engine in the process, including any private writer engine
    # the intake keeps for its group commits, refuses to commit.
    event.listen(Engine, "commit", refuse)
    try:
        _mid, raw = reply_mail(rw.patient.email, rw.address)
        with pytest.raises(aiosmtplib.SMTPDataError) as caught:
            await _send(smtp.port, rw.patient.email, rw.address, raw)
        assert caught.value.code == 451, caught.value
        refusing = False
        assert await _inbound_count(services) == before, "a refused commit stored something"
        # The sender retries later, as SMTP senders do: now it is accepted, exactly once.
        await _send(smtp.port, rw.patient.email, rw.address, raw)
        await _send(smtp.port, rw.patient.email, rw.address, raw)
    finally:
        event.remove(Engine, "commit", refuse)
    await smtp.intake.drain()
    assert await _inbound_count(services) == before + 1


async def test_relay_dropping_mid_data_gets_a_retry(services: Services, world, with_config, clock):
    sink = await Sink().start()
    try:
        svc = with_config(services, delivery={"relay": sink.address, "maildir": ""})
        clinic = await world.clinic()
        patient = await world.patient(clinic)
        async with svc.transaction() as s:
            row = await notify.enqueue(
                s,
                svc.keyring,
                notice=notify.Notice(kind=notify.Kind.PASSWORD_RESET),
                clinic_id=clinic.id,
                recipient=patient.email,
                now=clock.now(),
                patient_id=patient.id,
            )
        part = DeliveryPart(svc)
        sink.behaviour.drop_after_bytes, sink.behaviour.drop_count = 200, 1
        assert await part.run_once() == 1
        assert sink.dropped == 1 and sink.messages == []
        async with svc.sessions() as s:
            after = await s.get(Notification, row.id)
        assert after is not None and after.state == "deferred", after and after.state
        assert after.attempts == 1 and after.next_attempt_at > clock.now()
        assert await part.run_once() == 0, "retried before its backoff ran out"
        clock.set(after.next_attempt_at)
        assert await part.run_once() == 1
        await part.stop()
        assert len(sink.messages) == 1 and sink.violations == []
        assert sink.messages[0].message_id.startswith(f"<{row.id}.")
        async with svc.sessions() as s:
            sent = await s.get(Notification, row.id)
        assert sent is not None and sent.state == "sent" and sent.attempts == 2
    finally:
        await sink.stop()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return r.returncode == 0


def _fill(path: Path) -> Path:
    """Fill the filesystem at ``path`` to the last byte (unbuffered, so nothing is pending)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 4096, 1):
            try:
                while os.write(fd, b"\0" * chunk) == chunk:
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


async def test_disk_full_answers_451_and_recovers(tmp_path, make_config, clock, dns):
    """SQLite only: the store's own file system runs out of space under a live SMTP part."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    disk = tmp_path / "small-disk"
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("mount -t tmpfs is not permitted in this environment")
    try:
        url = f"sqlite+aiosqlite:///{disk}/cb.db"
        await asyncio.to_thread(db.upgrade, url)
        services = await open_services(
            make_config(store_url=url, dns={"nameservers": [dns.nameserver]}),
            keyring=KeyRing.generate(),
            clock=clock,
        )
        try:
            await _disk_full_story(services, World(services), disk)
        finally:
            await services.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


async def _disk_full_story(services: Services, world, disk: Path) -> None:
    rw = await reply_world(services, world)
    part = SmtpPart(services)
    await part.start()
    try:
        before = await _inbound_count(services)
        filler = _fill(disk)
        # Bigger than any slack SQLite could still have in its pages (in RFC-length lines).
        big = ("x" * 70 + "\r\n") * 3000
        _mid, raw = reply_mail(rw.patient.email, rw.address, big)
        with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
            await _send(part.port, rw.patient.email, rw.address, raw)
        assert caught.value.code == 451, caught.value
        filler.unlink()
        await _send(part.port, rw.patient.email, rw.address, raw)
        await part.intake.drain()
        assert await _inbound_count(services) == before + 1
    finally:
        await part.stop()
    async with services.engine.connect() as conn:
        check = (await conn.exec_driver_sql("PRAGMA integrity_check")).scalar()
    assert check == "ok"
