"""Taking turns at the store's single writer, most urgent first.

On SQLite there is one writer at a time. The node's busiest writers (the intake's group
commits and processing batches, the delivery part's claims and outcome records) queue here,
in-process, instead of in SQLite's busy handler, which sleeps up to 100 ms between retries.
Work someone is waiting on (a sender waiting for its 250, a relay's 250 not yet recorded) is
``urgent``; a claim takes a plain ``turn``; a processing batch goes ``background``, only when
no urgent work is queued. With PostgreSQL (row locks, no single writer) every turn is free.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Turns:
    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._lock = asyncio.Lock()
        self._urgent = 0
        self._calm = asyncio.Event()
        self._calm.set()

    @asynccontextmanager
    async def urgent(self) -> AsyncIterator[None]:
        """A turn for work someone is waiting on (a 250, an IMAP flag)."""
        if not self.enabled:
            yield
            return
        self._urgent += 1
        self._calm.clear()
        try:
            async with self._lock:
                yield
        finally:
            self._urgent -= 1
            if self._urgent == 0:
                self._calm.set()

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """A turn in arrival order (queued urgent work is not overtaken, nor waited out)."""
        if not self.enabled:
            yield
            return
        async with self._lock:
            yield

    @asynccontextmanager
    async def background(self) -> AsyncIterator[None]:
        """A turn only when no urgent work is waiting."""
        if not self.enabled:
            yield
            return
        while True:
            await self._calm.wait()
            await self._lock.acquire()
            if self._urgent == 0:
                break
            self._lock.release()  # urgent work arrived while we queued: it goes first
        try:
            yield
        finally:
            self._lock.release()
