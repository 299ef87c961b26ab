"""The certificate store behind ``/certificates``.

A bundle is a PEM text with one or more certificates (leaf first) and one private key, as Unit
expects. Unit keeps the bundle and shows only a description of it: the key type and size, and for
every certificate its subject, issuer and validity. Private keys are never returned.

What Unit accepts (``nxt_cert_bio``): every PEM block must be a certificate (``CERTIFICATE``,
``X509 CERTIFICATE``, ``TRUSTED CERTIFICATE``) or an unencrypted private key (``PRIVATE KEY`` or
``<TYPE> PRIVATE KEY``); any other block (``ENCRYPTED PRIVATE KEY``, ``EC PARAMETERS``, a request)
or an unreadable one makes the whole upload "Invalid certificate.", as do a second key, no key or
no certificate. Unit does not check at upload that the key belongs to the first certificate: that
fails only when a listener is configured with the bundle (OpenSSL refuses the key), so
:attr:`Bundle.key_matches` records it for the configuration step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dh, ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from unit_p2p.certificates import key_matches

__all__ = ["Bundle", "InvalidCertificate", "load_bundle"]

_PEM_BLOCK = re.compile(rb"-----BEGIN ([^\r\n-]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_PEM_BEGIN = re.compile(rb"-----BEGIN ")
_CERT_LABELS = {b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"}
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

# The name fields Unit reports, in its order; "alt_names" comes right after "common_name".
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
    #: the PEM text exactly as uploaded
    pem: bytes
    #: what GET /certificates/<name> shows
    info: dict
    #: whether the private key belongs to the first certificate (OpenSSL refuses it otherwise)
    key_matches: bool
    #: the lower-cased names a TLS listener with several bundles picks this one by (SNI): the
    #: first certificate's DNS alt names, or its common name if it has no alt-name extension
    server_names: tuple[str, ...]


def _asn1_time(when) -> str:
    # OpenSSL's ASN1_TIME_print: "Mon DD HH:MM:SS YYYY GMT" with a space-padded day.
    return (
        f"{_MONTHS[when.month - 1]} {when.day:2d} {when.hour:02d}:{when.minute:02d}:"
        f"{when.second:02d} {when.year} GMT"
    )


def _name(name: x509.Name, alt_names: list[str] | None) -> dict:
    # nxt_cert_name_details: the first value of each field (X509_NAME_get_text_by_NID), and
    # the alt names (when the extension is there) after the common name.
    out: dict = {}
    for key, oid in _NAME_FIELDS:
        if key == "country" and alt_names is not None:
            out["alt_names"] = alt_names
        attrs = name.get_attributes_for_oid(oid)
        if attrs:
            out[key] = attrs[0].value
    return out


def _alt_names(cert: x509.Certificate, oid) -> list[str] | None:
    """The DNS names of an alt-name extension; None without the extension."""
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    return [str(v) for v in ext.value.get_values_for_type(x509.DNSName)]


def _key_text(key) -> str:
    # nxt_cert_details: by the key's base type.
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA ({key.key_size} bits)"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ECDH"
    if isinstance(key, dh.DHPrivateKey):
        return f"DH ({key.key_size} bits)"
    return "unknown"


def _server_names(cert: x509.Certificate) -> tuple[str, ...]:
    # nxt_openssl_cert_get_names: the DNS alt names if the extension exists, else the CN.
    alt = _alt_names(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if alt is not None:
        return tuple(n.lower() for n in alt)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (str(cn[0].value).lower(),) if cn and cn[0].value else ()


def _load_block(label: bytes, block: bytes):
    if label in _CERT_LABELS:
        if label != b"CERTIFICATE":
            block = block.replace(label, b"CERTIFICATE", 2)
        return x509.load_pem_x509_certificate(block)
    encrypted = label == b"ENCRYPTED PRIVATE KEY"
    if label == b"PRIVATE KEY" or (label.endswith(b" PRIVATE KEY") and not encrypted):
        return serialization.load_pem_private_key(block, password=None)
    raise InvalidCertificate(f"unsupported PEM block {label.decode('ascii', 'replace')!r}")


def load_bundle(pem: bytes) -> Bundle:
    """Parse a PEM bundle as Unit does; raise :class:`InvalidCertificate` if Unit refuses it."""
    certs: list[x509.Certificate] = []
    key = None
    blocks = list(_PEM_BLOCK.finditer(pem))
    if len(blocks) != len(_PEM_BEGIN.findall(pem)):
        raise InvalidCertificate("a PEM block without its END line")
    for match in blocks:
        try:
            item = _load_block(match.group(1), match.group(0))
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise InvalidCertificate(str(exc)) from exc
        if isinstance(item, x509.Certificate):
            certs.append(item)
        elif key is not None:
            raise InvalidCertificate("more than one private key")
        else:
            key = item
    if key is None:
        raise InvalidCertificate("no private key")
    if not certs:
        raise InvalidCertificate("no certificate")
    chain = [
        {
            "subject": _name(cert.subject, _alt_names(cert, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)),
            "issuer": _name(cert.issuer, _alt_names(cert, ExtensionOID.ISSUER_ALTERNATIVE_NAME)),
            "validity": {
                "since": _asn1_time(cert.not_valid_before_utc),
                "until": _asn1_time(cert.not_valid_after_utc),
            },
        }
        for cert in certs
    ]
    return Bundle(
        pem=pem,
        info={"key": _key_text(key), "chain": chain},
        key_matches=key_matches(key, certs[0]),
        server_names=_server_names(certs[0]),
    )
