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
from starlette.types import ASGIApp

from gateway.services import Part, Services
from gateway.web.app import create_app
from gateway.web.metrics import create_metrics_app

log = logging.getLogger("carebridge.serve")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The serve loop owns the signals and tells every part to stop.
        yield


def _uvicorn_config(app: ASGIApp, listen: str, max_header_bytes: int) -> uvicorn.Config:
    host, _, port = listen.rpartition(":")
    return uvicorn.Config(
        app,
        host=host,
        port=int(port),
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        # h11, not httptools: h11 refuses a request head (request line and headers) larger
        # than this before the app sees it; gateway/web/limits.py then checks each header.
        http="h11",
        h11_max_incomplete_event_size=max_header_bytes + 8 * 1024,
        timeout_keep_alive=5,
    )


class WebPart:
    name = "web"

    def __init__(self, services: Services) -> None:
        web = services.config.web
        self.server = _Server(
            _uvicorn_config(create_app(services), web.listen, web.max_header_bytes)
        )
        # [web] metrics_listen: /metrics on an address of its own (and not on the web port).
        self.metrics_server = (
            _Server(
                _uvicorn_config(
                    create_metrics_app(services), web.metrics_listen, web.max_header_bytes
                )
            )
            if web.metrics_listen
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        sock = self.server.servers[0].sockets[0]
        return int(sock.getsockname()[1])

    @property
    def metrics_port(self) -> int | None:
        if self.metrics_server is None:
            return None
        return int(self.metrics_server.servers[0].sockets[0].getsockname()[1])

    async def start(self) -> None:
        try:
            for server in (self.server, self.metrics_server):
                if server is None:
                    continue
                task = asyncio.create_task(server.serve())
                self._tasks.append(task)
                while not server.started:
                    if task.done():
                        task.result()
                        raise RuntimeError("web server stopped during start-up")
                    await asyncio.sleep(0.01)
        except BaseException:
            await self.stop(raise_errors=False)
            raise

    async def stop(self, *, raise_errors: bool = True) -> None:
        for server in (self.server, self.metrics_server):
            if server is not None:
                server.should_exit = True
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if raise_errors and isinstance(result, BaseException):
                raise result


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
