"""Group commit: many concurrent SMTP sessions share one durable commit.

Each session submits its rows and awaits a future. One writer task takes everything queued,
writes it in a single transaction (one fsync), and resolves every future; submissions that
arrive while a commit is in flight form the next batch. So durability costs one fsync per
batch, not per message, and a session still hears 250 only after its own rows are on disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommitter(Generic[T, R]):
    def __init__(self, write: Callable[[list[T]], Awaitable[list[R]]], max_batch: int) -> None:
        self._write = write
        self._max_batch = max(1, max_batch)
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Task[None] | None = None
        self.batches = 0  # commits made (for the benchmark and tests)

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait until the batch holding it is committed (or failed)."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        # shield: a client hanging up must not cancel a commit other sessions wait for.
        return await asyncio.shield(fut)

    async def _run(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: len(batch)]
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner
