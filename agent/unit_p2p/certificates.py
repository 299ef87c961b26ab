"""PEM certificate bundles as Unit's ``PUT /certificates/NAME`` takes them: one or more
certificates (leaf first) and the private key of the leaf.

``parse_bundle`` checks a bundle and describes it by its public parts only (subject, issuer,
validity, the leaf's fingerprint). Nothing here ever puts key material, or any part of the
bundle's text, in an exception message or a description: the text of a bundle is a secret.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

__all__ = ["BadBundle", "BundleInfo", "iso_utc", "parse_bundle"]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


class BadBundle(ValueError):
    """Not a usable bundle. The message says why in words, never quoting the bundle."""


@dataclass(frozen=True)
class BundleInfo:
    """The public description of a bundle (of its leaf certificate)."""

    subject: str  # RFC 4514, e.g. "CN=www.example.com,O=Example"
    issuer: str
    not_before: str  # ISO 8601 UTC, "2026-12-01T00:00:00Z"
    not_after: str
    fingerprint: str  # "sha256:<hex>" of the leaf's DER
    chain: int  # certificates in the bundle

    def public(self) -> dict:
        return {"subject": self.subject, "issuer": self.issuer, "not_before": self.not_before,
                "not_after": self.not_after, "fingerprint": self.fingerprint}


def iso_utc(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_utc(text: str) -> float:
    """Unix seconds of an ``iso_utc`` text."""
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC).timestamp()


def key_matches(private_key, cert: x509.Certificate) -> bool:
    """Is ``private_key`` the key of ``cert`` (same public key, compared as DER SPKI)?"""
    def spki(public_key) -> bytes:
        return public_key.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)

    return spki(private_key.public_key()) == spki(cert.public_key())


def parse_bundle(pem: bytes, *, now: datetime.datetime | None = None) -> BundleInfo:
    """Check ``pem`` (certificates, leaf first, and exactly one unencrypted private key that
    matches the leaf, not expired at ``now``) and describe it. Raises BadBundle."""
    certs: list[x509.Certificate] = []
    keys = 0
    key = None
    for match in _PEM_BLOCK.finditer(pem):
        label = match.group(1)
        if label == b"CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(match.group(0)))
            except ValueError:
                raise BadBundle(f"certificate {len(certs) + 1} of the chain is not a valid "
                                "X.509 certificate") from None
        elif label.endswith(b"PRIVATE KEY"):
            keys += 1
            try:
                key = serialization.load_pem_private_key(match.group(0), password=None)
            except TypeError:
                raise BadBundle("the private key is encrypted (Unit needs it unencrypted)") \
                    from None
            except (ValueError, UnsupportedAlgorithm):
                raise BadBundle("the private key cannot be read") from None
    if not certs:
        raise BadBundle("no certificate (a PEM chain, leaf first, and its private key)")
    if keys == 0:
        raise BadBundle("no private key (Unit needs the leaf's private key in the bundle)")
    if keys > 1:
        raise BadBundle(f"{keys} private keys (one is expected: the leaf's)")
    leaf = certs[0]
    if not key_matches(key, leaf):
        raise BadBundle("the private key does not match the first (leaf) certificate")
    now = now or datetime.datetime.now(datetime.UTC)
    not_after = leaf.not_valid_after_utc
    if not_after <= now:
        raise BadBundle(f"the leaf certificate expired at {iso_utc(not_after)}")
    return BundleInfo(
        subject=leaf.subject.rfc4514_string(), issuer=leaf.issuer.rfc4514_string(),
        not_before=iso_utc(leaf.not_valid_before_utc), not_after=iso_utc(not_after),
        fingerprint="sha256:" + hashlib.sha256(
            leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        chain=len(certs))
