"""Test certificate bundles (PEM chain + key), made on the fly with cryptography."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def bundle(cn: str = "www.example.com", *, days: float = 90, start_days: float = -1,
           key: ec.EllipticCurvePrivateKey | None = None,
           wrong_key: bool = False) -> tuple[bytes, bytes]:
    """(bundle, the private key's PEM): a leaf signed by a throwaway CA, the CA, the leaf's
    key. ``days`` after now it expires (negative: already expired); ``wrong_key`` puts another
    key in the bundle."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = _key(), key or _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit-p2p test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=2))
          .not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=min(start_days, days - 1)))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    in_bundle = _key() if wrong_key else leaf_key
    pem = (leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(
        serialization.Encoding.PEM) + key_pem(in_bundle))
    return pem, key_pem(in_bundle)
