"""Taking turns at the store's single writer, with the SMTP sessions' commits going first.

On SQLite there is one writer at a time. The intake's own writers queue here instead of in
SQLite's busy handler (which sleeps between retries), and a step-1 commit (a sender is waiting
for its 250) is always let in before a step-2 processing batch (nobody is waiting on it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Turns:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._urgent = 0
        self._calm = asyncio.Event()
        self._calm.set()

    @asynccontextmanager
    async def urgent(self) -> AsyncIterator[None]:
        """A turn for work someone is waiting on (a 250, an IMAP flag)."""
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
    async def background(self) -> AsyncIterator[None]:
        """A turn only when no urgent work is waiting."""
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
