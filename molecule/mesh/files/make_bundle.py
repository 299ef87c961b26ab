#!/usr/bin/env python3
"""TLS material for the mesh scenario, made on the controller with ``cryptography`` (installed in
the molecule venv by prepare-host.sh): a test CA, and certificate bundles signed by it as NGINX
Unit takes them (leaf certificate, CA certificate, the leaf's private key in one PEM text).

    make_bundle.py DIR NAME SERVER_NAME

Creates DIR/ca.pem (+ ca.key) once and DIR/NAME.pem if it does not exist yet, both keys 0600, and
prints what a TLS client will see of NAME.pem as JSON: {"bundle", "fingerprint" (sha256 of the
leaf's DER, as the agent reports it), "subject", "not_after"}. Running it again describes the
existing bundle, so the scenario's steps can ask for the fingerprint they expect.
"""

import datetime
import hashlib
import json
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID = datetime.timedelta(days=30)


def _write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject, issuer, public_key, signing_key, ca, server_name=None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + VALID)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server_name:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _ca(directory):
    cert_path, key_path = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    if not os.path.exists(cert_path):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit-p2p molecule test CA")])
        cert = _certificate(name, name, key.public_key(), key, ca=True)
        _write_private(key_path, _key_pem(key))
        with open(cert_path, "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(cert_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    with open(key_path, "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), password=None)
    return cert, key


def main(directory, name, server_name):
    os.makedirs(directory, mode=0o700, exist_ok=True)
    bundle = os.path.join(directory, name + ".pem")
    if not os.path.exists(bundle):
        ca_cert, ca_key = _ca(directory)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
        leaf = _certificate(subject, ca_cert.subject, key.public_key(), ca_key, ca=False,
                            server_name=server_name)
        _write_private(bundle, leaf.public_bytes(serialization.Encoding.PEM)
                       + ca_cert.public_bytes(serialization.Encoding.PEM) + _key_pem(key))
    with open(bundle, "rb") as handle:
        leaf = x509.load_pem_x509_certificate(handle.read())  # the first certificate: the leaf
    print(json.dumps({
        "bundle": bundle,
        "fingerprint": "sha256:" + hashlib.sha256(
            leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        "subject": leaf.subject.rfc4514_string(),
        "not_after": leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: make_bundle.py DIR NAME SERVER_NAME")
    main(*sys.argv[1:])
