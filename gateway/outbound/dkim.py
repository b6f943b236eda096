"""DKIM keys for clinics' sending domains: Ed25519 and RSA-2048, private halves encrypted.

Key generation, the DNS records to publish, and signing: dkimpy canonicalises and writes the
DKIM-Signature headers, OpenSSL (through ``cryptography``) does the RSA operation.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim import RE_BTAG, HashThrough, fold, hash_headers
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.errors import UsageError
from gateway.models import Clinic, DkimKey

ALGORITHMS = ("ed25519", "rsa")


@dataclass(frozen=True)
class GeneratedKey:
    algorithm: str
    private_pem: str  # PKCS#8 PEM (RSA) or the raw 32-byte seed, base64 (Ed25519, dkimpy form)
    public_b64: str  # the DNS p= value


def generate_key(algorithm: str) -> GeneratedKey:
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return GeneratedKey("rsa", private, base64.b64encode(public).decode("ascii"))
    if algorithm == "ed25519":
        ed = ed25519.Ed25519PrivateKey.generate()
        seed = ed.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        pub = ed.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return GeneratedKey(
            "ed25519", base64.b64encode(seed).decode("ascii"), base64.b64encode(pub).decode("ascii")
        )
    raise ValueError(f"unknown DKIM algorithm {algorithm!r}; use one of {ALGORITHMS}")


def dns_txt(key: GeneratedKey | tuple[str, str]) -> str:
    """The TXT record value to publish at ``SELECTOR._domainkey.DOMAIN``."""
    algorithm, public = (key.algorithm, key.public_b64) if isinstance(key, GeneratedKey) else key
    k = "ed25519" if algorithm == "ed25519" else "rsa"
    return f"v=DKIM1; k={k}; p={public}"


# -- signing -----------------------------------------------------------------------------
# dkimpy does canonicalisation, header selection and the DKIM-Signature syntax; only the RSA
# private-key operation is replaced: dkimpy's is pure Python (~166/s per core here), OpenSSL's
# through ``cryptography`` is ~25 times faster. Ed25519 already goes through libsodium.

# Headers every signature covers. From is signed twice (oversigned) so a second From cannot
# be added in transit without breaking the signature.
SIGNED_HEADERS = (
    "from",
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "auto-submitted",
    "list-unsubscribe",
    "list-unsubscribe-post",
)


class _FastRsaDKIM(dkim.DKIM):  # type: ignore[misc]
    """dkimpy's signer with the RSA operation done by OpenSSL (via ``cryptography``).

    Only :meth:`gen_header` is replaced: it is dkimpy 1.1's own code, except that the
    PKCS#1 v1.5 signature of the header hash comes from the key held in ``fast_key``.
    """

    fast_key: rsa.RSAPrivateKey | None = None

    def gen_header(
        self,
        fields: list[tuple[bytes, bytes]],
        include_headers: tuple[bytes, ...],
        canon_policy: Any,
        header_name: bytes,
        pk: Any,
        standardize: bool = False,
    ) -> bytes:
        if self.fast_key is None or self.signature_algorithm != b"rsa-sha256" or standardize:
            return bytes(super().gen_header(fields, include_headers, canon_policy, header_name, pk))
        header_value = b"; ".join(b"=".join(x) for x in fields)
        header_value = fold(header_value, namelen=len(header_name), linesep=b"\r\n")
        header_value = RE_BTAG.sub(b"\\1", header_value)
        header = (header_name, b" " + header_value)
        h = HashThrough(self.hasher(), self.debug_content)
        sig = dict(fields)
        headers = canon_policy.canonicalize_headers(self.headers)
        self.signed_headers = hash_headers(h, canon_policy, headers, include_headers, header, sig)
        signature = self.fast_key.sign(
            h.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
        )
        idx = next(i for i in range(len(fields)) if fields[i][0] == b"b")
        fields[idx] = (b"b", base64.b64encode(signature))
        header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return bytes(fold(header_value, namelen=len(header_name), linesep=self.linesep))


@dataclass(frozen=True)
class SigningKey:
    """One loaded DKIM key, ready to sign: parsed once, reused for every message."""

    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    private: str  # as stored: PKCS#8 PEM (RSA) or base64 seed (Ed25519)
    rsa_key: rsa.RSAPrivateKey | None = None

    @classmethod
    def load(cls, domain: str, selector: str, algorithm: str, private: str) -> SigningKey:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown DKIM algorithm {algorithm!r}; use one of {ALGORITHMS}")
        rsa_key = None
        if algorithm == "rsa":
            loaded = serialization.load_pem_private_key(private.encode("ascii"), password=None)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError("DKIM key marked rsa does not hold an RSA private key")
            rsa_key = loaded
        return cls(domain.lower(), selector, algorithm, private, rsa_key)


def sign(message: bytes, keys: list[SigningKey]) -> bytes:
    """Return ``message`` with one DKIM-Signature per key prepended (Ed25519 first).

    Each signature covers the same headers and body and none covers another signature, so
    receivers may verify either independently (RFC 8463 dual signing).
    """
    out = b""
    include = [h.encode("ascii") for h in SIGNED_HEADERS]
    # The last key's header ends up on top; put RSA last so the widely verified one is first.
    for key in sorted(keys, key=lambda k: k.algorithm != "ed25519"):
        signer = _FastRsaDKIM(message, linesep=b"\r\n")
        if key.algorithm == "rsa":
            # dkimpy still parses the PEM (~0.1 ms); its pure-Python RSA is never used.
            signer.fast_key = key.rsa_key
            algorithm = b"rsa-sha256"
        else:
            algorithm = b"ed25519-sha256"
        out = (
            signer.sign(
                key.selector.encode("ascii"),
                key.domain.encode("ascii"),
                key.private.encode("ascii"),
                signature_algorithm=algorithm,
                # relaxed headers (MTAs refold them), simple body: the body is already
                # clean quoted-printable with CRLF, and simple costs no regex pass.
                canonicalize=(b"relaxed", b"simple"),
                include_headers=include,
            )
            + out
        )
    return out + message


# -- keys of a clinic's sending domain ----------------------------------------------------
def selector_for(algorithm: str, when: datetime) -> str:
    """Selectors name their creation day and algorithm: ``cb20261126e`` / ``cb20261126r``."""
    return f"cb{when:%Y%m%d}{'e' if algorithm == 'ed25519' else 'r'}"


async def ensure_domain_keys(
    session: AsyncSession, clinic: Clinic, *, now: datetime, state: str = "active"
) -> list[DkimKey]:
    """Create whichever of the Ed25519 and RSA-2048 keys the sending domain lacks.

    Returns the domain's keys in ``state`` (new and existing). Existing pending keys count
    as present, so a rotation in progress is not doubled.
    """
    domain = (clinic.sending_domain or clinic.reply_domain).lower()
    if not domain:
        raise UsageError(f"clinic {clinic.slug!r} has no sending domain; set one first")
    rows = list(
        await session.scalars(
            select(DkimKey).where(
                DkimKey.clinic_id == clinic.id,
                DkimKey.domain == domain,
                DkimKey.state.in_(("pending", "active")),
            )
        )
    )
    have = {r.algorithm for r in rows}
    for algorithm in ALGORITHMS:
        if algorithm in have:
            continue
        key = generate_key(algorithm)
        row = DkimKey(
            clinic_id=clinic.id,
            domain=domain,
            selector=selector_for(algorithm, now),
            algorithm=algorithm,
            private_key=key.private_pem,
            public_key=key.public_b64,
            state=state,
            created_at=now,
            activated_at=now if state == "active" else None,
        )
        session.add(row)
        rows.append(row)
    await session.flush()
    return [r for r in rows if r.state == state]


async def active_keys(session: AsyncSession, clinic_id: str, domain: str) -> list[DkimKey]:
    """The keys a message from ``domain`` is signed with (normally one of each algorithm)."""
    rows = await session.scalars(
        select(DkimKey)
        .where(
            DkimKey.clinic_id == clinic_id,
            DkimKey.domain == domain.lower(),
            DkimKey.state == "active",
        )
        .order_by(DkimKey.activated_at.desc(), DkimKey.created_at.desc())
    )
    newest: dict[str, DkimKey] = {}
    for row in rows:
        newest.setdefault(row.algorithm, row)
    return list(newest.values())


class KeyCache:
    """Parsed signing keys by row id: loading an RSA key costs more than using it."""

    def __init__(self) -> None:
        self._keys: dict[str, SigningKey] = {}

    def get(self, row: DkimKey) -> SigningKey:
        key = self._keys.get(row.id)
        if key is None:
            key = SigningKey.load(row.domain, row.selector, row.algorithm, row.private_key)
            self._keys[row.id] = key
        return key
