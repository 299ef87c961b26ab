"""Noise's crypto on PyNaCl (libsodium) and hashlib, so the lean agent never loads ``cryptography``.

The agent already loads PyNaCl for its Ed25519 identity. py-libp2p's Noise transport reaches
``cryptography`` (its Rust extension and the OpenSSL inside it: ~9 MiB RSS per agent) only
through the ``noiseprotocol`` package's default backend and ``libp2p.crypto.x25519``, for three
primitives libsodium has too: X25519, ChaCha20-Poly1305 (IETF) and SHA-256 (hashlib). The lean
import hook (``lean_libp2p.py``) serves this module under those two names in the agent process.
The wire format is the same byte for byte (``Noise_XX_25519_ChaChaPoly_SHA256``), so a lean
agent and a peer running the published library handshake with each other.

Only what the agent's Noise transport uses is here: Curve25519 (not 448) and ChaChaPoly (not
AES-GCM, which libp2p's Noise does not offer). A failed decryption raises Noise's own
``NoiseInvalidMessage``, as the published backend's ``InvalidTag`` is translated to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

from libp2p.crypto.keys import KeyPair as Libp2pKeyPair
from libp2p.crypto.keys import KeyType, PrivateKey, PublicKey
from nacl import bindings
from nacl.exceptions import CryptoError
from noise.backends.noise_backend import NoiseBackend
from noise.exceptions import NoiseInvalidMessage, NoiseValueError
from noise.functions.cipher import Cipher
from noise.functions.dh import DH
from noise.functions.hash import Hash
from noise.functions.keypair import KeyPair

__all__ = [
    "KeyPair",
    "KeyPair25519",
    "NaclNoiseBackend",
    "X25519PrivateKey",
    "X25519PublicKey",
    "create_new_key_pair",
    "noise_backend",
]

KEY_BYTES = 32


# --- X25519 keys, with the part of cryptography's key API that Noise and libp2p call ---------

class RawX25519Public:
    """An X25519 public key; ``public_bytes`` is always the raw 32 bytes (the only form used)."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ValueError("An X25519 public key is 32 bytes long")
        self._raw = bytes(raw)

    @classmethod
    def from_public_bytes(cls, raw: bytes) -> RawX25519Public:
        return cls(raw)

    def public_bytes(self, *_encoding_and_format: Any) -> bytes:
        return self._raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawX25519Public) and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._raw)


class RawX25519Private:
    """An X25519 private key (libsodium clamps the scalar on use, as OpenSSL does)."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_BYTES:
            raise ValueError("An X25519 private key is 32 bytes long")
        self._raw = bytes(raw)

    @classmethod
    def generate(cls) -> RawX25519Private:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> RawX25519Private:
        return cls(raw)

    def private_bytes(self, *_encoding_format_encryption: Any) -> bytes:
        return self._raw

    def public_key(self) -> RawX25519Public:
        return RawX25519Public(bindings.crypto_scalarmult_base(self._raw))

    def exchange(self, peer: RawX25519Public) -> bytes:
        try:
            return bindings.crypto_scalarmult(self._raw, peer.public_bytes())
        except (RuntimeError, CryptoError):
            # libsodium refuses a low-order peer key (an all-zero shared secret); OpenSSL's
            # binding raises ValueError for the same key.
            raise ValueError("Error computing shared key.") from None


# --- libp2p.crypto.x25519 ----------------------------------------------------------------------

class X25519PublicKey(PublicKey):
    def __init__(self, impl: RawX25519Public) -> None:
        self.impl = impl

    def to_bytes(self) -> bytes:
        return self.impl.public_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> X25519PublicKey:
        return cls(RawX25519Public.from_public_bytes(data))

    def get_type(self) -> KeyType:
        return KeyType.X25519

    def verify(self, data: bytes, signature: bytes) -> bool:
        raise NotImplementedError("X25519 does not support signatures.")


class X25519PrivateKey(PrivateKey):
    def __init__(self, impl: RawX25519Private) -> None:
        self.impl = impl

    @classmethod
    def new(cls) -> X25519PrivateKey:
        return cls(RawX25519Private.generate())

    def to_bytes(self) -> bytes:
        return self.impl.private_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> X25519PrivateKey:
        return cls(RawX25519Private.from_private_bytes(data))

    def get_type(self) -> KeyType:
        return KeyType.X25519

    def sign(self, data: bytes) -> bytes:
        raise NotImplementedError("X25519 does not support signatures.")

    def get_public_key(self) -> X25519PublicKey:
        return X25519PublicKey(self.impl.public_key())


def create_new_key_pair() -> Libp2pKeyPair:
    private = X25519PrivateKey.new()
    return Libp2pKeyPair(private, private.get_public_key())


# --- noiseprotocol backend ---------------------------------------------------------------------

class KeyPair25519(KeyPair):
    @classmethod
    def from_private_bytes(cls, private_bytes: bytes) -> KeyPair25519:
        if len(private_bytes) != KEY_BYTES:
            raise NoiseValueError("Invalid length of private_bytes! Should be 32")
        private = RawX25519Private(private_bytes)
        public = private.public_key()
        return cls(private=private, public=public, public_bytes=public.public_bytes())

    @classmethod
    def from_public_bytes(cls, public_bytes: bytes) -> KeyPair25519:
        if len(public_bytes) != KEY_BYTES:
            raise NoiseValueError("Invalid length of public_bytes! Should be 32")
        public = RawX25519Public(public_bytes)
        return cls(public=public, public_bytes=public.public_bytes())


class X25519DH(DH):
    @property
    def klass(self) -> type:
        return KeyPair25519

    @property
    def dhlen(self) -> int:
        return KEY_BYTES

    def generate_keypair(self) -> KeyPair25519:
        return KeyPair25519.from_private_bytes(secrets.token_bytes(KEY_BYTES))

    def dh(self, private_key: RawX25519Private, public_key: RawX25519Public) -> bytes:
        if not isinstance(private_key, RawX25519Private) or not isinstance(
            public_key, RawX25519Public
        ):
            raise NoiseValueError("Invalid keys! Must be X25519 private and public keys")
        return private_key.exchange(public_key)


class _ChaCha20Poly1305:
    def __init__(self, key: bytes) -> None:
        self._key = bytes(key)

    def encrypt(self, nonce: bytes, data: bytes, ad: bytes | None) -> bytes:
        return bindings.crypto_aead_chacha20poly1305_ietf_encrypt(data, ad or b"", nonce,
                                                                  self._key)

    def decrypt(self, nonce: bytes, data: bytes, ad: bytes | None) -> bytes:
        try:
            return bindings.crypto_aead_chacha20poly1305_ietf_decrypt(data, ad or b"", nonce,
                                                                      self._key)
        except CryptoError:
            raise NoiseInvalidMessage("Failed authentication of message") from None


class ChaCha20Cipher(Cipher):
    @property
    def klass(self) -> type:
        return _ChaCha20Poly1305

    @staticmethod
    def format_nonce(n: int) -> bytes:
        # Noise's ChaChaPoly nonce: 32 zero bits, then the counter as 64-bit little-endian.
        return b"\x00\x00\x00\x00" + n.to_bytes(length=8, byteorder="little")

    def encrypt(self, k: bytes, n: int, ad: bytes | None, plaintext: bytes) -> bytes:
        return self.cipher.encrypt(self.format_nonce(n), plaintext, ad)

    def decrypt(self, k: bytes, n: int, ad: bytes | None, ciphertext: bytes) -> bytes:
        return self.cipher.decrypt(self.format_nonce(n), ciphertext, ad)


def _hash_class(name: str, constructor: Callable[..., Any], hashlen: int, blocklen: int) -> type:
    def hash_(self: Hash, data: bytes) -> bytes:
        return constructor(data).digest()

    return type(name, (Hash,), {
        "fn": property(lambda self: constructor),
        "hashlen": property(lambda self: hashlen),
        "blocklen": property(lambda self: blocklen),
        "hash": hash_,
    })


SHA256Hash = _hash_class("SHA256Hash", hashlib.sha256, 32, 64)
SHA512Hash = _hash_class("SHA512Hash", hashlib.sha512, 64, 128)
BLAKE2sHash = _hash_class("BLAKE2sHash", hashlib.blake2s, 32, 64)
BLAKE2bHash = _hash_class("BLAKE2bHash", hashlib.blake2b, 64, 128)


def hmac_hash(key: bytes, data: bytes, algorithm: Callable[..., Any]) -> bytes:
    return hmac.new(key, data, algorithm).digest()


class NaclNoiseBackend(NoiseBackend):
    def __init__(self) -> None:
        super().__init__()
        self.diffie_hellmans = {"25519": X25519DH}
        self.ciphers = {"ChaChaPoly": ChaCha20Cipher}
        self.hashes = {"SHA256": SHA256Hash, "SHA512": SHA512Hash, "BLAKE2s": BLAKE2sHash,
                       "BLAKE2b": BLAKE2bHash}
        self.keypairs = {"25519": KeyPair25519}
        self.hmac = hmac_hash


#: what ``noise.backends.default`` exports and ``noise.connection`` uses
noise_backend = NaclNoiseBackend()
DefaultNoiseBackend = NaclNoiseBackend
