"""The sink itself: a test peer that cannot notice anything proves nothing."""

from __future__ import annotations

import aiosmtplib

from tests.reliability.sink import Sink


async def test_sink_records_messages_and_flags_smuggled_commands() -> None:
    sink = await Sink().start()
    try:
        await aiosmtplib.send(
            b"Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n",
            sender="a@example.org",
            recipients=["b@example.org"],
            hostname="127.0.0.1",
            port=sink.port,
        )
        got = await sink.wait_for(1)
        assert got[0].message_id == "<a@b>" and got[0].rcpt_to == ["b@example.org"]
        assert sink.violations == []

        reader, writer = await __import__("asyncio").open_connection("127.0.0.1", sink.port)
        await reader.readline()
        for cmd in (b"EHLO x\r\n", b"MAIL FROM:<a@x>\r\n", b"RCPT TO:<b@x>\r\n", b"DATA\r\n"):
            writer.write(cmd)
            while (await reader.readline())[3:4] != b" ":
                pass
        writer.write(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\r\n.\r\nXEVL\r\nQUIT\r\n")
        await writer.drain()
        while await reader.readline():
            pass
        writer.close()
        assert any("bare CR/LF" in v for v in sink.violations), sink.violations
        assert any("unknown command" in v for v in sink.violations), sink.violations
    finally:
        await sink.stop()


async def test_sink_drops_mid_data_when_told() -> None:
    sink = await Sink().start()
    sink.behaviour.drop_after_bytes, sink.behaviour.drop_count = 10, 1
    try:
        try:
            await aiosmtplib.send(
                b"Subject: hi\r\n\r\n" + b"x" * 100 + b"\r\n",
                sender="a@example.org",
                recipients=["b@example.org"],
                hostname="127.0.0.1",
                port=sink.port,
            )
            raise AssertionError("the drop went unnoticed")
        except aiosmtplib.SMTPException:
            pass
        assert sink.dropped == 1 and sink.messages == []
    finally:
        await sink.stop()
