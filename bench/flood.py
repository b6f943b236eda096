"""Flood benchmark (issue 14): does hostile mail slow a patient's sign-in or /healthz?

Runs ``carebridge serve`` on loopback (SQLite) and, in the same run:

  1. anchor: a patient signs in (GET the form, POST it: argon2 verify) again and again while
     /healthz is polled, with no other traffic;
  2. flood: the same, while senders keep delivering the hostile messages of issue 14 to
     postmaster@ (no token needed): a ~62 KB folded ``From:`` of ``""a`` (refused at DATA by
     the header caps), the same at 3.6 KB (within the caps: parsed, at ~1 s of CPU each),
     a ~9 MB message of ~250k MIME parts, and small messages with five DKIM signatures each
     while the nameserver never answers (a UDP socket that reads and drops).

Prints sign-in and /healthz p50/p99/max for both phases and the ratios flood/anchor.
Targets: sign-in under 1 s and /healthz p99 under 200 ms during the flood.

Usage: ``.venv/bin/python bench/flood.py [--seconds 30] [--senders 4]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import dkim
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSWORD = "correct horse battery staple 42"  # noqa: S105 (a bench account)
EMAIL = "pat@example.org"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def silent_nameserver(stop: threading.Event) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)

    def drop() -> None:
        while not stop.is_set():
            try:
                sock.recvfrom(4096)
            except TimeoutError:
                continue
        sock.close()

    threading.Thread(target=drop, daemon=True).start()
    return int(sock.getsockname()[1])


def cb(cfg: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(cfg), *args],
        check=True,
        capture_output=True,
        cwd=cfg.parent,
    )


async def seed(cfg_path: Path) -> str:
    """A clinic with a reply domain and an active patient with a password."""
    from gateway.config import load_config
    from gateway.passwords import hash_password
    from gateway.services import open_services
    from tests.support.world import World

    services = await open_services(load_config(str(cfg_path)))
    try:
        world = World(services)
        clinic = await world.clinic("flood")
        patient = await world.patient(clinic, email=EMAIL, date_of_birth=date(1980, 4, 23))
        async with services.transaction() as s:
            p = await s.merge(patient)
            p.email_verified_at = p.terms_agreed_at = services.clock.now()
            p.terms_version = "2026-01"
            p.password_hash = hash_password(PASSWORD)
            p.status = "active"
        return str(clinic.reply_domain)
    finally:
        await services.close()


# -- the hostile messages ----------------------------------------------------------------------
def folded_from(size: int, to: str) -> bytes:
    value = '""a' * (size // 3)
    folded = "\r\n ".join(value[i : i + 70] for i in range(0, len(value), 70))
    return f"From: {folded}\r\nTo: {to}\r\nSubject: hi\r\n\r\nhello\r\n".encode()


def many_parts(to: str, parts: int = 250_000) -> bytes:
    head = (
        f"From: x@example.org\r\nTo: {to}\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    )
    return head.encode() + b"--b\r\n\r\nx\r\n" * parts + b"--b--\r\n"


def many_signatures(to: str, n: int = 5) -> bytes:
    from gateway.outbound.dkim import generate_key

    raw = f"From: Pat <pat@example.org>\r\nTo: {to}\r\nSubject: hi\r\n\r\nhello\r\n".encode()
    for i in range(n):
        key = generate_key("ed25519")
        sig = dkim.sign(
            raw, b"s1", f"d{i}.example".encode(), key.private_pem.encode(),
            signature_algorithm=b"ed25519-sha256", include_headers=[b"from", b"to"],
        )  # fmt: skip
        raw = bytes(sig) + raw
    return raw


def sender(port: int, to: str, messages: list[bytes], stop: threading.Event, sent: list[int]):  # type: ignore[no-untyped-def]
    i = 0
    while not stop.is_set():
        raw = messages[i % len(messages)]
        i += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
                client.ehlo("flood.example")
                client.mail("x@example.org")
                client.rcpt(to)
                code, _ = client.data(raw)
                sent.append(code)
        except (smtplib.SMTPException, OSError):
            sent.append(0)
            time.sleep(0.2)


# -- the measurements --------------------------------------------------------------------------
def sign_in(base: str) -> float:
    with httpx.Client(base_url=base, timeout=120) as client:
        page = client.get("/portal/login")
        m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert m, "no CSRF token on the sign-in form"
        t = time.perf_counter()
        r = client.post(
            "/portal/login",
            data={"csrf_token": m.group(1), "email": EMAIL, "password": PASSWORD},
        )
        elapsed = time.perf_counter() - t
        assert r.status_code == 303, r.status_code
        return elapsed


def measure(base: str, seconds: float) -> tuple[list[float], list[float]]:
    """(sign-in seconds, /healthz seconds) over ``seconds``."""
    stop = threading.Event()
    health: list[float] = []

    def poll() -> None:
        with httpx.Client(base_url=base, timeout=120) as client:
            while not stop.is_set():
                t = time.perf_counter()
                client.get("/healthz")
                health.append(time.perf_counter() - t)
                time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    signins: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        signins.append(sign_in(base))
        time.sleep(0.5)  # the per-account throttle counts failures only, but be gentle
    stop.set()
    poller.join()
    return signins, health


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def report(name: str, anchor: list[float], flood: list[float]) -> None:
    for label, fn in (
        ("p50", lambda v: statistics.median(v)),
        ("p99", lambda v: pct(v, 0.99)),
        ("max", max),
    ):
        a, f = fn(anchor), fn(flood)
        line = f"anchor {a * 1000:8.1f} ms   flood {f * 1000:8.1f} ms   x{f / a:6.2f}"
        print(f"{name:8} {label}  {line}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument(
        "--kinds", default="from62k,from4k,dkim,parts", help="which hostile messages to send"
    )
    args = ap.parse_args()
    stop_dns = threading.Event()
    dns_port = silent_nameserver(stop_dns)
    with tempfile.TemporaryDirectory(prefix="cb-flood-") as tmp:
        d = Path(tmp)
        web, smtp = free_port(), free_port()
        cfg = d / "carebridge.toml"
        cfg.write_text(
            '[store]\nurl = "sqlite+aiosqlite:///cb.db"\n[keys]\nfile = "keys.json"\n'
            f'[web]\nlisten = "127.0.0.1:{web}"\nbase_url = "http://127.0.0.1:{web}"\n'
            f'[smtp]\nlisten = "127.0.0.1:{smtp}"\n[delivery]\nmaildir = "outbox"\n'
            f'[dns]\nnameservers = ["127.0.0.1:{dns_port}"]\ntimeout_seconds = 5\n'
            '[log]\nlevel = "WARNING"\n'
        )
        cb(cfg, "keys", "init")
        cb(cfg, "db", "upgrade")
        reply_domain = asyncio.run(seed(cfg))
        to = f"postmaster@{reply_domain}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(cfg), "serve"],
            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        base = f"http://127.0.0.1:{web}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("carebridge serve did not become ready")
                time.sleep(0.2)
            sign_in(base)  # warm up
            anchor_s, anchor_h = measure(base, args.seconds)
            print(f"anchor: {len(anchor_s)} sign-ins, {len(anchor_h)} /healthz", flush=True)

            makers = {
                "from62k": lambda: [folded_from(62_000, to)],
                "from4k": lambda: [folded_from(3_600, to)],
                "dkim": lambda: [many_signatures(to), many_signatures(to)],
                "parts": lambda: [many_parts(to)],
            }
            hostile = [m for k in args.kinds.split(",") for m in makers[k]()]
            stop = threading.Event()
            sent: list[int] = []
            senders = [
                threading.Thread(
                    target=sender, args=(smtp, to, hostile[i:] + hostile[:i], stop, sent)
                )
                for i in range(args.senders)
            ]
            for t in senders:
                t.start()
            time.sleep(2)  # let the flood build up
            flood_s, flood_h = measure(base, args.seconds)
            stop.set()
            codes = {c: sent.count(c) for c in sorted(set(sent))}
            print(f"flood: {len(flood_s)} sign-ins, {len(flood_h)} /healthz; SMTP answers {codes}")
            report("sign-in", anchor_s, flood_s)
            report("/healthz", anchor_h, flood_h)
            ok = max(flood_s) < 1.0 and pct(flood_h, 0.99) < 0.2
            print("targets (sign-in < 1 s, /healthz p99 < 200 ms):", "met" if ok else "NOT met")
            print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
            for t in senders:
                t.join(130)
        finally:
            proc.terminate()
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            stop_dns.set()
        if b"Traceback" in err:
            print(err.decode()[-2000:])
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
