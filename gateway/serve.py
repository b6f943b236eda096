"""``carebridge serve``: one asyncio loop running every enabled part of the gateway.

Each part starts (returning once it listens or runs), reports ready, and stops in reverse
order on SIGTERM/SIGINT. Parts are listed explicitly in :func:`build_parts`, the composition
root: it is also where the installed handlers' routing table is loaded and handed to the
inbound parts (the gateway never imports ``handlers`` itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from gateway.services import Part, Services
from gateway.web.app import create_app

log = logging.getLogger("carebridge.serve")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The serve loop owns the signals and tells every part to stop.
        yield


class WebPart:
    name = "web"

    def __init__(self, services: Services) -> None:
        host, _, port = services.config.web.listen.rpartition(":")
        config = uvicorn.Config(
            create_app(services),
            host=host,
            port=int(port),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
        )
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        sock = self.server.servers[0].sockets[0]
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("web server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task


def build_parts(services: Services) -> list[Part]:
    cfg = services.config
    parts: list[Part] = []
    if cfg.web.enabled:
        parts.append(WebPart(services))
    if cfg.delivery.enabled:
        from gateway.outbound.delivery import DeliveryPart

        parts.append(DeliveryPart(services))
    if cfg.scheduler.enabled:
        from gateway.scheduler import SchedulerPart

        parts.append(SchedulerPart(services))
    if cfg.smtp.enabled or cfg.imap:
        from gateway.inbound.parts import inbound_parts
        from gateway.inbound.plugins import load_routing

        parts.extend(inbound_parts(services, load_routing()))
    return parts


async def run(services: Services, parts: list[Part], stopping: asyncio.Event) -> None:
    started: list[Part] = []
    try:
        for part in parts:
            services.ready[part.name] = False
            await part.start()
            services.ready[part.name] = True
            started.append(part)
            log.info("%s started", part.name)
        await stopping.wait()
    finally:
        for part in reversed(started):
            services.ready[part.name] = False
            try:
                await part.stop()
            except Exception:
                log.exception("%s failed to stop cleanly", part.name)
            log.info("%s stopped", part.name)


async def serve_forever(services: Services) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await run(services, build_parts(services), stopping)
