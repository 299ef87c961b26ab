"""lean_noise.py (Noise's crypto on PyNaCl + hashlib) against the published backend (cryptography).

The handshake between a lean process and the published library is in test_process.py; these
check each primitive gives the same bytes, and fails the same way.
"""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from noise.backends.default import noise_backend as published
from noise.exceptions import NoiseInvalidMessage

from unit_p2p import lean_noise

RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_x25519_matches_cryptography():
    for _ in range(20):
        a, b = secrets.token_bytes(32), secrets.token_bytes(32)
        ours_a = lean_noise.KeyPair25519.from_private_bytes(a)
        theirs_a = x25519.X25519PrivateKey.from_private_bytes(a)
        theirs_b = x25519.X25519PrivateKey.from_private_bytes(b)
        assert ours_a.public_bytes == theirs_a.public_key().public_bytes(*RAW)
        peer = lean_noise.KeyPair25519.from_public_bytes(theirs_b.public_key().public_bytes(*RAW))
        assert (lean_noise.X25519DH().dh(ours_a.private, peer.public)
                == theirs_a.exchange(theirs_b.public_key()))


def test_a_low_order_peer_key_is_refused_like_cryptography():
    low_order = bytes(32)
    with pytest.raises(ValueError):
        x25519.X25519PrivateKey.generate().exchange(
            x25519.X25519PublicKey.from_public_bytes(low_order))
    ours = lean_noise.KeyPair25519.from_private_bytes(secrets.token_bytes(32))
    with pytest.raises(ValueError):
        lean_noise.X25519DH().dh(ours.private, lean_noise.RawX25519Public(low_order))


def test_chachapoly_matches_cryptography_and_rejects_tampering():
    key = secrets.token_bytes(32)
    ours = lean_noise.ChaCha20Cipher()
    ours.initialize(key)
    theirs = published.ciphers["ChaChaPoly"]()
    theirs.initialize(key)
    for n, ad in ((0, b""), (1, None), (2**40 + 7, b"handshake hash")):
        sealed = ours.encrypt(key, n, ad, b"payload" * 100)
        assert sealed == theirs.encrypt(key, n, ad, b"payload" * 100)
        assert ours.decrypt(key, n, ad, sealed) == b"payload" * 100
        with pytest.raises(NoiseInvalidMessage):
            ours.decrypt(key, n, ad, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    assert ChaCha20Poly1305(key).encrypt(bytes(4) + (5).to_bytes(8, "little"), b"x", None) \
        == ours.encrypt(key, 5, None, b"x")


def test_sha256_hmac_and_hkdf_match_the_published_backend():
    ours, theirs = lean_noise.noise_backend, published
    ours_hash, theirs_hash = ours.hashes["SHA256"](), theirs.hashes["SHA256"]()
    assert ours_hash.hash(b"abc") == theirs_hash.hash(b"abc")
    ck, ikm = secrets.token_bytes(32), secrets.token_bytes(32)
    assert (ours.hkdf(ck, ikm, 3, lambda k, d: ours.hmac(k, d, ours_hash.fn))
            == theirs.hkdf(ck, ikm, 3, lambda k, d: theirs.hmac(k, d, theirs_hash.fn)))
