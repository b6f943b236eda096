"""IMAP intake for clinics whose replies land in an existing mailbox (``[imap.NAME]``).

One poller per section: connect (TLS unless ``tls = false``), SELECT the folder, remember
UIDVALIDITY and the highest UID committed (table ``imap_mailbox_state``), fetch what is new
with ``BODY.PEEK[]`` (nothing is marked read by looking), hand each message to the one intake
path, and only after the store commit returned move it to the processed folder (or flag it).
Then IDLE until the server pushes something, or poll every ``poll_seconds`` when the server
has no IDLE.

Killed at any point, it ingests each message exactly once: a message stored but not yet moved
is either at or below ``last_uid`` (moved without fetching again) or is fetched again and
recognised as a duplicate by its Message-ID hash. A new UIDVALIDITY starts the UIDs over; the
Message-ID dedupe still keeps old messages from being filed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses

from aioimaplib import IMAP4, IMAP4_SSL

from gateway.config import ImapConfig
from gateway.errors import CarebridgeError
from gateway.inbound import parsing
from gateway.inbound.intake import Intake, Stored
from gateway.inbound.routing import UNROUTED, Target, resolve_recipient
from gateway.models import ImapMailboxState
from gateway.services import Services

log = logging.getLogger("carebridge.imap")

_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_FETCH_UID = re.compile(rb"UID (\d+)")
PROCESSED_KEYWORD = "$CarebridgeProcessed"
# Headers where an MTA or the sender put the address the message was delivered to.
_RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc")


class ImapError(CarebridgeError):
    """The IMAP server refused something; the message says what, never credentials."""


def _ok(resp: object, what: str) -> None:
    if getattr(resp, "result", "") != "OK":
        raise ImapError(f"IMAP {what} failed: {getattr(resp, 'result', '?')}")


class ImapPoller:
    """One mailbox. ``poll_once`` is the unit tests drive; ``run`` loops with IDLE."""

    def __init__(self, services: Services, intake: Intake, name: str, batch: int = 50) -> None:
        self.services = services
        self.intake = intake
        self.name = name
        self.cfg: ImapConfig = services.config.imap[name]
        self.batch = batch
        self.client: IMAP4 | None = None
        self.uidvalidity = 0
        # Called after a batch is committed and before it is moved (tests simulate a kill here).
        self.after_store: Callable[[list[int]], Awaitable[None]] | None = None

    async def connect(self) -> None:
        cfg = self.cfg
        if cfg.tls:
            client: IMAP4 = IMAP4_SSL(
                cfg.host, cfg.port, ssl_context=ssl.create_default_context(), timeout=30
            )
        else:
            client = IMAP4(cfg.host, cfg.port, timeout=30)
        await client.wait_hello_from_server()
        password = self.services.config.path(cfg.password_file).read_text("utf-8").strip()
        _ok(await client.login(cfg.user, password), "LOGIN")
        if cfg.processed_folder:
            await client.create(cfg.processed_folder)  # NO when it exists: fine
        resp = await client.select(cfg.folder)
        _ok(resp, "SELECT")
        m = next((_UIDVALIDITY.search(ln) for ln in resp.lines if _UIDVALIDITY.search(ln)), None)
        if m is None:
            raise ImapError("IMAP SELECT gave no UIDVALIDITY")
        self.uidvalidity = int(m.group(1))
        self.client = client

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            if client.has_pending_idle():
                client.idle_done()
            try:
                await client.logout()
            except Exception as exc:  # the server may already be gone
                log.debug("imap %s: logout failed (%s)", self.name, type(exc).__name__)

    async def _state(self) -> int:
        """The last committed UID for this UIDVALIDITY (resetting on a new UIDVALIDITY)."""
        async with self.services.transaction() as session:
            row = await session.get(ImapMailboxState, self.name)
            if row is None:
                row = ImapMailboxState(
                    name=self.name,
                    folder=self.cfg.folder,
                    uidvalidity=self.uidvalidity,
                    last_uid=0,
                    updated_at=self.services.clock.now(),
                )
                session.add(row)
            elif row.uidvalidity != self.uidvalidity or row.folder != self.cfg.folder:
                log.warning("imap %s: UIDVALIDITY changed; starting UIDs over", self.name)
                row.uidvalidity, row.folder, row.last_uid = self.uidvalidity, self.cfg.folder, 0
            return int(row.last_uid)

    async def _save_last_uid(self, uid: int) -> None:
        async with self.services.transaction() as session:
            row = await session.get(ImapMailboxState, self.name, with_for_update=True)
            assert row is not None
            if uid > row.last_uid and row.uidvalidity == self.uidvalidity:
                row.last_uid = uid
                row.updated_at = self.services.clock.now()

    async def _search(self) -> list[int]:
        assert self.client is not None
        criteria = "ALL" if self.cfg.processed_folder else f"UNKEYWORD {PROCESSED_KEYWORD}"
        resp = await self.client.uid_search(criteria, charset=None)
        _ok(resp, "UID SEARCH")
        uids: list[int] = []
        for line in resp.lines:
            text = line.decode("ascii", "replace")
            if text.startswith("SEARCH"):
                text = text[len("SEARCH") :]
            uids.extend(int(t) for t in text.split() if t.isdigit())
        return sorted(set(uids))

    async def _fetch(self, uid: int) -> bytes | None:
        assert self.client is not None
        resp = await self.client.uid("fetch", str(uid), "(UID BODY.PEEK[])")
        _ok(resp, "UID FETCH")
        lines = resp.lines
        for i, line in enumerate(lines[:-1]):
            m = _FETCH_UID.search(line)
            if m and int(m.group(1)) == uid and isinstance(lines[i + 1], bytes | bytearray):
                return bytes(lines[i + 1])
        return None  # expunged meanwhile

    async def _mark_processed(self, uids: list[int]) -> None:
        assert self.client is not None
        if not uids:
            return
        uidset = ",".join(str(u) for u in uids)
        folder = self.cfg.processed_folder
        if not folder:
            _ok(await self.client.uid("store", uidset, f"+FLAGS ({PROCESSED_KEYWORD})"), "STORE")
        elif self.client.has_capability("MOVE"):
            _ok(await self.client.uid("move", uidset, folder), "UID MOVE")
        else:
            _ok(await self.client.uid("copy", uidset, folder), "UID COPY")
            _ok(await self.client.uid("store", uidset, "+FLAGS (\\Deleted)"), "STORE")
            _ok(await self.client.expunge(), "EXPUNGE")

    async def _targets(self, raw: bytes) -> list[Target]:
        cfg = self.services.config.inbound
        try:
            headers = parsing.header_block(raw, cfg.max_header_bytes)
        except parsing.MalformedMessage:
            return [Target(UNROUTED, None, None)]
        parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(headers)
        values = [str(v) for name in _RECIPIENT_HEADERS for v in parsed.get_all(name, [])]
        found: list[Target] = []
        now = self.services.clock.now()
        async with self.intake.read_sessions() as session:
            for _name, address in getaddresses(values):
                if not address:
                    continue
                target = await resolve_recipient(session, self.intake.routing, address, now)
                if target is not None and target not in found:
                    found.append(target)
        return found or [Target(UNROUTED, None, None)]

    async def poll_once(self) -> int:
        """Ingest everything new in the folder; returns how many messages were stored."""
        if self.client is None:
            await self.connect()
        last_uid = await self._state()
        uids = await self._search()
        # Committed before a crash but never moved: just move them now.
        await self._mark_processed([u for u in uids if u <= last_uid])
        fresh = [u for u in uids if u > last_uid]
        stored = 0
        for i in range(0, len(fresh), self.batch):
            chunk = fresh[i : i + self.batch]
            stored += await self._ingest(chunk)
        return stored

    async def _ingest(self, chunk: list[int]) -> int:
        fetched: list[tuple[int, bytes]] = []
        for uid in chunk:
            raw = await self._fetch(uid)
            if raw is not None:
                fetched.append((uid, raw))

        async def store(raw: bytes) -> int:
            targets = await self._targets(raw)
            outcome = await self.intake.receive(
                raw, source="imap", targets=targets, dedupe_scope=f"imap:{self.name}"
            )
            return len(outcome.inbound_ids) if isinstance(outcome, Stored) else 0

        # Concurrent receives share one group commit; any failure leaves the batch unmoved.
        counts = await asyncio.gather(*(store(raw) for _, raw in fetched))
        if self.after_store is not None:
            await self.after_store(chunk)
        await self._save_last_uid(max(chunk))
        await self._mark_processed([uid for uid, _ in fetched])
        log.info("imap %s: stored %d of %d fetched", self.name, sum(counts), len(fetched))
        return sum(counts)

    async def wait_for_news(self, stopping: asyncio.Event) -> None:
        """IDLE until the server pushes, or wait ``poll_seconds`` without IDLE support."""
        assert self.client is not None
        client = self.client
        if self.cfg.idle and client.has_capability("IDLE"):
            idle = await client.idle_start(timeout=self.cfg.poll_seconds)
            stop = asyncio.ensure_future(stopping.wait())
            push = asyncio.ensure_future(client.wait_server_push())
            await asyncio.wait({push, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in (push, stop):
                task.cancel()
            client.idle_done()
            await asyncio.wait_for(idle, 30)
            return
        try:
            await asyncio.wait_for(stopping.wait(), self.cfg.poll_seconds)
        except TimeoutError:
            return


class ImapPart:
    """A serve-loop part running one :class:`ImapPoller` with reconnects and backoff."""

    def __init__(self, services: Services, intake: Intake, name: str) -> None:
        self.name = f"imap.{name}"
        self.poller = ImapPoller(services, intake, name)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.poller.intake.recover()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                await self.poller.poll_once()
                backoff = 1.0
                await self.poller.wait_for_news(self._stopping)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # server gone, login refused, network: retry later
                log.error("imap %s: %s; retrying in %.0fs", self.name, type(exc).__name__, backoff)
                await self.poller.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                backoff = min(backoff * 2, 300.0)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            # Let it end its IDLE politely (DONE), or a LOGOUT would wait behind the IDLE.
            done, _ = await asyncio.wait({self._task}, timeout=5)
            if not done:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.poller.close()
        await self.poller.intake.close()
