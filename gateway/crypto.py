"""Keys kept outside the database: AES-256-GCM for PHI at rest and HMAC blind indexes.

The key file is JSON, mode 0600, created by ``carebridge keys init``. It holds data keys by id
(one active, older ones kept to read what has not been re-encrypted yet) and a separate index
key for the keyed blind index of email addresses, so an address can be looked up without being
stored in clear. Each ciphertext names its key id, so rotation can proceed in batches.

Ciphertext layout: ``b"\\x01" | len(key_id) | key_id | nonce(12) | AES-GCM(ciphertext+tag)``.
The column's label (e.g. ``patient.given_name``) is the associated data, so a value copied into
another column fails to decrypt instead of being read as something else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptionError, KeyFileError

FORMAT_VERSION = 1
_NONCE = 12


@dataclass(frozen=True)
class DataKey:
    key_id: str
    secret: bytes
    created: str
    state: str  # "active", "decrypt-only" or "retired"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class KeyRing:
    """The loaded key file. Immutable; rotation writes a new file and a new KeyRing."""

    def __init__(self, keys: dict[str, DataKey], active: str, index_key: bytes) -> None:
        if active not in keys:
            raise KeyFileError(f"key file: active key {active!r} is not among its keys")
        self.keys = dict(keys)
        self.active = active
        self._index_key = index_key
        self._aead = {k: AESGCM(v.secret) for k, v in keys.items()}

    # -- encryption --------------------------------------------------------------------
    def encrypt(self, plaintext: bytes, label: str) -> bytes:
        kid = self.active.encode("ascii")
        nonce = os.urandom(_NONCE)
        ct = self._aead[self.active].encrypt(nonce, plaintext, label.encode("utf-8"))
        return b"\x01" + bytes([len(kid)]) + kid + nonce + ct

    def decrypt(self, blob: bytes, label: str) -> bytes:
        kid = key_id_of(blob)
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptionError(f"value encrypted under unknown key id {kid!r}")
        start = 2 + len(kid)
        nonce, ct = blob[start : start + _NONCE], blob[start + _NONCE :]
        try:
            return aead.decrypt(nonce, ct, label.encode("utf-8"))
        except InvalidTag:
            raise DecryptionError(f"value under key {kid!r} failed authentication") from None

    # -- blind index -------------------------------------------------------------------
    def blind_index(self, value: str, purpose: str = "email") -> str:
        """Keyed HMAC-SHA256 of an already normalised value, hex encoded."""
        msg = purpose.encode() + b"\x00" + value.encode("utf-8")
        return hmac.new(self._index_key, msg, hashlib.sha256).hexdigest()

    def subkey(self, purpose: str) -> bytes:
        """A key derived for one purpose (cookie signing, token hashing) from the index key."""
        return hmac.new(self._index_key, b"subkey\x00" + purpose.encode(), hashlib.sha256).digest()

    # -- file I/O ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "active": self.active,
            "index_key": _b64(self._index_key),
            "keys": {
                k: {"secret": _b64(v.secret), "created": v.created, "state": v.state}
                for k, v in self.keys.items()
            },
        }

    def with_new_active_key(self) -> KeyRing:
        """A key ring with a fresh active key; the old ones stay to decrypt until re-encrypted."""
        n = 1 + max(int(k[1:]) for k in self.keys if k[1:].isdigit())
        new_id = f"k{n}"
        keys = {
            k: DataKey(
                v.key_id, v.secret, v.created, "decrypt-only" if v.state == "active" else v.state
            )
            for k, v in self.keys.items()
        }
        keys[new_id] = DataKey(new_id, AESGCM.generate_key(256), _now(), "active")
        return KeyRing(keys, new_id, self._index_key)

    def retire(self, key_ids: set[str]) -> KeyRing:
        keys = {
            k: DataKey(v.key_id, v.secret, v.created, "retired" if k in key_ids else v.state)
            for k, v in self.keys.items()
        }
        return KeyRing(keys, self.active, self._index_key)

    @classmethod
    def generate(cls) -> KeyRing:
        key = DataKey("k1", AESGCM.generate_key(256), _now(), "active")
        return cls({"k1": key}, "k1", secrets.token_bytes(32))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def key_id_of(blob: bytes) -> str:
    if len(blob) < 2 + _NONCE + 16 or blob[0] != 1:
        raise DecryptionError("value is not in carebridge's encrypted format")
    n = blob[1]
    return blob[2 : 2 + n].decode("ascii", "replace")


def load_keyring(path: Path) -> KeyRing:
    """Load the key file or fail closed with a one-line reason and the command that fixes it."""
    try:
        raw = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {str(path)!r} not found; create it with 'carebridge keys init' "
            "or point [keys] file at it"
        ) from None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"key file {str(path)!r} is unreadable: {exc}") from None
    try:
        keys = {
            kid: DataKey(kid, _unb64(v["secret"]), v["created"], v["state"])
            for kid, v in raw["keys"].items()
        }
        if any(len(k.secret) != 32 for k in keys.values()):
            raise ValueError("every data key must be 32 bytes")
        ring = KeyRing(keys, raw["active"], _unb64(raw["index_key"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise KeyFileError(f"key file {str(path)!r} is malformed: {exc}") from None
    return ring


def write_keyring(path: Path, ring: KeyRing) -> None:
    """Write atomically with mode 0600: a crash never leaves a half-written key file.

    A directory created for it is 0700 (an existing one is left as the operator made it).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(ring.to_json(), fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def hash_secret(value: str) -> str:
    """SHA-256 of a high-entropy secret (tokens, API keys): safe to store, not reversible."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
