"""Real ``carebridge serve`` processes for the crash, soak and scale-out suites.

A :class:`Node` is one gateway process on its own ports with a config file written for it;
:meth:`Node.kill` is SIGKILL (no clean-up of any kind runs), :meth:`Node.start` waits until
the SMTP port accepts connections. :func:`prepare_store` creates keys, schema and the people
the load needs through the product's own functions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway import db, tokens
from gateway.admin import clinics
from gateway.careteam import threads
from gateway.config import parse_config
from gateway.crypto import KeyRing, write_keyring
from gateway.outbound import dkim
from gateway.portal import patients
from gateway.services import Services, open_services
from tests.support.net import reserve_port

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    return reserve_port()


def _toml_value(v: object) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(out) + "\n"


@dataclass
class Node:
    """One ``carebridge serve`` process."""

    name: str
    workdir: Path
    store_url: str
    keys_file: Path
    relay: str
    nameserver: str  # a loopback DNS server: the gateway must never ask the internet
    extra: dict[str, dict[str, object]] = field(default_factory=dict)
    smtp_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    kills: int = 0

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.toml"

    def write_config(self) -> Path:
        sections: dict[str, dict[str, object]] = {
            "store": {"url": self.store_url, "pool_size": 10},
            "keys": {"file": str(self.keys_file)},
            "smtp": {
                "listen": f"127.0.0.1:{self.smtp_port}",
                "hostname": f"{self.name}.mx.test",
                "max_connections_per_ip": 200,
            },
            "web": {
                "listen": f"127.0.0.1:{self.web_port}",
                "base_url": f"http://127.0.0.1:{self.web_port}",
            },
            "delivery": {
                "relay": self.relay,
                "poll_seconds": 0.2,
                "base_backoff_seconds": 1,
                "max_backoff_seconds": 2,
            },
            "dns": {"nameservers": [self.nameserver], "timeout_seconds": 1.0},
            "log": {"level": "WARNING"},
        }
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        self.config_path.write_text(render_config(sections))
        return self.config_path

    async def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(self.config_path),
            "serve",
            cwd=self.workdir,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited at start-up: {self.tail()}")
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", self.smtp_port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.02)
        raise TimeoutError(f"{self.name} did not listen within {timeout}s: {self.tail()}")

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a power cut of the process."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            self.kills += 1
        self.proc = None

    async def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        rc = self.proc.returncode or 0
        self.proc = None
        return rc

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def tail(self, n: int = 2000) -> str:
        p = self.workdir / f"{self.name}.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""


@dataclass
class Seeded:
    clinic_id: str
    reply_domain: str
    # (patient id, patient email, reply address) per patient
    people: list[tuple[str, str, str]]


async def prepare_store(workdir: Path, store_url: str, patients_n: int) -> tuple[Path, Seeded]:
    """Keys, schema, one clinic (with DKIM keys), patients with a thread and a reply address."""
    keys_file = workdir / "keys.json"
    ring = KeyRing.generate()
    write_keyring(keys_file, ring)
    await asyncio.to_thread(db.upgrade, store_url)
    cfg = parse_config({"store": {"url": store_url}, "keys": {"file": str(keys_file)}})
    services = await open_services(cfg, keyring=ring)
    try:
        seeded = await _seed(services, patients_n)
    finally:
        await services.close()
    return keys_file, seeded


async def _seed(services: Services, n: int) -> Seeded:
    now = services.clock.now()
    async with services.transaction() as s:
        org = await clinics.get_or_create_org(s, "bench", "Bench Org", "bench")
        clinic = await clinics.add_clinic(
            s,
            org=org,
            slug="bench",
            name="Bench Clinic",
            reply_domain="reply.bench.example",
            sending_domain="bench.example",
            actor="bench",
        )
        await dkim.ensure_domain_keys(s, clinic, now=now)
    people = []
    for i in range(n):
        async with services.transaction() as s:
            email = f"patient{i}@patients.example"
            p = (
                await patients.enroll(
                    s,
                    services.keyring,
                    clinic=clinic,
                    given_name="Pat",
                    family_name=f"Bench{i}",
                    date_of_birth=__import__("datetime").date(1980, 1, 1),
                    email=email,
                    source="desk",
                    actor="bench",
                )
            ).patient
            thread = await threads.create_thread(
                s,
                services,
                patient=p,
                clinic=clinic,
                request_type="question",
                subject="bench",
                body="bench",
                actor="bench",
            )
            tok = await tokens.issue(
                s,
                services.config.tokens,
                purpose="reply_address",
                subject_kind="patient",
                subject_id=p.id,
                now=now,
                data={"thread_id": thread.id},
            )
            people.append((p.id, email, f"reply+{tok.value}@{clinic.reply_domain}"))
    return Seeded(clinic.id, clinic.reply_domain, people)
