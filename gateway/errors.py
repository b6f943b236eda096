"""One error hierarchy for carebridge, and SMTP replies as named constants.

Every user-facing error says what was wrong and what to do about it, and never carries PHI:
messages name keys, ids and commands, not people, addresses or message text.
"""

from __future__ import annotations


class CarebridgeError(Exception):
    """Base of every error carebridge raises on purpose."""

    exit_code = 1


class ConfigError(CarebridgeError):
    """A configuration value is missing, unknown or of the wrong type."""

    exit_code = 2

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config: {key} {problem}")


class UsageError(CarebridgeError):
    """A command-line argument is not what was expected."""

    exit_code = 2


class KeyFileError(CarebridgeError):
    """The key file is missing, unreadable or malformed: the service fails closed."""

    exit_code = 2


class DecryptionError(CarebridgeError):
    """A stored value cannot be decrypted (unknown key id or tampered ciphertext)."""


class NotMigratedError(CarebridgeError):
    """The database schema is older than this code."""

    exit_code = 2


class NotFoundError(CarebridgeError):
    """A named object (clinic, patient, row) does not exist."""

    exit_code = 2


class InvalidAddressError(CarebridgeError):
    """An email address was refused by strict validation (never rewritten)."""

    exit_code = 2


class TokenError(CarebridgeError):
    """A token is unknown, expired, already used or bound to another purpose."""


class SmtpReply:
    """SMTP replies used by the intake, as named constants."""

    OK = "250 2.0.0 OK"
    ACCEPTED = "250 2.1.5 OK"
    NO_SUCH_USER = "550 5.1.1 No such recipient here"
    RELAY_DENIED = "550 5.7.1 Relaying denied"
    TOO_BIG = "552 5.3.4 Message too big"
    TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
    TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"
    MALFORMED = "554 5.6.0 Malformed message refused"
    TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address"
