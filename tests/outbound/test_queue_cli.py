"""``carebridge queue``: an operator inspects and repairs the outbound queue from a shell.

Runs the real entry point against the test's store. No output ever contains a
recipient address; mistakes get one line and exit code 2, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import update

from gateway.cli import main
from gateway.models import Notification
from gateway.portal.invitations import invite


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


async def _run(config: Path, *args: str) -> tuple[int, str, str]:
    """The real entry point (``carebridge --config ... queue ...``), in a thread because it
    runs its own event loop; a subprocess per call would cost ~1 s of imports each."""
    return await asyncio.to_thread(_main, ["--config", str(config), "queue", *args])


async def test_status_list_show_retry_purge(services, world, tmp_path):
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[store]\nurl = "{services.config.store.url}"\n'
        f'[keys]\nfile = "{tmp_path / "keys.json"}"\n'
        f'[delivery]\nmaildir = "{tmp_path / "outbox"}"\n'
    )
    clinic = await world.clinic()
    pats = [await world.patient(clinic) for _ in range(3)]
    async with services.transaction() as s:
        rows = [await invite(s, services, patient=p, clinic=clinic) for p in pats]
        await s.execute(
            update(Notification)
            .where(Notification.id == rows[0].id)
            .values(state="failed", last_error="451 send refused 4.3.0", attempts=7)
        )
        await s.execute(
            update(Notification).where(Notification.id == rows[1].id).values(state="sent")
        )
    outputs = []

    code, out, _ = await _run(config, "status", "--json")
    outputs.append(out)
    assert code == 0
    status = json.loads(out)
    assert status["counts"]["failed"] == 1 and status["counts"]["queued"] == 1

    code, out, _ = await _run(config, "list", "--state", "failed", "--json")
    outputs.append(out)
    listed = json.loads(out)
    assert [r["id"] for r in listed] == [rows[0].id]
    assert listed[0]["last_error"] == "451 send refused 4.3.0"

    code, out, _ = await _run(config, "show", rows[0].id, "--json")
    outputs.append(out)
    shown = json.loads(out)
    assert shown["attempts"] == 7 and shown["kind"] == "registration_invitation"
    assert "recipient" not in shown

    code, out, _ = await _run(config, "list")
    outputs.append(out)
    assert code == 0 and "registration_invitation" in out

    code, out, _ = await _run(config, "retry", "--state", "failed")
    assert (code, out.strip()) == (0, "1 notification(s) queued again")
    code, out, _ = await _run(config, "purge", "--older-than-days", "0", "--state", "sent")
    assert (code, out.strip()) == (0, "1 notification(s) purged")
    code, out, _ = await _run(config, "status", "--json")
    counts = json.loads(out)["counts"]
    assert (counts["queued"], counts["failed"], counts["sent"]) == (2, 0, 0)

    for output in outputs:
        for p in pats:
            assert p.email not in output


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_mistakes_get_one_line_and_exit_2(services, tmp_path):
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[store]\nurl = "{services.config.store.url}"\n[keys]\nfile = "{tmp_path / "keys.json"}"\n'
    )
    for args, expected in (
        (("retry",), "name notification ids"),
        (("list", "--state", "lost"), "unknown state 'lost'"),
        (("show", "nope"), "no notification 'nope'"),
        (("purge", "--state", "queued"), "only finished rows can be purged"),
    ):
        code, out, err = await _run(config, *args)
        assert code == 2, (args, out, err)
        assert expected in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_patient_enroll_queues_the_registration_invitation(services, world, tmp_path):
    config = tmp_path / "cli.toml"
    config.write_text(
        f'[store]\nurl = "{services.config.store.url}"\n[keys]\nfile = "{tmp_path / "keys.json"}"\n'
    )
    clinic = await world.clinic()
    argv = [
        "--config", str(config), "patient", "enroll", "--clinic", clinic.slug,
        "--given-name", "Ada", "--family-name", "Lovelace", "--dob", "1980-01-02",
        "--email", "ada@example.org",
    ]  # fmt: skip
    code, out, err = await asyncio.to_thread(_main, argv)
    assert code == 0, err
    assert "registration email queued" in out
    code, out, _ = await _run(config, "list", "--json")
    assert [r["kind"] for r in json.loads(out)] == ["registration_invitation"]
