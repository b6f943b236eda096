"""Inbound mail: SMTP intake, IMAP pollers, the one intake path, authentication and routing.

Both doors (``smtp.py``, ``imap.py``) hand raw bytes to :class:`gateway.inbound.intake.Intake`,
which stores them durably before anything is acknowledged, then authenticates, routes to a
handler in ``handlers/`` and turns the handler's outcome into state, quarantine rows and audit.
"""
