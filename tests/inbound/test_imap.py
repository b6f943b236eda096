"""IMAP intake against a real Dovecot started on loopback: messages are filed, moved only after
they are committed, and a poller killed mid-batch ingests each message exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aioimaplib import IMAP4
from sqlalchemy import func, select

from gateway.careteam import threads
from gateway.config import ImapConfig
from gateway.inbound.imap import ImapPart, ImapPoller
from gateway.models import ImapMailboxState, InboundMessage
from gateway.services import Services
from tests.inbound.helpers import Story, compose, publish_key

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
pytestmark = pytest.mark.skipif(
    not os.path.exists(DOVECOT), reason="dovecot-imapd is not installed (scripts/bootstrap --test)"
)

CONF = """
instance_name = cb-test-{tag}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
disable_plaintext_auth = no
ssl = no
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {dir}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={dir}/mail/%n
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


@dataclass
class Dovecot:
    port: int
    user: str
    password: str
    password_file: Path


@pytest.fixture
def dovecot(tmp_path: Path, free_port) -> Iterator[Dovecot]:
    # Dovecot's auth process runs as its own user: pytest's 0700 temp tree is closed to it.
    d = Path(tempfile.mkdtemp(prefix="cb-dovecot-"))
    for sub in ("run", "state", "mail"):
        (d / sub).mkdir(parents=True)
    os.chmod(d, 0o755)  # noqa: S103 (test server data, no secrets of value)
    shutil.chown(d / "mail", "nobody", "nogroup")
    password = secrets.token_hex(8)
    (d / "users").write_text(f"clinicbox:{{PLAIN}}{password}\n")
    pw_file = tmp_path / "imap-password"
    pw_file.write_text(password + "\n")
    port = free_port()
    conf = d / "dovecot.conf"
    conf.write_text(CONF.format(dir=d, port=port, tag=secrets.token_hex(4)))
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        import socket
        import time

        deadline = time.monotonic() + 10
        while True:  # the port answers ~0.05 s after start; nothing to await but the socket
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("dovecot did not start") from None
                time.sleep(0.02)
        yield Dovecot(port, "clinicbox", password, pw_file)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
        shutil.rmtree(d, ignore_errors=True)


def _with_imap(services: Services, box: Dovecot, **kw: object) -> Services:
    section = ImapConfig(
        host="127.0.0.1",
        port=box.port,
        tls=False,
        user=box.user,
        password_file=str(box.password_file),
        folder="INBOX",
        processed_folder="Processed",
        poll_seconds=5,
        **kw,  # type: ignore[arg-type]
    )
    return dataclasses.replace(
        services, config=dataclasses.replace(services.config, imap={"clinic": section})
    )


@pytest.fixture
async def mailbox(dovecot: Dovecot) -> AsyncIterator[IMAP4]:
    client = IMAP4("127.0.0.1", dovecot.port, timeout=10)
    await client.wait_hello_from_server()
    assert (await client.login(dovecot.user, dovecot.password)).result == "OK"
    yield client
    await client.logout()


async def _count(client: IMAP4, folder: str) -> int:
    resp = await client.status(folder, "(MESSAGES)")
    if resp.result != "OK":
        return 0
    text = b" ".join(resp.lines).decode()
    return int(text.split("MESSAGES")[1].strip(" )").split()[0].strip(")"))


async def _rows(services: Services) -> list[InboundMessage]:
    async with services.sessions() as s:
        return list((await s.scalars(select(InboundMessage))).all())


async def test_reply_in_mailbox_is_filed_then_moved(
    make_intake, story: Story, dovecot, mailbox, dns_server
):
    services = _with_imap(story.services, dovecot)
    signer = publish_key(dns_server, "example.org")
    to = await story.reply_address()
    raw = signer.sign(compose(sender="pat@example.org", to=to, body="Feeling better, thanks."))
    assert (await mailbox.append(raw, mailbox="INBOX")).result == "OK"

    intake = make_intake(services)
    poller = ImapPoller(services, intake, "clinic")
    try:
        assert await poller.poll_once() == 1
        await intake.drain()
        assert await _count(mailbox, "INBOX") == 0
        assert await _count(mailbox, "Processed") == 1
        assert await poller.poll_once() == 0  # nothing new, nothing twice
    finally:
        await poller.close()
    rows = await _rows(services)
    assert [(r.source, r.route, r.state) for r in rows] == [("imap", "reply", "filed")]
    async with services.sessions() as s:
        bodies = [
            m.body for m in await threads.messages_of(s, story.thread.id, include_internal=False)
        ]
        state = await s.get(ImapMailboxState, "clinic")
    assert "Feeling better, thanks." in bodies
    assert state is not None and state.last_uid >= 1


async def test_poller_killed_mid_batch_ingests_each_message_once(
    make_intake, story, dovecot, mailbox
):
    services = _with_imap(story.services, dovecot)
    to = f"postmaster@{story.clinic.reply_domain}"
    for i in range(5):
        raw = compose(sender=f"ops{i}@example.org", to=to, body=f"note {i}")
        assert (await mailbox.append(raw, mailbox="INBOX")).result == "OK"

    class Killed(BaseException):
        pass

    async def kill(_uids: list[int]) -> None:
        raise Killed  # committed to the store, not yet recorded as done nor moved

    first = ImapPoller(services, make_intake(services), "clinic", batch=2)
    first.after_store = kill
    with pytest.raises(Killed):
        await first.poll_once()
    await first.close()
    assert len(await _rows(services)) == 2  # the first batch reached the store
    assert await _count(mailbox, "INBOX") == 5  # but nothing was moved

    intake = make_intake(services)
    second = ImapPoller(services, intake, "clinic", batch=2)
    try:
        await second.poll_once()
        await intake.drain()
    finally:
        await second.close()
    rows = await _rows(services)
    bodies = sorted(r.raw.split(b"\r\n\r\n", 1)[1].strip() for r in rows)
    assert bodies == [f"note {i}".encode() for i in range(5)]  # each exactly once
    assert {r.state for r in rows} == {"kept"}
    assert await _count(mailbox, "INBOX") == 0
    assert await _count(mailbox, "Processed") == 5


async def test_idle_push_brings_new_mail(make_intake, story, dovecot, mailbox):
    services = _with_imap(story.services, dovecot, idle=True)
    intake = make_intake(services)
    part = ImapPart(services, intake, "clinic")
    arrived = asyncio.Event()

    async def note(_uids: list[int]) -> None:
        arrived.set()

    part.poller.after_store = note
    await part.start()
    try:
        # Let the first (empty) poll finish and the poller go idle before mail arrives.
        while not (part.poller.client and part.poller.client.has_pending_idle()):
            await asyncio.sleep(0.01)
        raw = compose(sender="ops@example.org", to=f"abuse@{story.clinic.reply_domain}", body="hi")
        assert (await mailbox.append(raw, mailbox="INBOX")).result == "OK"
        await asyncio.wait_for(arrived.wait(), 4)  # well before the 5 s polling fallback
        await intake.drain()
    finally:
        await part.stop()
    async with services.sessions() as s:
        n = await s.scalar(select(func.count()).select_from(InboundMessage))
    assert n == 1


async def test_refetch_after_token_expiry_is_still_a_duplicate(
    make_intake, story, dovecot, mailbox, clock
):
    services = _with_imap(story.services, dovecot)
    to = await story.reply_address()
    raw = compose(sender="pat@example.org", to=to, body="stored before the kill")
    assert (await mailbox.append(raw, mailbox="INBOX")).result == "OK"

    class Killed(BaseException):
        pass

    async def kill(_uids: list[int]) -> None:
        raise Killed

    first = ImapPoller(services, make_intake(services), "clinic")
    first.after_store = kill
    with pytest.raises(Killed):
        await first.poll_once()
    await first.close()
    # The token expires before the poller comes back: the address no longer routes.
    clock.advance(hours=services.config.tokens.reply_address_hours + 1)
    intake = make_intake(services)
    second = ImapPoller(services, intake, "clinic")
    try:
        await second.poll_once()
        await intake.drain()
    finally:
        await second.close()
    rows = await _rows(services)
    assert len(rows) == 1 and rows[0].route == "reply"
    assert await _count(mailbox, "INBOX") == 0


async def test_polling_fallback_without_idle(make_intake, story, dovecot, mailbox):
    services = _with_imap(story.services, dovecot, idle=False)
    services = dataclasses.replace(
        services,
        config=dataclasses.replace(
            services.config,
            imap={"clinic": dataclasses.replace(services.config.imap["clinic"], poll_seconds=1)},
        ),
    )
    intake = make_intake(services)
    part = ImapPart(services, intake, "clinic")
    arrived = asyncio.Event()

    async def note(_uids: list[int]) -> None:
        arrived.set()

    part.poller.after_store = note
    await part.start()
    try:
        raw = compose(sender="ops@example.org", to=f"abuse@{story.clinic.reply_domain}", body="p")
        assert (await mailbox.append(raw, mailbox="INBOX")).result == "OK"
        await asyncio.wait_for(arrived.wait(), 5)  # picked up by the next 1 s poll
        assert part.poller.client is not None and not part.poller.client.has_pending_idle()
    finally:
        await part.stop()
