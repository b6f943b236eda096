"""A loopback SMTP sink that records the raw dialogue and can misbehave on purpose.

Deliberately not aiosmtpd: the point is to see exactly what a client put on the wire (every
command line, every DATA byte) and to fail in ways a well-behaved server never does, such as
closing the socket halfway through DATA. Used as the relay in the canary, fuzz, fault, crash,
soak and scale-out suites, in-process (``await Sink().start()``) or as its own process
(``python -m tests.reliability.sink --port N --ledger FILE`` for the bench scripts, so a killed
carebridge cannot take the ledger with it).

A protocol check runs on every connection: the command sequence must be EHLO/HELO, then per
transaction MAIL, RCPT+, DATA, the message, and QUIT/RSET/NOOP only. Anything else (an unknown
verb, a second MAIL inside a transaction, a command smuggled into DATA with a bare LF dot) is
recorded in :attr:`Sink.violations`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

_KNOWN = {b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"QUIT"}


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    data: bytes
    at: float
    conn: int

    @property
    def message_id(self) -> str:
        headers = BytesHeaderParser(policy=compat32).parsebytes(self.data)
        return str(headers.get("Message-ID", "")).strip()

    def header(self, name: str) -> str:
        headers = BytesHeaderParser(policy=compat32).parsebytes(self.data)
        return str(headers.get(name, ""))


@dataclass
class Behaviour:
    """How the sink answers; tests change it on the fly."""

    # Close the socket after this many DATA bytes, for the next ``drop_count`` messages.
    drop_after_bytes: int = 0
    drop_count: int = 0
    # Reply to end-of-data with this (e.g. "451 4.3.0 try later" or a 550 echoing the rcpt).
    data_reply: str = "250 2.0.0 queued"
    rcpt_reply: str = "250 2.1.5 ok"
    # Seconds to wait before answering end-of-data (slow relay).
    data_delay: float = 0.0


@dataclass
class Sink:
    host: str = "127.0.0.1"
    port: int = 0
    behaviour: Behaviour = field(default_factory=Behaviour)
    ledger: Path | None = None
    messages: list[Received] = field(default_factory=list)
    transcript: bytearray = field(default_factory=bytearray)
    violations: list[str] = field(default_factory=list)
    connections: int = 0
    dropped: int = 0
    _server: asyncio.Server | None = None
    _arrived: asyncio.Condition | None = None

    async def start(self) -> Sink:
        self._arrived = asyncio.Condition()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Wait (on an event, not a sleep loop) until ``count`` messages have arrived."""
        assert self._arrived is not None
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.messages) >= count), timeout
            )
        return self.messages

    async def _record(self, msg: Received) -> None:
        self.messages.append(msg)
        if self.ledger is not None:
            with self.ledger.open("a") as f:
                doc = {"message_id": msg.message_id, "rcpt": msg.rcpt_to, "at": msg.at}
                f.write(json.dumps(doc) + "\n")
        assert self._arrived is not None
        async with self._arrived:
            self._arrived.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            await self._session(reader, writer, conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            return  # the sink is stopping: the session ends here, quietly
        finally:
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, line: str) -> None:
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: int
    ) -> None:
        await self._reply(writer, "220 sink.test ESMTP")
        state = "greet"
        mail_from, rcpts = "", []
        while True:
            line = await reader.readline()
            if not line:
                return
            self.transcript += line
            verb = line[:4].upper()
            if not line.endswith(b"\r\n") or b"\r" in line[:-2] or b"\n" in line[:-1]:
                self.violations.append(f"conn {conn}: malformed command line {line[:80]!r}")
            if verb not in _KNOWN:
                self.violations.append(f"conn {conn}: unknown command {line[:80]!r}")
                await self._reply(writer, "500 5.5.1 unknown command")
                continue
            if verb in (b"EHLO", b"HELO"):
                state = "ready"
                await self._reply(writer, "250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8")
            elif verb == b"MAIL":
                if state != "ready":
                    self.violations.append(f"conn {conn}: MAIL in state {state}")
                state, mail_from, rcpts = "mail", _path(line), []
                await self._reply(writer, "250 2.1.0 ok")
            elif verb == b"RCPT":
                if state not in ("mail", "rcpt"):
                    self.violations.append(f"conn {conn}: RCPT in state {state}")
                rcpts.append(_path(line))
                state = "rcpt"
                reply = self.behaviour.rcpt_reply.replace("{rcpt}", rcpts[-1])
                await self._reply(writer, reply)
            elif verb == b"DATA":
                if state != "rcpt":
                    self.violations.append(f"conn {conn}: DATA in state {state}")
                await self._reply(writer, "354 go ahead")
                data = await self._data(reader, conn)
                if data is None:
                    return  # dropped on purpose: the client must retry
                await asyncio.sleep(self.behaviour.data_delay)
                reply = self.behaviour.data_reply.replace("{rcpt}", ",".join(rcpts))
                if reply.startswith("250"):
                    await self._record(Received(mail_from, rcpts, data, time.time(), conn))
                await self._reply(writer, reply)
                state = "ready"
            elif verb == b"RSET":
                state = "ready" if state != "greet" else state
                await self._reply(writer, "250 2.0.0 ok")
            elif verb == b"NOOP":
                await self._reply(writer, "250 2.0.0 ok")
            elif verb == b"QUIT":
                await self._reply(writer, "221 2.0.0 bye")
                return

    async def _data(self, reader: asyncio.StreamReader, conn: int) -> bytes | None:
        b = self.behaviour
        buf = bytearray()
        bare = False
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("client went away in DATA")
            # A bare LF or CR lets a lenient server see an end-of-data ("\n.\n") the sender
            # never meant: the SMTP smuggling shape. A correct client sends CRLF only.
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                bare = True
            if b.drop_count > 0 and len(buf) + len(line) >= b.drop_after_bytes:
                b.drop_count -= 1
                self.dropped += 1
                return None
            if line == b".\r\n":
                break
            buf += line[1:] if line.startswith(b".") else line
        if bare:
            self.violations.append(f"conn {conn}: bare CR/LF end-of-data candidate in DATA")
        return bytes(buf)


def _path(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    m = re.search(r"<([^>]*)>", text)
    return m.group(1) if m else text.split(":", 1)[-1].strip()


async def _main(args: argparse.Namespace) -> None:
    sink = Sink(port=args.port, ledger=Path(args.ledger) if args.ledger else None)
    await sink.start()
    print(f"sink listening on {sink.address}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="loopback SMTP sink for the bench scripts")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ledger", default="")
    asyncio.run(_main(parser.parse_args()))
