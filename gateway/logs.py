"""Logging set-up: one logger per channel (carebridge.smtp, carebridge.delivery, ...).

Log lines carry ids and hashes only. Text by default; JSON lines with ``[log] format = "json"``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from gateway.config import LogConfig


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc"] = record.exc_info[0].__name__
        return json.dumps(doc)


def setup_logging(cfg: LogConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("carebridge")
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    root.propagate = False
    # Libraries may log peers' data (addresses in SMTP dialogues): keep them quiet.
    for noisy in ("mail.log", "aiosmtpd", "aioimaplib", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
