"""The worker pools that keep slow or hostile work off the event loop, each on its own.

Three kinds of work leave the loop, and none may starve another (DESIGN: no one input slows
anyone else):

- ``passwords``: argon2 hashing for sign-in, sign-up and resets (threads: argon2 releases the GIL);
- ``parse``: parsing inbound mail, whose worst case is the attacker's choice. It runs in worker
  *processes*, so a deadline really ends it: a worker past its deadline is killed and a fresh
  one started in its place (a thread cannot be stopped, and would keep a core and the GIL);
- ``auth``: DKIM, SPF and their DNS lookups (threads, each check bounded by its DNS budget).

Each pool has a fixed number of workers and a bounded queue; past the queue a caller gets
:class:`Busy` at once rather than an ever-growing wait. Nothing is started until first used,
so CLI commands that never parse mail never start a process. :class:`Services` owns one
:class:`Executors` and closes it on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from gateway.config import Config
from gateway.errors import CarebridgeError

log = logging.getLogger("carebridge.executors")

_T = TypeVar("_T")

PASSWORD_THREADS = 2
QUEUE_PER_WORKER = 32
# Parse workers run at a lower CPU priority than the server, so a hostile parse that uses
# its whole deadline slows the web and SMTP parts as little as possible.
PARSE_NICENESS = 10
WORKER_START_SECONDS = 60.0


class Busy(CarebridgeError):
    """A pool's queue is full: the caller should answer "try again later"."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        super().__init__(f"the {pool} pool is busy; try again later")


class DeadlineExceeded(CarebridgeError):
    """The work ran past its deadline; its worker process was killed."""


class WorkerFailed(CarebridgeError):
    """The work raised in its worker (only the exception's type name is carried: no PHI)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"worker raised {kind}")


class _Bounded:
    """A fixed set of threads with a bounded queue in front."""

    def __init__(self, name: str, workers: int, max_queue: int) -> None:
        self.name = name
        self.workers = max(1, workers)
        self.max_pending = self.workers + max(0, max_queue)
        self._threads: ThreadPoolExecutor | None = None
        self._pending = 0
        self._lock = threading.Lock()

    def _submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        with self._lock:
            if self._pending >= self.max_pending:
                raise Busy(self.name)
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
            self._pending += 1
        try:
            fut = self._threads.submit(fn, *args)
        except BaseException:
            self._done(None)
            raise
        fut.add_done_callback(self._done)
        return fut

    def resize(self, workers: int) -> None:
        """Set the number of workers (before first use)."""
        with self._lock:
            if self._threads is None:
                self.workers = max(1, workers)
                self.max_pending = self.workers * (1 + QUEUE_PER_WORKER)

    def _done(self, _fut: object) -> None:
        with self._lock:
            self._pending -= 1

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)


class ThreadPool(_Bounded):
    """Blocking work that ends by itself (argon2; DNS lookups bounded by their budget)."""

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.wrap_future(self._submit(fn, *args))


def _serve(conn: Connection, preload: tuple[str, ...]) -> None:
    """A parse worker's loop: (function, args) in, ("ok", result) or ("err", type) out."""
    with contextlib.suppress(OSError):
        os.nice(PARSE_NICENESS)
    for module in preload:  # inherited from the fork server already, unless added since
        importlib.import_module(module)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", fn(*args))
        except Exception as exc:  # the type name only: the text may quote the message
            reply = ("err", type(exc).__name__)
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result
            conn.send(("err", type(exc).__name__))


def _noop() -> None:
    return None


class _Worker:
    def __init__(self, ctx: Any, preload: tuple[str, ...]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child, preload), daemon=True, name="cb-parse"
        )
        self.process.start()
        child.close()
        # Starting (and the first imports) is not the job's time: wait for the worker first.
        try:
            ready = self.conn.poll(WORKER_START_SECONDS) and self.conn.recv()
        except (EOFError, OSError):
            ready = None
        if not ready:
            self.kill()
            raise WorkerFailed("WorkerStartFailed")

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.join(5)
        with contextlib.suppress(Exception):
            self.conn.close()


class ProcessPool(_Bounded):
    """Hostile-input work in worker processes; a deadline kills the worker and replaces it.

    One dispatcher thread per worker sends a job and waits for its answer with ``poll``; at
    the deadline it kills that worker (SIGKILL) and the next job gets a fresh one. Functions
    and arguments must pickle (module-level functions, plain data)."""

    def __init__(self, name: str, workers: int, max_queue: int) -> None:
        super().__init__(name, workers, max_queue)
        # forkserver: workers fork from a clean single-threaded server, never from this
        # multi-threaded process.
        self._ctx = multiprocessing.get_context("forkserver")
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: set[_Worker] = set()
        self._generation = 0  # close() starts a new one: workers of an older one are not reused
        self._preload: tuple[str, ...] = ("gateway.inbound.parsing",)
        self.killed = 0

    def preload(self, modules: Iterable[str]) -> None:
        """Modules the work's functions live in: imported once by the fork server (when it
        has not started yet) and by each worker before it takes a job, so the imports are
        not counted in any job's deadline."""
        with self._lock:
            self._preload = tuple(dict.fromkeys((*self._preload, *modules)))

    async def run(self, fn: Callable[..., _T], *args: Any, deadline: float) -> _T:
        """``fn(*args)`` in a worker process, killed after ``deadline`` seconds of work (the
        wait for a free worker is not counted)."""
        status, value = await asyncio.wrap_future(self._submit(self._call, fn, args, deadline))
        if status == "ok":
            return value  # type: ignore[no-any-return]
        raise WorkerFailed(str(value))

    def warm(self) -> None:
        """Start the workers now, in the background, so the first message does not wait for
        a fork server and its imports."""
        for _ in range(self.workers):
            with contextlib.suppress(Busy):
                self._submit(self._call, _noop, (), WORKER_START_SECONDS)

    @property
    def pids(self) -> set[int]:
        with self._lock:
            return {w.pid for w in self._all}

    def _checkout(self) -> _Worker:
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                preload = self._preload
            with contextlib.suppress(ValueError, RuntimeError):
                self._ctx.set_forkserver_preload(list(preload))
            worker = _Worker(self._ctx, preload)
            with self._lock:
                self._all.add(worker)
        if not worker.process.is_alive():
            self._discard(worker)
            return self._checkout()
        return worker

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float) -> Any:
        generation = self._generation
        worker = self._checkout()
        try:
            worker.conn.send((fn, args))
            if not worker.conn.poll(timeout):
                self.killed += 1
                log.warning("%s worker %d passed its %.1fs deadline: killed", self.name,
                            worker.pid, timeout)  # fmt: skip
                self._discard(worker)
                raise DeadlineExceeded(f"{self.name} deadline of {timeout}s passed")
            reply = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            self._discard(worker)  # it died (e.g. out of memory): the next job gets a new one
            raise WorkerFailed(type(exc).__name__) from None
        except DeadlineExceeded:
            raise
        except BaseException:
            self._discard(worker)
            raise
        if generation != self._generation:
            self._discard(worker)
        else:
            self._idle.put(worker)
        return reply

    def close(self) -> None:
        """Stop every worker (a later job starts new ones)."""
        with self._lock:
            self._generation += 1
            workers, self._all = list(self._all), set()
        super().close()
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        for w in workers:
            w.kill()


def _threads(name: str, workers: int) -> ThreadPool:
    return ThreadPool(name, workers, workers * QUEUE_PER_WORKER)


@dataclass
class Executors:
    """The three pools, one per kind of work (see the module docstring)."""

    passwords: ThreadPool = field(default_factory=lambda: _threads("passwords", PASSWORD_THREADS))
    parse: ProcessPool = field(
        default_factory=lambda: ProcessPool("parse", 2, 2 * QUEUE_PER_WORKER)
    )
    auth: ThreadPool = field(default_factory=lambda: _threads("auth", 4))

    def configure(self, config: Config) -> None:
        """Size the pools from ``[inbound]`` (pools already in use keep their size)."""
        self.parse.resize(config.inbound.parse_workers)
        self.auth.resize(config.inbound.auth_threads)

    def close(self) -> None:
        self.passwords.close()
        self.parse.close()
        self.auth.close()
