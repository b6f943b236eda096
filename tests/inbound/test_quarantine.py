"""The operator's quarantine: list, show, release (re-runs the intake path), discard; every
action audited, and listings free of addresses and message text."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.careteam import threads
from gateway.cli import main
from gateway.models import AuditEvent, InboundMessage, QuarantineItem
from tests.inbound.helpers import Story, asend, compose, publish_key


def _config_file(story: Story, tmp_path: Path, dns_port: int) -> Path:
    cfg = story.services.config
    path = tmp_path / "cli.toml"
    path.write_text(
        f'[store]\nurl = "{cfg.store_url}"\n[keys]\nfile = "{cfg.path(cfg.keys.file)}"\n'
        f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\ntimeout_seconds = 2.0\n'
        '[log]\nlevel = "WARNING"\n'
    )
    return path


async def cli(capsys: pytest.CaptureFixture[str], cfg: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = 0
    try:
        await asyncio.to_thread(main, ["--config", str(cfg), *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


async def test_release_after_the_cause_is_fixed_files_the_reply(
    story, smtp, dns_server, tmp_path, capsys, clock
):
    clock.set(datetime.now(UTC))  # the CLI runs on the real clock: tokens must be live now
    cfg = _config_file(story, tmp_path, dns_server.port)
    signer = publish_key(dns_server, "example.org")
    published = dns_server.resolver.records.pop(("s1._domainkey.example.org", "TXT"))
    to = await story.reply_address()
    raw = signer.sign(compose(sender="pat@example.org", to=to, body="CANARY-PHI-7f3a held words"))
    await asend(smtp.port, "pat@example.org", [to], raw)
    await smtp.intake.drain()

    code, out, _ = await cli(capsys, cfg, "quarantine", "list", "--json")
    assert code == 0
    items = json.loads(out)
    assert [i["reason"] for i in items] == ["not_authenticated"]
    assert "CANARY-PHI-7f3a" not in out and "pat@example.org" not in out
    item_id = items[0]["id"]

    code, out, _ = await cli(capsys, cfg, "quarantine", "show", item_id)
    assert code == 0 and "not_authenticated" in out and "CANARY-PHI-7f3a" not in out
    code, out, _ = await cli(capsys, cfg, "quarantine", "show", item_id, "--raw")
    assert code == 0 and "CANARY-PHI-7f3a held words" in out

    # The sender's key was missing from DNS; once it is published, release files the reply.
    dns_server.resolver.records[("s1._domainkey.example.org", "TXT")] = published
    code, out, _ = await cli(capsys, cfg, "quarantine", "release", item_id, "--json")
    assert code == 0 and json.loads(out)["outcome"] == "filed"

    async with story.services.sessions() as s:
        bodies = [
            m.body for m in await threads.messages_of(s, story.thread.id, include_internal=False)
        ]
        item = await s.get(QuarantineItem, item_id)
        actions = (await s.scalars(select(AuditEvent.action))).all()
    assert "CANARY-PHI-7f3a held words" in bodies
    assert item is not None and (item.state, item.resolved_by) == ("released", "cli")
    assert {"quarantine.read", "quarantine.release", "inbound.filed"} <= set(actions)

    code, _, err = await cli(capsys, cfg, "quarantine", "release", item_id)
    assert code == 2 or code == 1
    assert "already released" in err and "Traceback" not in err


async def test_discard_erases_the_message_and_release_still_requarantines(
    story, smtp, dns_server, tmp_path, capsys, clock
):
    clock.set(datetime.now(UTC))
    cfg = _config_file(story, tmp_path, dns_server.port)
    to = await story.reply_address()
    for body in ("first unsigned", "second unsigned"):
        await asend(
            smtp.port, "pat@example.org", [to], compose(sender="pat@example.org", to=to, body=body)
        )
    await smtp.intake.drain()
    code, out, _ = await cli(capsys, cfg, "quarantine", "list", "--json")
    first, second = (i["id"] for i in json.loads(out))

    code, out, _ = await cli(capsys, cfg, "quarantine", "discard", first)
    assert code == 0
    code, _, err = await cli(capsys, cfg, "quarantine", "show", first, "--raw")
    assert code != 0 and "erased" in err

    # Nothing changed for the second: releasing it re-runs intake, which holds it again.
    code, out, _ = await cli(capsys, cfg, "quarantine", "release", second)
    assert code == 0 and "quarantined again: not_authenticated" in out
    code, out, _ = await cli(capsys, cfg, "quarantine", "list", "--json", "--state", "all")
    states = sorted(i["state"] for i in json.loads(out))
    assert states == ["discarded", "held", "released"]

    async with story.services.sessions() as s:
        rows = {r.id: r for r in (await s.scalars(select(InboundMessage))).all()}
        items = {i.id: i for i in (await s.scalars(select(QuarantineItem))).all()}
    assert rows[items[first].inbound_id].raw == b""
    assert rows[items[second].inbound_id].raw != b""

    code, _, err = await cli(capsys, cfg, "quarantine", "show", "no-such-item")
    assert code == 2 and "no quarantine item" in err
