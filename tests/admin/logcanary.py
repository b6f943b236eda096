"""Every log line a test run writes, grepped for the PHI canaries.

Used two ways:

- as a pytest plugin over a whole run: ``scripts/log-canary-check`` (``pytest -p
  tests.admin.logcanary``) copies every record of the production loggers, formatted as text
  and as JSON lines, into one file, and fails the session if any canary string is in it;
- as a context manager, :func:`capture`, in tests that run a flow and grep its logs.

The whole-run plugin leaves out loggers named ``carebridge.test*``: tests use them for
deliberate leaks that prove a scanner can fail (:func:`capture` keeps them). Logging runs at
DEBUG for carebridge (stricter than production); libraries keep their production levels.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from gateway.logs import JsonFormatter
from tests.support.canaries import CANARY_EMAIL, CANARY_FAMILY, CANARY_GIVEN, CANARY_TEXT

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


def canaries() -> list[str]:
    """Every canary string planted anywhere in the suite (lower-cased for a caseless grep)."""
    found = {CANARY_EMAIL, CANARY_GIVEN, CANARY_FAMILY, CANARY_TEXT, "canary-zq7"}
    try:
        from tests.reliability.canary import MARKERS

        found |= set(MARKERS.values())
    except ImportError:  # the reliability suite is optional here
        pass
    return sorted(s.lower() for s in found)


def hits(text: str) -> list[tuple[str, str]]:
    """(first canary found, line) for every line holding one."""
    wanted = canaries()
    out = []
    for line in text.splitlines():
        low = line.lower()
        out += [(c, line) for c in wanted if c in low][:1]
    return out


class _NotTestLoggers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("carebridge.test")


class Collector:
    """Two handlers (text and JSON) writing to one stream, kept attached to our loggers."""

    def __init__(self, stream: IO[str], *, skip_test_loggers: bool = True) -> None:
        text = logging.StreamHandler(stream)
        text.setFormatter(logging.Formatter(TEXT_FORMAT))
        js = logging.StreamHandler(stream)
        js.setFormatter(JsonFormatter())
        self.handlers: list[logging.Handler] = [text, js]
        for h in self.handlers:
            h.setLevel(logging.DEBUG)
            if skip_test_loggers:
                h.addFilter(_NotTestLoggers())

    def attach(self) -> None:
        # setup_logging() replaces the carebridge logger's handlers and stops propagation,
        # so the handlers go on both it and the root logger, re-attached before each phase.
        cb = logging.getLogger("carebridge")
        cb.setLevel(logging.DEBUG)
        cb.propagate = False  # or each record would reach the handlers twice
        for lg in (cb, logging.getLogger()):
            for h in self.handlers:
                if h not in lg.handlers:
                    lg.addHandler(h)

    def detach(self) -> None:
        for lg in (logging.getLogger("carebridge"), logging.getLogger()):
            for h in self.handlers:
                if h in lg.handlers:
                    lg.removeHandler(h)


@contextmanager
def capture() -> Iterator[Any]:
    """Capture carebridge's log output (text and JSON) during a block; yields the buffer."""
    import io

    buf = io.StringIO()
    collector = Collector(buf, skip_test_loggers=False)
    cb = logging.getLogger("carebridge")
    saved = (cb.level, cb.propagate)
    collector.attach()
    try:
        yield buf
    finally:
        collector.detach()
        cb.setLevel(saved[0])
        cb.propagate = saved[1]


# -- the pytest plugin ---------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    path = Path(os.environ.get("CAREBRIDGE_LOG_CAPTURE") or tempfile.mkstemp(suffix=".log")[1])
    stream = path.open("w", encoding="utf-8")
    _STATE.update(path=path, stream=stream, collector=Collector(stream))
    _STATE["collector"].attach()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    _STATE["collector"].attach()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _STATE["collector"].attach()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    _STATE["collector"].attach()
    yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _STATE["collector"].detach()
    _STATE["stream"].close()
    path: Path = _STATE["path"]
    text = path.read_text(encoding="utf-8", errors="replace")
    found = hits(text)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = len(text.splitlines())
    if found:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        msg = [f"PHI canaries in the logs of this run ({len(found)} lines; log kept at {path}):"]
        msg += [f"  {c!r}: {line[:200]}" for c, line in found[:20]]
    else:
        msg = [f"log canary check: {lines} log lines, no canary found ({path})"]
    if reporter is not None:
        for m in msg:
            reporter.write_line(m)
