"""The handler plugins: one small module per kind of inbound mail, and the table routing to them.

:data:`ROUTING` is plain data: which local part on a clinic's reply domain goes to which
handler, read top to bottom, first match wins. The gateway never imports this package: the
composition root loads the table through the ``carebridge.routing`` entry point declared in
``pyproject.toml`` (see ``gateway/inbound/plugins.py``).
"""

from __future__ import annotations

import re

from gateway.inbound.handling import TOKEN, Route, RoutingTable
from handlers import autoreply, bounce, postmaster, registration, reply, staff_reply

# Patients and staff members answer at the same address shape; the token's subject tells.
_REPLY = re.compile(rf"^reply\+{TOKEN}$")

ROUTING = RoutingTable(
    routes=(
        Route(
            "bounce",
            re.compile(rf"^bounce\+{TOKEN}$"),
            "bounce_address",
            bounce.handler,
            extract=bounce.classify,
        ),
        Route(
            "register",
            re.compile(rf"^register\+{TOKEN}$"),
            "registration_reply",
            registration.handler,
            screen_automated=True,
        ),
        Route(
            "staff_reply",
            _REPLY,
            "reply_address",
            staff_reply.handler,
            screen_automated=True,
            subject_kind="staff",
        ),
        Route("reply", _REPLY, "reply_address", reply.handler, screen_automated=True),
        Route("postmaster", re.compile(r"^postmaster$", re.I), None, postmaster.handler),
        Route("abuse", re.compile(r"^abuse$", re.I), None, postmaster.handler),
    ),
    automated=autoreply.handler,
)

__all__ = ["ROUTING"]
