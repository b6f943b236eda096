"""DKIM keys for clinics' sending domains: Ed25519 and RSA-2048, private halves encrypted.

Key generation lives here; signing (dkimpy canonicalisation with a fast RSA operation) is
added by the outbound work in this same module.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

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
