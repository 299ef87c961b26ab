"""The certificate store behind ``/certificates``.

A bundle is a PEM text with one or more certificates (leaf first) and the private key of the
first one, as Unit expects. Unit keeps the bundle and shows only a description of it: the key
type and size, and for every certificate its subject, issuer and validity. Private keys are never
returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

__all__ = ["Bundle", "InvalidCertificate", "load_bundle"]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

# The name fields Unit reports, in its order.
_NAME_FIELDS = [
    ("common_name", NameOID.COMMON_NAME),
    ("country", NameOID.COUNTRY_NAME),
    ("state_or_province", NameOID.STATE_OR_PROVINCE_NAME),
    ("locality", NameOID.LOCALITY_NAME),
    ("organization", NameOID.ORGANIZATION_NAME),
    ("department", NameOID.ORGANIZATIONAL_UNIT_NAME),
]


class InvalidCertificate(ValueError):
    """The body is not a usable certificate chain with its private key."""


@dataclass(frozen=True)
class Bundle:
    pem: bytes
    info: dict
    #: the key type/size text, used to refuse obviously mismatched keys early
    key_text: str


def _asn1_time(when) -> str:
    # OpenSSL's ASN1_TIME_print: "Mon DD HH:MM:SS YYYY GMT" with a space-padded day.
    return (
        f"{_MONTHS[when.month - 1]} {when.day:2d} {when.hour:02d}:{when.minute:02d}:"
        f"{when.second:02d} {when.year} GMT"
    )


def _name(name: x509.Name, alt_names: list[str] | None) -> dict:
    out: dict = {}
    for key, oid in _NAME_FIELDS:
        attrs = name.get_attributes_for_oid(oid)
        if len(attrs) == 1:
            out[key] = attrs[0].value
        elif attrs:
            out[key] = [a.value for a in attrs]
    if alt_names:
        out["alt_names"] = alt_names
    return out


def _alt_names(cert: x509.Certificate, oid) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.value.get_values_for_type(x509.DNSName)]


def _key_text(key) -> str:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA ({key.key_size} bits)"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC ({key.curve.name})"
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return f"DH ({key.key_size} bits)"
    return "unknown"


def _public_bytes(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_bundle(pem: bytes) -> Bundle:
    """Parse a PEM bundle; raise :class:`InvalidCertificate` unless it holds a chain + its key."""
    certs: list[x509.Certificate] = []
    key = None
    for match in _PEM_BLOCK.finditer(pem):
        label = match.group(1)
        block = match.group(0)
        try:
            if label == b"CERTIFICATE":
                certs.append(x509.load_pem_x509_certificate(block))
            elif label.endswith(b"PRIVATE KEY"):
                if key is not None:
                    raise InvalidCertificate("more than one private key")
                key = serialization.load_pem_private_key(block, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidCertificate(str(exc)) from exc
    if not certs or key is None:
        raise InvalidCertificate("a certificate chain and its private key are required")
    if _public_bytes(key.public_key()) != _public_bytes(certs[0].public_key()):
        raise InvalidCertificate("the private key does not match the first certificate")
    chain = []
    for cert in certs:
        chain.append(
            {
                "subject": _name(
                    cert.subject, _alt_names(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
                ),
                "issuer": _name(
                    cert.issuer, _alt_names(cert, ExtensionOID.ISSUER_ALTERNATIVE_NAME)
                ),
                "validity": {
                    "since": _asn1_time(cert.not_valid_before_utc),
                    "until": _asn1_time(cert.not_valid_after_utc),
                },
            }
        )
    key_text = _key_text(key)
    return Bundle(pem=pem, info={"key": key_text, "chain": chain}, key_text=key_text)
