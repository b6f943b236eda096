"""Inbound benchmark: Postfix's smtp-source drives 20 concurrent sessions of 5 KB messages into

  (a) carebridge intake: ``carebridge serve`` (SMTP part only) on a temporary config, every
      message addressed to a live ``reply+TOKEN@`` address, 250 only after the group commit;
  (b) a bare aiosmtpd sink that writes and fsyncs each message (one file each, maildir-like);
  (c) Postfix's ``smtp-sink`` (no disk at all: the ceiling of the SMTP dialogue itself);

in one run, and prints messages/s for each and the ratios. Target: (a)/(b) >= 1.0.
Also reports how long carebridge took to finish processing (authenticate, route, quarantine or
file) the stored backlog, and how many group commits the 250s shared.

Usage: ``.venv/bin/python bench/inbound.py [-n 4000] [-s 20] [--store-url URL]``
Needs Debian ``postfix`` installed for its tools only (see RECIPES.md; no daemon runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"

FSYNC_SINK = r"""
import asyncio, os, sys
from aiosmtpd.smtp import SMTP

DIR = sys.argv[1]

def store(name, data):
    fd = os.open(os.path.join(DIR, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)

class Handler:
    n = 0
    async def handle_DATA(self, server, session, envelope):
        Handler.n += 1
        await asyncio.to_thread(store, f"{os.getpid()}.{Handler.n}", envelope.original_content)
        return "250 2.0.0 OK"

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), hostname="sink.bench", data_size_limit=None), "127.0.0.1", 0
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drive(port: int, messages: int, sessions: int, rcpt: str) -> float:
    """Run smtp-source against 127.0.0.1:port; seconds taken."""
    cmd = [
        SMTP_SOURCE,
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        "5120",
        "-f",
        "bench@example.org",
        "-t",
        rcpt,
        f"127.0.0.1:{port}",
    ]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or result.stderr.strip():
        raise SystemExit(f"smtp-source failed against port {port}: {result.stderr.strip()[:300]}")
    return elapsed


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise SystemExit("server exited during start-up") from None
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU: dict[str, float] = {}


def run_smtp_sink(messages: int, sessions: int) -> float:
    port = free_port()
    proc = subprocess.Popen([SMTP_SINK, "-u", "nobody", f"127.0.0.1:{port}", "256"])
    try:
        wait_port(port, proc)
        return drive(port, messages, sessions, "sink@example.org")
    finally:
        proc.terminate()
        proc.wait()


def run_fsync_sink(messages: int, sessions: int, work: Path) -> float:
    spool = work / "fsync-sink"
    spool.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", FSYNC_SINK, str(spool)], stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        before = cpu_seconds(proc.pid)
        elapsed = drive(port, messages, sessions, "sink@example.org")
        CPU["b"] = cpu_seconds(proc.pid) - before
        stored = len(os.listdir(spool))
        if stored != messages:
            raise SystemExit(f"fsync sink stored {stored} of {messages}")
        return elapsed
    finally:
        proc.terminate()
        proc.wait()


async def seed(config_path: Path) -> str:
    """A clinic, a patient and a live reply address on the temporary store."""
    from gateway import tokens
    from gateway.admin import clinics
    from gateway.config import load_config
    from gateway.portal import patients
    from gateway.services import open_services

    services = await open_services(load_config(config_path))
    try:
        async with services.transaction() as s:
            org = await clinics.get_or_create_org(s, "bench", "Bench", "bench")
            clinic = await clinics.add_clinic(
                s,
                org=org,
                slug="bench",
                name="Bench Clinic",
                reply_domain="reply.bench.example",
                actor="bench",
            )
            result = await patients.enroll(
                s,
                services.keyring,
                clinic=clinic,
                given_name="Bench",
                family_name="Patient",
                date_of_birth=date(1980, 1, 1),
                email="bench@example.org",
                source="cli",
                actor="bench",
            )
            token = await tokens.issue(
                s,
                services.config.tokens,
                purpose="reply_address",
                subject_kind="patient",
                subject_id=result.patient.id,
                now=services.clock.now(),
            )
        return f"reply+{token.value}@{clinic.reply_domain}"
    finally:
        await services.close()


async def count_rows(config_path: Path) -> tuple[int, int]:
    from sqlalchemy import func, select

    from gateway.config import load_config
    from gateway.models import InboundMessage
    from gateway.services import open_services

    services = await open_services(load_config(config_path))
    try:
        async with services.sessions() as s:
            total = await s.scalar(select(func.count()).select_from(InboundMessage))
            pending = await s.scalar(
                select(func.count())
                .select_from(InboundMessage)
                .where(InboundMessage.state == "received")
            )
            return int(total or 0), int(pending or 0)
    finally:
        await services.close()


def run_carebridge(
    messages: int, sessions: int, work: Path, store_url: str | None
) -> tuple[float, float, str]:
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    class NxResolver(BaseResolver):  # type: ignore[misc]
        def resolve(self, request, handler):  # type: ignore[no-untyped-def]
            reply = request.reply()
            reply.header.rcode = 3
            return reply

    dns = DNSServer(
        NxResolver(), address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda *a: None)
    )
    dns.start_thread()
    port = free_port()
    cfg = work / "carebridge.toml"
    url = store_url or f"sqlite+aiosqlite:///{work}/carebridge.db"
    cfg.write_text(
        f'[store]\nurl = "{url}"\n[keys]\nfile = "{work}/keys.json"\n'
        f'[smtp]\nlisten = "127.0.0.1:{port}"\nhostname = "mx.bench.example"\n'
        f"max_connections_per_ip = {sessions + 5}\n"
        "[web]\nenabled = false\n[delivery]\nenabled = false\n[scheduler]\nenabled = false\n"
        f'[dns]\nnameservers = ["127.0.0.1:{dns.server.server_address[1]}"]\n'
        'timeout_seconds = 1.0\n[log]\nlevel = "WARNING"\n'
    )
    cli = [sys.executable, "-c", "from gateway.cli import main; main()", "--config", str(cfg)]
    subprocess.run([*cli, "keys", "init"], check=True, capture_output=True)
    subprocess.run([*cli, "db", "upgrade"], check=True, capture_output=True)
    rcpt = asyncio.run(seed(cfg))
    proc = subprocess.Popen([*cli, "serve"], cwd=ROOT)
    try:
        wait_port(port, proc)
        before = cpu_seconds(proc.pid)  # start-up (imports, recovery) is not per message
        elapsed = drive(port, messages, sessions, rcpt)
        CPU["a"] = cpu_seconds(proc.pid) - before
        total, pending = asyncio.run(count_rows(cfg))
        if total != messages:
            raise SystemExit(f"carebridge stored {total} of {messages}")
        start = time.perf_counter()
        while pending:
            time.sleep(0.2)
            total, pending = asyncio.run(count_rows(cfg))
        backlog = time.perf_counter() - start
        return elapsed, backlog, url.split(":")[0]
    finally:
        proc.terminate()
        proc.wait()
        dns.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--messages", type=int, default=4000)
    ap.add_argument("-s", "--sessions", type=int, default=20)
    ap.add_argument("--store-url", default=None, help="carebridge store (default: SQLite)")
    args = ap.parse_args()
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} missing: install Debian postfix (tools only), see RECIPES.md")
    n, s = args.messages, args.sessions
    work = Path(tempfile.mkdtemp(prefix="cb-bench-inbound-"))
    try:
        t_sink = run_smtp_sink(n, s)
        t_fsync = run_fsync_sink(n, s, work)
        t_cb, backlog, backend = run_carebridge(n, s, work, args.store_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = {k: n / t for k, t in (("a", t_cb), ("b", t_fsync), ("c", t_sink))}
    print(f"inbound bench: {n} messages of 5 KB, {s} concurrent sessions (smtp-source -d)")
    print(f"  (a) carebridge intake ({backend}): {rate['a']:8.0f} msg/s  (250 after commit)")
    print(f"  (b) aiosmtpd + fsync per message: {rate['b']:8.0f} msg/s")
    print(f"  (c) postfix smtp-sink (no disk):  {rate['c']:8.0f} msg/s")
    print(f"  (a)/(b) = {rate['a'] / rate['b']:.2f}   (a)/(c) = {rate['a'] / rate['c']:.2f}")
    print(
        f"  server CPU per message until the last 250: (a) {1000 * CPU['a'] / n:.2f} ms"
        f" (processing done meanwhile included), (b) {1000 * CPU['b'] / n:.2f} ms"
    )
    print(f"  load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"  processing backlog after the last 250: {backlog:.1f} s "
        f"({n / (t_cb + backlog):.0f} msg/s end to end, authenticated and quarantined)"
    )


if __name__ == "__main__":
    main()
