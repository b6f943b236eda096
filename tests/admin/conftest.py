"""Fixtures for the admin area: a loopback DNS server and the real ``carebridge`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.services import Services
from tests.admin.dnsserver import Zone, dns_server

ROOT = Path(__file__).resolve().parents[2]
_MAIN = "from gateway.cli import main; main()"


@pytest.fixture
def dns() -> Iterator[tuple[Zone, int]]:
    with dns_server() as served:
        yield served


@pytest.fixture
def dns_services(
    services: Services, dns: tuple[Zone, int], with_config: Callable[..., Services]
) -> Services:
    """``services`` whose ``[dns] nameservers`` is the loopback server."""
    return with_config(
        services, dns={"nameservers": (f"127.0.0.1:{dns[1]}",), "timeout_seconds": 2.0}
    )


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


@dataclass
class Cli:
    config_path: Path

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, "-c", _MAIN, "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )


@pytest.fixture
def cli(dns_services: Services, tmp_path: Path) -> Cli:
    """The real command line, in a subprocess, on the test's store, keys and DNS server."""
    cfg = dns_services.config
    path = tmp_path / "cli-config.toml"
    write_toml(
        path,
        {
            "store": {"url": cfg.store.url},
            "keys": {"file": str(cfg.path(cfg.keys.file))},
            "smtp": {"hostname": cfg.smtp.hostname},
            "dns": {
                "nameservers": list(cfg.dns.nameservers),
                "timeout_seconds": cfg.dns.timeout_seconds,
            },
            "log": {"level": "DEBUG"},
        },
    )
    return Cli(path)
