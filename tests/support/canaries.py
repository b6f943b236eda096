"""PHI canaries: planted in PHI fields by tests that check nothing leaks (logs, metrics, mail)."""

from __future__ import annotations

CANARY_GIVEN = "Zebulon"
CANARY_FAMILY = "Canaryfield"
CANARY_EMAIL = "canary-zq7@example.org"
CANARY_TEXT = "CANARY-PHI-7f3a chest results"
