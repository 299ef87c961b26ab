"""Shared helpers for the emulator tests: starting emulators and making certificate bundles."""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from unit_p2p.unit.emulator import UnitEmulator

# The validity of the certificate in the recording (fixtures: put_certificate).
RECORDED_SINCE = dt.datetime(2026, 11, 22, 2, 9, 45, tzinfo=dt.UTC)
RECORDED_UNTIL = dt.datetime(2026, 12, 22, 2, 9, 45, tzinfo=dt.UTC)


def make_bundle(
    common_name: str = "unitprobe.local",
    *,
    since: dt.datetime = RECORDED_SINCE,
    until: dt.datetime = RECORDED_UNTIL,
    with_key: bool = True,
) -> bytes:
    """A self-signed RSA-2048 certificate (+ its key) shaped like the recorded one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(since)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if with_key:
        pem += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return pem


def free_loopback_port() -> int:
    """A port nothing listens on right now (bound once by the kernel's choice, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


StartEmulator = Callable[..., Awaitable[UnitEmulator]]


@pytest.fixture
async def start_emulator(nursery: trio.Nursery, tmp_path) -> StartEmulator:
    """``await start_emulator(**kwargs)``: a serving emulator on a fresh unix socket."""
    counter = 0

    async def start(control: str | None = None, **kwargs) -> UnitEmulator:
        nonlocal counter
        counter += 1
        emulator = UnitEmulator(control or f"unix:{tmp_path}/control{counter}.sock", **kwargs)
        with trio.fail_after(10):
            await nursery.start(emulator.serve)
        return emulator

    return start


def make_key(kind: str = "rsa"):
    """A fresh private key: "rsa" (2048 bits) or "ec" (P-256)."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_cert(
    key,
    subject: x509.Name,
    *,
    alt_names: list[str] | None = None,
    since: dt.datetime = RECORDED_SINCE,
    until: dt.datetime = RECORDED_UNTIL,
) -> x509.Certificate:
    """A self-signed certificate for ``key`` (with a DNS alt-name extension if ``alt_names``)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(since)
        .not_valid_after(until)
    )
    if alt_names is not None:
        ext = x509.SubjectAlternativeName([x509.DNSName(n) for n in alt_names])
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(key, hashes.SHA256())


def pem_of(*items, key_format=serialization.PrivateFormat.PKCS8) -> bytes:
    """Certificates and private keys as one PEM text, in the order given."""
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(
                serialization.Encoding.PEM, key_format, serialization.NoEncryption()
            )
    return out


@dataclass
class Served:
    """What a client saw on a listener: the HTTP answer and, over TLS, the server's certificate."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    #: SHA-256 of the DER certificate the server presented (None over plain HTTP)
    fingerprint: str | None = None


async def fetch(
    port: int,
    path: str = "/",
    *,
    tls: bool = False,
    server_name: str | None = None,
    host: str = "127.0.0.1",
) -> Served:
    """One GET on a listener with a real client, over TLS if ``tls`` (no certificate checks:
    the caller compares the fingerprint)."""
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    fingerprint = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        stream = trio.SSLStream(stream, ctx, server_hostname=server_name, https_compatible=True)
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        fingerprint = hashlib.sha256(der).hexdigest()
    async with stream:
        request = f"GET {path} HTTP/1.1\r\nHost: {server_name or host}\r\nConnection: close\r\n\r\n"
        await stream.send_all(request.encode())
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    return Served(int(lines[0].split(" ")[1]), headers, body, fingerprint)  # type: ignore[arg-type]


def fingerprint_of(bundle: bytes) -> str:
    """SHA-256 of the first certificate of a PEM bundle (what a TLS client is shown)."""
    cert = x509.load_pem_x509_certificates(bundle)[0]
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
